package redis_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	goredis "github.com/redis/go-redis/v9"

	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/backend"
	redisb "github.com/labelpipe/labelpipe/pipeline/backend/redis"
)

// roundTrips counts the client's round trips: a command or a pipeline is
// one. A new pooled connection's set-up (HELLO, CLIENT) is not counted.
type roundTrips struct{ n atomic.Int64 }

func setup(name string) bool { return name == "hello" || name == "client" }

func (r *roundTrips) DialHook(next goredis.DialHook) goredis.DialHook { return next }
func (r *roundTrips) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		if !setup(cmd.Name()) {
			r.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (r *roundTrips) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		if !setup(cmds[0].Name()) {
			r.n.Add(1)
		}
		return next(ctx, cmds)
	}
}

func entry(id string) *backend.ExportEntry {
	return &backend.ExportEntry{ID: id, ReceivedAt: time.Now(), Event: "issue-exported", Payload: []byte(`{"x":1}`),
		Requests: map[string]backend.RequestState{backend.HistoryKey("s", 0): {Sink: "s", Chunk: 0, Chunks: 2, State: backend.StateQueued},
			backend.HistoryKey("s", 1): {Sink: "s", Chunk: 1, Chunks: 2, State: backend.StateQueued}}}
}

func msgs(ids ...string) []*message.Message {
	out := make([]*message.Message, len(ids))
	for i, id := range ids {
		out[i] = message.NewMessage(id, []byte("payload "+id))
		out[i].Metadata.Set("chunk", id)
	}
	return out
}

// The fan-out's history entry and its requests go to Redis in one round
// trip, the entry first; the requests arrive in order, metadata and all,
// for the broker's own subscribers; Publish of several messages is one
// round trip too.
func TestPublishWithEntryIsOneRoundTrip(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	rt := &roundTrips{}
	rdb.AddHook(rt)
	b := newBroker(t, rdb, "a", pipeline.BrokerConfig{})
	h := redisb.NewBatchedHistory(rdb, testPrefix, 100, time.Hour)
	t.Cleanup(func() { _ = h.Close() })
	// The subscriber is another replica, on a client of its own, so that
	// only the publish's round trips are counted.
	ch := subscribe(t, newBroker(t, srv.Client(t), "b", pipeline.BrokerConfig{}), "sink.s", "sink-s", 1)

	before := rt.n.Load()
	ok, histErr, err := b.PublishWithEntry(h, entry("e1"), "sink.s", msgs("c0", "c1")...)
	if !ok || histErr != nil || err != nil {
		t.Fatalf("PublishWithEntry: ok %v, history error %v, error %v", ok, histErr, err)
	}
	if n := rt.n.Load() - before; n != 1 {
		t.Errorf("PublishWithEntry took %d round trips, want 1", n)
	}
	got, found, err := h.Get(t.Context(), "e1")
	if err != nil || !found || len(got.Requests) != 2 || string(got.Payload) != `{"x":1}` {
		t.Fatalf("history entry: %+v found %v err %v", got, found, err)
	}
	before = rt.n.Load()
	if err := b.Publish("sink.s", msgs("c2", "c3", "c4")...); err != nil {
		t.Fatal(err)
	}
	if n := rt.n.Load() - before; n != 1 {
		t.Errorf("Publish of 3 messages took %d round trips, want 1", n)
	}
	for _, want := range []string{"c0", "c1", "c2", "c3", "c4"} {
		m, _ := receive(t, 5*time.Second, ch...)
		if m.UUID != want || string(m.Payload) != "payload "+want || m.Metadata.Get("chunk") != want {
			t.Fatalf("received %s %q (chunk %q), want %s in order", m.UUID, m.Payload, m.Metadata.Get("chunk"), want)
		}
		m.Ack()
	}
}

// A history that cannot be written costs the publish nothing; a publish
// that fails says so; a history on another client is left to the caller.
func TestPublishWithEntryFailures(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	if err := admin.Do(t.Context(), "ACL", "SETUSER", "lp", "on", ">pw", "~*", "&*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	rdb := goredis.NewClient(&goredis.Options{Network: "unix", Addr: srv.Addr(), Username: "lp", Password: "pw"})
	t.Cleanup(func() { _ = rdb.Close() })
	b := newBroker(t, rdb, "a", pipeline.BrokerConfig{})
	h := redisb.NewHistory(rdb, testPrefix, 100, time.Hour)
	acl := func(rule string) {
		t.Helper()
		if err := admin.Do(t.Context(), "ACL", "SETUSER", "lp", rule).Err(); err != nil {
			t.Fatal(err)
		}
	}

	acl("-hset")
	ok, histErr, err := b.PublishWithEntry(h, entry("e1"), "sink.s", msgs("c0")...)
	if !ok || histErr == nil || err != nil {
		t.Errorf("history refused: ok %v, history error %v, error %v; want the history's error only", ok, histErr, err)
	}
	if n, _ := admin.XLen(t.Context(), testPrefix+"sink.s").Result(); n != 1 {
		t.Errorf("stream holds %d entries after a failed history write, want 1", n)
	}
	acl("+hset")

	acl("-xadd")
	ok, _, err = b.PublishWithEntry(h, entry("e2"), "sink.s", msgs("c1")...)
	if !ok || err == nil {
		t.Errorf("XADD refused: ok %v, error %v; want an error", ok, err)
	}
	if err := b.Publish("sink.s", msgs("c2", "c3")...); err == nil {
		t.Error("Publish with XADD refused: no error")
	}
	acl("+xadd")

	other := redisb.NewHistory(srv.Client(t), testPrefix, 100, time.Hour)
	if ok, _, _ := b.PublishWithEntry(other, entry("e3"), "sink.s", msgs("c4")...); ok {
		t.Error("PublishWithEntry took a history on another client")
	}
	_ = b.Close()
	if err := b.Publish("sink.s", msgs("c5")...); err == nil {
		t.Error("Publish after Close: no error")
	}
}
