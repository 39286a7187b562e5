package redis_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/pipeline/backend"
	redisb "github.com/labelpipe/labelpipe/pipeline/backend/redis"
)

// What the history keeps in Redis is bounded, not only what it shows: the
// index, the hashes and the bodies of trimmed exports go, within two trim
// batches (max/64) of max_exports (the size is read once per batch);
// every key expires.
func TestRedisHistoryStorageIsBounded(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := t.Context()
	const maxExports = 128 // trim batch 2
	h := redisb.NewHistory(rdb, "hb:", maxExports, time.Hour)
	for i := range 3 * maxExports {
		e := &backend.ExportEntry{ID: fmt.Sprintf("e%04d", i), ReceivedAt: time.Now(), Event: "issue-exported", Payload: []byte(`{"x":1}`),
			Requests: map[string]backend.RequestState{backend.HistoryKey("s", 0): {Sink: "s", State: backend.StateQueued}}}
		if err := h.Add(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	n, err := rdb.ZCard(ctx, "hb:history").Result()
	if err != nil || n > maxExports+2*2-1 || n < maxExports {
		t.Errorf("index holds %d ids (%v), want %d to %d", n, err, maxExports, maxExports+2*2-1)
	}
	hashes, _ := rdb.Keys(ctx, "hb:history:e*").Result()
	var bodies, plain int
	for _, k := range hashes {
		if len(k) > 5 && k[len(k)-5:] == ":body" {
			bodies++
		} else {
			plain++
		}
		if ttl, err := rdb.PTTL(ctx, k).Result(); err != nil || ttl <= 0 || ttl > time.Hour {
			t.Errorf("%s expires in %v (%v), want within the hour", k, ttl, err)
		}
	}
	if int64(plain) != n || int64(bodies) != n {
		t.Errorf("%d hashes and %d bodies for %d indexed exports, want as many of each", plain, bodies, n)
	}
	if ex, _ := rdb.Exists(ctx, "hb:history:e0000", "hb:history:e0000:body").Result(); ex != 0 {
		t.Errorf("the oldest export's hash or body is still kept")
	}
}

func histEntry(id string, state string) *backend.ExportEntry {
	return &backend.ExportEntry{ID: id, ReceivedAt: time.Now(), Event: "issue-exported", Payload: []byte(`{"x":1}`),
		Requests: map[string]backend.RequestState{backend.HistoryKey("s", 0): {Sink: "s", State: state}}}
}

// The batched history (the backend's): concurrent Adds are all written
// by the time each returns (another client sees them); a SetState right
// after its Add is neither overwritten by that Add nor lost; Get reads
// what was added; Close stops the writer and later Adds still write; a
// failed batch is reported to its Add.
func TestRedisBatchedHistory(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := t.Context()

	t.Run("ConcurrentAddsWrittenOnReturn", func(t *testing.T) {
		h := redisb.NewBatchedHistory(rdb, "conc:", 10000, time.Hour)
		const senders, each = 300, 4 // more than the queue holds at once: some may go synchronously
		var wg sync.WaitGroup
		errs := make(chan error, senders*each)
		for s := range senders {
			wg.Go(func() {
				for i := range each {
					id := fmt.Sprintf("c%03d-%d", s, i)
					if err := h.Add(ctx, histEntry(id, backend.StateQueued)); err != nil {
						errs <- err
						return
					}
					// Straight from Redis, through another path than h.
					if ex, err := rdb.Exists(ctx, "conc:history:"+id, "conc:history:"+id+":body").Result(); err != nil || ex != 2 {
						errs <- fmt.Errorf("%s: %d of its 2 keys exist right after Add returned (%v)", id, ex, err)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if err := h.Close(); err != nil {
			t.Fatal(err)
		}
		if c, err := rdb.ZCard(ctx, "conc:history").Result(); err != nil || c != senders*each {
			t.Errorf("the index holds %d (%v), want %d", c, err, senders*each)
		}
		// After Close, Add still writes (synchronously).
		if err := h.Add(ctx, histEntry("late", backend.StateQueued)); err != nil {
			t.Fatal(err)
		}
		if ex, _ := rdb.Exists(ctx, "conc:history:late").Result(); ex != 1 {
			t.Errorf("an Add after Close was not written")
		}
	})

	t.Run("SetStateAfterAdd", func(t *testing.T) {
		h := redisb.NewBatchedHistory(rdb, "order:", 10000, time.Hour)
		defer h.Close()
		for i := range 500 {
			id := fmt.Sprintf("o%04d", i)
			if err := h.Add(ctx, histEntry(id, backend.StateQueued)); err != nil {
				t.Fatal(err)
			}
			if err := h.SetState(ctx, id, backend.RequestState{Sink: "s", State: backend.StateDeadLettered, Status: 500}); err != nil {
				t.Fatal(err)
			}
		}
		// Straight from Redis after the writer is done: every state is the late one.
		if err := h.Close(); err != nil {
			t.Fatal(err)
		}
		for i := range 500 {
			k := fmt.Sprintf("order:history:o%04d", i)
			v, err := rdb.HGet(ctx, k, "r:"+backend.HistoryKey("s", 0)).Result()
			if err != nil || !strings.Contains(v, backend.StateDeadLettered) {
				t.Fatalf("%s: state %q (%v), want dead_lettered", k, v, err)
			}
		}
	})

	t.Run("GetReadsAdds", func(t *testing.T) {
		h := redisb.NewBatchedHistory(rdb, "read:", 10000, time.Hour)
		defer h.Close()
		for i := range 300 {
			id := fmt.Sprintf("r%04d", i)
			if err := h.Add(ctx, histEntry(id, backend.StateQueued)); err != nil {
				t.Fatal(err)
			}
			if _, ok, err := h.Get(ctx, id); err != nil || !ok {
				t.Fatalf("Get(%s) right after Add = %v, %v; want it", id, ok, err)
			}
		}
		var n int
		if err := h.Scan(ctx, time.Time{}, time.Time{}, func(*backend.ExportEntry) bool { n++; return true }); err != nil || n != 300 {
			t.Errorf("Scan saw %d (%v), want 300", n, err)
		}
	})

	t.Run("ReportsFailedBatch", func(t *testing.T) {
		bad := redistest.Start(t).Client(t)
		h := redisb.NewBatchedHistory(bad, "bad:", 10000, time.Hour)
		_ = bad.Close() // every write fails
		if err := h.Add(ctx, histEntry("x", backend.StateQueued)); err == nil {
			t.Errorf("Add on a closed client returned no error")
		}
		_ = h.Close()
	})
}

// An export's body is kept compressed, and read back as it was received;
// a body stored plain (before compression) still reads back.
func TestRedisHistoryBodyIsCompressed(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := t.Context()
	h := redisb.NewHistory(rdb, "hz:", 100, time.Hour)
	body := []byte(`{"event":"issue-exported","issue":{"elements":[` + strings.Repeat(`{"frame_id":"frame_000481","label":"pedestrian"},`, 200) + `{}]}}`)
	e := &backend.ExportEntry{ID: "e1", ReceivedAt: time.Now(), Event: "issue-exported", Payload: body}
	if err := h.Add(ctx, e); err != nil {
		t.Fatal(err)
	}
	stored, err := rdb.Get(ctx, "hz:history:e1:body").Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if len(stored) >= len(body)/4 {
		t.Errorf("stored body is %d bytes for a %d-byte export: not compressed", len(stored), len(body))
	}
	got, ok, err := h.Get(ctx, "e1")
	if err != nil || !ok || string(got.Payload) != string(body) {
		t.Fatalf("Get = ok %v, err %v, payload of %d bytes equal %v", ok, err, len(got.Payload), string(got.Payload) == string(body))
	}
	// A body too small to gain is stored plain, and reads back.
	tiny := &backend.ExportEntry{ID: "e2", ReceivedAt: time.Now(), Event: "issue-exported", Payload: []byte(`{"a":1}`)}
	if err := h.Add(ctx, tiny); err != nil {
		t.Fatal(err)
	}
	if raw, _ := rdb.Get(ctx, "hz:history:e2:body").Result(); raw != `{"a":1}` {
		t.Errorf("tiny body stored as %q, want it plain", raw)
	}
	if got, _, err := h.Get(ctx, "e2"); err != nil || string(got.Payload) != `{"a":1}` {
		t.Errorf("tiny body read back as %q, %v", got.Payload, err)
	}
	// A body written plain, as before compression.
	if err := rdb.Set(ctx, "hz:history:e1:body", `{"plain":true}`, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if got, _, err := h.Get(ctx, "e1"); err != nil || string(got.Payload) != `{"plain":true}` {
		t.Errorf("plain body read back as %q, %v", got.Payload, err)
	}
}
