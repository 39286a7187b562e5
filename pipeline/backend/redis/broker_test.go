package redis_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	goredis "github.com/redis/go-redis/v9"

	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/pipeline"
	redisb "github.com/labelpipe/labelpipe/pipeline/backend/redis"
)

const testPrefix = "lp:"

func newBroker(t *testing.T, c goredis.UniversalClient, replica string, cfg pipeline.BrokerConfig) *redisb.Broker {
	t.Helper()
	if cfg.Prefix == "" {
		cfg.Prefix = testPrefix
	}
	b, err := redisb.NewBroker(c, cfg, replica, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// subscribe starts all workers of topic and returns their channels.
func subscribe(t *testing.T, b *redisb.Broker, topic, group string, n int) []<-chan *message.Message {
	t.Helper()
	subs, err := b.Workers(topic, group, n)
	if err != nil {
		t.Fatal(err)
	}
	chans := make([]<-chan *message.Message, n)
	for i, s := range subs {
		if chans[i], err = s.Subscribe(t.Context(), topic); err != nil {
			t.Fatal(err)
		}
	}
	return chans
}

func publish(t *testing.T, b *redisb.Broker, topic string, uuids ...string) {
	t.Helper()
	for _, u := range uuids {
		if err := b.Publish(topic, message.NewMessage(u, []byte("payload "+u))); err != nil {
			t.Fatalf("publish %s: %v", u, err)
		}
	}
}

// receive waits for one message on any of chans and says which one got it.
func receive(t *testing.T, within time.Duration, chans ...<-chan *message.Message) (*message.Message, int) {
	t.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	type got struct {
		m *message.Message
		i int
	}
	// A fan-in that gives up when the test's wait ends.
	stop := make(chan struct{})
	defer close(stop)
	res := make(chan got)
	for i, c := range chans {
		go func() {
			select {
			case m, ok := <-c:
				if !ok {
					return
				}
				select {
				case res <- got{m, i}:
				case <-stop:
					m.Nack() // redelivered to the next reader
				}
			case <-stop:
			}
		}()
	}
	select {
	case g := <-res:
		return g.m, g.i
	case <-timer.C:
		t.Fatalf("no message within %s", within)
		return nil, -1
	}
}

// nothing asserts that no message arrives on c within d.
func nothing(t *testing.T, c <-chan *message.Message, d time.Duration) {
	t.Helper()
	select {
	case m := <-c:
		t.Fatalf("unexpected message %s", m.UUID)
	case <-time.After(d):
	}
}

func uuids(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%03d", prefix, i)
	}
	return out
}

func TestRedisBrokerCompetingConsumersSplit(t *testing.T) {
	srv := redistest.Start(t)
	b := newBroker(t, srv.Client(t), "r1", pipeline.BrokerConfig{ClaimIdle: time.Minute})
	chans := subscribe(t, b, "exports", "fanout", 2)

	// A worker hands over one message at a time and waits for its ack,
	// and prefetches at most two more, so with ten queued two unacked
	// messages must come from different workers.
	first := uuids("first", 10)
	publish(t, b, "exports", first...)
	m1, w1 := receive(t, 5*time.Second, chans...)
	m2, w2 := receive(t, 5*time.Second, chans...)
	if w1 == w2 {
		t.Fatalf("two unacked messages from worker %d", w1)
	}
	if m1.UUID == m2.UUID {
		t.Fatalf("%s delivered twice", m1.UUID)
	}
	if want := "payload " + m1.UUID; string(m1.Payload) != want {
		t.Fatalf("payload %q, want %q", m1.Payload, want)
	}
	seen := map[string]int{m1.UUID: 1, m2.UUID: 1}
	m1.Ack()
	m2.Ack()
	for range len(first) - 2 {
		m, _ := receive(t, 5*time.Second, chans...)
		seen[m.UUID]++
		m.Ack()
	}

	want := uuids("m", 40)
	publish(t, b, "exports", want...)
	for range want {
		m, _ := receive(t, 5*time.Second, chans...)
		seen[m.UUID]++
		m.Ack()
	}
	for _, u := range append(want, first...) {
		if seen[u] != 1 {
			t.Fatalf("%s delivered %d times", u, seen[u])
		}
	}
	nothing(t, chans[0], 200*time.Millisecond)
}

func TestRedisBrokerClaimsFromGoneConsumer(t *testing.T) {
	const idle = 300 * time.Millisecond
	for _, tc := range []struct {
		name string
		// gone ends replica A while it holds a message.
		gone func(a *redisb.Broker, aClient *goredis.Client)
	}{
		// Close drops the heartbeat at once.
		{"closed", func(a *redisb.Broker, _ *goredis.Client) { _ = a.Close() }},
		// A crash stops the heartbeat; its key expires after claim_idle.
		{"crashed", func(_ *redisb.Broker, c *goredis.Client) { _ = c.Close() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.Start(t)
			cfg := pipeline.BrokerConfig{ClaimIdle: idle}
			aClient := srv.Client(t)
			a := newBroker(t, aClient, "a", cfg)
			aCh := subscribe(t, a, "sink.x", "sink-x", 1)
			publish(t, a, "sink.x", "held")
			held, _ := receive(t, 5*time.Second, aCh...)

			b := newBroker(t, srv.Client(t), "b", cfg)
			bCh := subscribe(t, b, "sink.x", "sink-x", 1)
			// A is alive: B must not take its message however long A holds it.
			nothing(t, bCh[0], 4*idle)

			tc.gone(a, aClient)
			start := time.Now()
			m, _ := receive(t, 10*time.Second, bCh...)
			if m.UUID != held.UUID {
				t.Fatalf("claimed %s, want %s", m.UUID, held.UUID)
			}
			m.Ack()
			t.Logf("claimed %s after %s", m.UUID, time.Since(start))

			// Acked means gone from the group's pending list. The
			// subscriber sends XACK after Ack returns, so wait for it.
			rdb := srv.Client(t)
			var pending int64
			for deadline := time.Now().Add(5 * time.Second); ; {
				p, err := rdb.XPending(t.Context(), testPrefix+"sink.x", "sink-x").Result()
				if err != nil {
					t.Fatal(err)
				}
				if pending = p.Count; pending == 0 || time.Now().After(deadline) {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if pending != 0 {
				t.Fatalf("%d still pending 5s after the ack", pending)
			}
		})
	}
}

func TestRedisBrokerRestartedReplicaReusingItsName(t *testing.T) {
	srv := redistest.Start(t)
	cfg := pipeline.BrokerConfig{ClaimIdle: time.Hour} // only the hand-over can bring it back quickly
	c1 := srv.Client(t)
	a := newBroker(t, c1, "same", cfg)
	ch := subscribe(t, a, "sink.x", "sink-x", 1)
	publish(t, a, "sink.x", "held")
	receive(t, 5*time.Second, ch...)
	_ = c1.Close() // crash: no Close, no ack

	again := newBroker(t, srv.Client(t), "same", pipeline.BrokerConfig{ClaimIdle: 300 * time.Millisecond})
	ch = subscribe(t, again, "sink.x", "sink-x", 1)
	m, _ := receive(t, 10*time.Second, ch...)
	if m.UUID != "held" {
		t.Fatalf("got %s", m.UUID)
	}
	m.Ack()
}

func TestRedisBrokerTrimKeepsUnacked(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := t.Context()
	b := newBroker(t, rdb, "r1", pipeline.BrokerConfig{ClaimIdle: time.Minute, MaxLen: 10})
	const stream = testPrefix + "exports"

	// No group yet: nothing may be trimmed, the first group starts at 0.
	publish(t, b, "exports", uuids("early", 150)...)
	if n := rdb.XLen(ctx, stream).Val(); n != 150 {
		t.Fatalf("stream without a group trimmed to %d", n)
	}

	// A slow group has read 200 entries and acked only the first 100.
	publish(t, b, "exports", uuids("more", 150)...)
	if err := rdb.XGroupCreate(ctx, stream, "slow", "0").Err(); err != nil {
		t.Fatal(err)
	}
	read, err := rdb.XReadGroup(ctx, &goredis.XReadGroupArgs{
		Group: "slow", Consumer: "c", Streams: []string{stream, ">"}, Count: 200,
	}).Result()
	if err != nil {
		t.Fatal(err)
	}
	entries := read[0].Messages
	for _, e := range entries[:100] {
		rdb.XAck(ctx, stream, "slow", e.ID)
	}
	unacked := []string{}
	for _, e := range entries[100:] {
		unacked = append(unacked, e.ID)
	}
	all, _ := rdb.XRange(ctx, stream, "-", "+").Result()
	for _, e := range all[200:] {
		unacked = append(unacked, e.ID) // never delivered to slow
	}

	// The broker's own group consumes and acks everything, many times over
	// max_len, so trimming runs often.
	ch := subscribe(t, b, "exports", "fanout", 1)
	for range 300 {
		m, _ := receive(t, 5*time.Second, ch...)
		m.Ack()
	}
	publish(t, b, "exports", uuids("late", 300)...)
	late := map[string]bool{}
	for len(late) < 300 {
		m, _ := receive(t, 5*time.Second, ch...)
		late[m.UUID] = true
		m.Ack()
	}
	publish(t, b, "exports", uuids("trigger", 20)...) // trims with everything of fanout acked

	n := rdb.XLen(ctx, stream).Val()
	if n >= 620 {
		t.Fatalf("nothing trimmed: %d entries", n)
	}
	for _, id := range unacked {
		if got := rdb.XRange(ctx, stream, id, id).Val(); len(got) != 1 {
			t.Fatalf("unacknowledged entry %s was trimmed (stream has %d)", id, n)
		}
	}
	first := rdb.XRangeN(ctx, stream, "-", "+", 1).Val()
	if len(first) != 1 || first[0].ID == all[0].ID {
		t.Fatalf("acked head of the stream was kept: %v", first)
	}
	t.Logf("stream trimmed to %d entries, all %d unacked kept", n, len(unacked))

	// Once slow catches up and acks, the stream shrinks towards max_len.
	for _, id := range unacked {
		rdb.XAck(ctx, stream, "slow", id)
	}
	if _, err := rdb.XReadGroup(ctx, &goredis.XReadGroupArgs{
		Group: "slow", Consumer: "c", Streams: []string{stream, ">"}, Count: 1000,
	}).Result(); err != nil {
		t.Fatal(err)
	}
	p := rdb.XPendingExt(ctx, &goredis.XPendingExtArgs{Stream: stream, Group: "slow", Start: "-", End: "+", Count: 1000}).Val()
	for _, e := range p {
		rdb.XAck(ctx, stream, "slow", e.ID)
	}
	publish(t, b, "exports", uuids("final", 20)...)
	for range 40 {
		m, _ := receive(t, 5*time.Second, ch...)
		m.Ack()
	}
	publish(t, b, "exports", "last")
	if n2 := rdb.XLen(ctx, stream).Val(); n2 > 10+200 {
		t.Fatalf("after everything was acked the stream still has %d entries", n2)
	}
}

func TestRedisBrokerSurvivesRestartWithAOF(t *testing.T) {
	srv := redistest.Start(t, redistest.WithAOF())
	rdb := srv.Client(t)
	b := newBroker(t, rdb, "r1", pipeline.BrokerConfig{ClaimIdle: 500 * time.Millisecond})
	ch := subscribe(t, b, "exports", "fanout", 1)
	// One message in flight at the restart, three queued behind it.
	publish(t, b, "exports", "a", "b", "c", "d")
	inflight, _ := receive(t, 5*time.Second, ch...)

	srv.Kill()
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	if err := b.Ready(ctx); err == nil {
		t.Fatal("ready while redis is down")
	}
	cancel()
	srv.Restart()
	waitReady(t, b)

	inflight.Ack()
	got := []string{inflight.UUID}
	for len(got) < 4 {
		m, _ := receive(t, 10*time.Second, ch...)
		got = append(got, m.UUID)
		m.Ack()
	}
	sort.Strings(got)
	if fmt.Sprint(got) != "[a b c d]" {
		t.Fatalf("after restart got %v", got)
	}
	// The same workers keep going on the restarted server.
	publish(t, b, "exports", "e")
	m, _ := receive(t, 10*time.Second, ch...)
	if m.UUID != "e" {
		t.Fatalf("got %s", m.UUID)
	}
	m.Ack()
}

// A reply Redis never got to send (killed after its AOF fsync, or a read
// retried on a new connection) leaves the entry pending under a live
// consumer that never saw it. The consumer must claim it back, and must
// not claim back the entries it does hold.
func TestRedisBrokerRedeliversEntryWhoseReplyWasLost(t *testing.T) {
	const idle = 300 * time.Millisecond
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	b := newBroker(t, rdb, "r1", pipeline.BrokerConfig{ClaimIdle: idle})
	ch := subscribe(t, b, "exports", "fanout", 1)
	publish(t, b, "exports", "held")
	held, _ := receive(t, 5*time.Second, ch...)

	// Deliver "lost" to the worker's consumer name in Redis only, as a
	// read whose reply was lost does. MULTI keeps the worker's blocked
	// read from getting it first.
	stream := testPrefix + "exports"
	values, err := redisstream.DefaultMarshallerUnmarshaller{}.Marshal(stream, message.NewMessage("lost", []byte("payload lost")))
	if err != nil {
		t.Fatal(err)
	}
	var read *goredis.XStreamSliceCmd
	if _, err := rdb.TxPipelined(t.Context(), func(p goredis.Pipeliner) error {
		p.XAdd(t.Context(), &goredis.XAddArgs{Stream: stream, Values: values})
		read = p.XReadGroup(t.Context(), &goredis.XReadGroupArgs{
			Group: "fanout", Consumer: "r1-fanout-0", Streams: []string{stream, ">"}, Count: 1, Block: -1})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	lostID := read.Val()[0].Messages[0].ID

	// The worker claims "lost" back (second delivery) while "held", older
	// and as idle, stays with its single delivery.
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(idle / 10)
	defer tick.Stop()
	for {
		pe, err := rdb.XPendingExt(t.Context(), &goredis.XPendingExtArgs{
			Stream: stream, Group: "fanout", Start: "-", End: "+", Count: 10}).Result()
		if err != nil {
			t.Fatal(err)
		}
		counts := map[string]int64{}
		for _, p := range pe {
			counts[p.ID] = p.RetryCount
		}
		if counts[lostID] >= 2 {
			if len(pe) != 2 || pe[0].RetryCount != 1 {
				t.Fatalf("held entry claimed back too: %+v", pe)
			}
			break
		}
		select {
		case <-deadline:
			t.Fatalf("lost entry never claimed back: %+v", pe)
		case <-tick.C:
		}
	}

	held.Ack()
	m, _ := receive(t, 5*time.Second, ch...)
	if m.UUID != "lost" {
		t.Fatalf("got %s, want lost", m.UUID)
	}
	m.Ack()
	nothing(t, ch[0], 3*idle) // no duplicate of either
}

func waitReady(t *testing.T, b *redisb.Broker) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		err := b.Ready(ctx)
		cancel()
		if err == nil {
			return
		}
		select {
		case <-deadline:
			t.Fatalf("not ready after restart: %v", err)
		case <-tick.C:
		}
	}
}

func TestRedisBrokerStartsWithoutRedis(t *testing.T) {
	srv := redistest.Start(t)
	srv.Stop()
	b := newBroker(t, srv.Client(t), "r1", pipeline.BrokerConfig{ClaimIdle: time.Minute})
	// Subscribing must not fail: the router starts and the daemon reports
	// not ready until Redis is there.
	ch := subscribe(t, b, "exports", "fanout", 2)
	if err := b.Publish("exports", message.NewMessage("x", nil)); err == nil {
		t.Fatal("publish succeeded without redis")
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	if err := b.Ready(ctx); err == nil {
		t.Fatal("ready without redis")
	}

	srv.Restart()
	waitReady(t, b)
	publish(t, b, "exports", "after")
	m, _ := receive(t, 10*time.Second, ch...)
	if m.UUID != "after" {
		t.Fatalf("got %s", m.UUID)
	}
	m.Ack()
}

func TestRedisBrokerCloseTwiceAndClientStaysOpen(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	b, err := redisb.NewBroker(rdb, pipeline.BrokerConfig{Prefix: testPrefix, ClaimIdle: time.Minute}, "r1", nil)
	if err != nil {
		t.Fatal(err)
	}
	chans := subscribe(t, b, "exports", "fanout", 3)
	var wg sync.WaitGroup
	for _, c := range chans {
		wg.Go(func() {
			for range c {
			}
		})
	}
	start := time.Now()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	wg.Wait() // every subscriber channel is closed
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("close took %s", d)
	}
	if err := rdb.Ping(t.Context()).Err(); err != nil {
		t.Fatalf("shared client closed by the broker: %v", err)
	}
	if _, err := b.Workers("other", "g", 1); err == nil {
		t.Fatal("workers after close")
	}
	if keys := rdb.Keys(t.Context(), testPrefix+"alive:*").Val(); len(keys) != 0 {
		t.Fatalf("heartbeats left after close: %v", keys)
	}
}

func TestRedisBrokerRejectsBadWorkers(t *testing.T) {
	srv := redistest.Start(t)
	b := newBroker(t, srv.Client(t), "r1", pipeline.BrokerConfig{})
	for _, tc := range []struct {
		name  string
		group string
		n     int
	}{
		{"zero workers", "g", 0},
		{"no group", "", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := b.Workers("exports", tc.group, tc.n); err == nil {
				t.Fatal("no error")
			}
		})
	}
	if !b.Info().Durable {
		t.Fatal("redis broker says it is not durable")
	}
}

// Workers closed before the broker (a sink a reload stopped) close the
// connections the broker opened for them; the broker's Close then has
// nothing left to close twice.
func TestRedisBrokerClosedWorkersReleaseTheirConnections(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	b := newBroker(t, rdb, "r1", pipeline.BrokerConfig{ClaimIdle: time.Minute})
	clients := func() int {
		list, err := rdb.ClientList(t.Context()).Result()
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(list, "\n")
	}
	base := clients()
	subs, err := b.Workers("sink.x", "sink-x", 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range subs {
		if _, err := s.Subscribe(t.Context(), "sink.x"); err != nil {
			t.Fatal(err)
		}
	}
	publish(t, b, "sink.x", uuids("m", 2)...)
	deadline := time.Now().Add(10 * time.Second)
	for clients() <= base {
		if time.Now().After(deadline) {
			t.Fatalf("the workers opened no connection of their own (%d clients)", base)
		}
		time.Sleep(10 * time.Millisecond) // polling Redis's view, bounded
	}
	for _, s := range subs {
		if err := s.Close(); err != nil {
			t.Fatalf("close a worker: %v", err)
		}
	}
	deadline = time.Now().Add(10 * time.Second)
	for n := clients(); n != base; n = clients() {
		if time.Now().After(deadline) {
			t.Fatalf("%d clients connected after the workers closed, want %d", n, base)
		}
		time.Sleep(10 * time.Millisecond) // Redis notices a closed socket on its own time
	}
	if err := b.Close(); err != nil {
		t.Fatalf("broker close after its workers: %v", err)
	}
}
