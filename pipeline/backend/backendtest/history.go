package backendtest

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// TestHistory checks the History contract of a backend that keeps one
// (backend.HistoryBackend) on a fresh backend per subtest.
//
//   - Add then Get returns the export and its requests; a second Add of the
//     same id (a resend) keeps the requests it does not name; SetState
//     changes one request and is ignored for an export not kept.
//   - Events: SetState appends its events, oldest first, keeping the last
//     MaxRequestEvents; Add neither writes nor drops them, and merges its
//     QueuedAt (to the millisecond) with the kept generations'.
//   - Scan is newest first, bounded by since and until, stops when fn
//     says so, and never shows more than max_exports; the oldest go first.
//   - An export received longer than ttl ago is neither in Get nor Scan.
//   - SharedAcrossInstances: an export added through one instance is seen
//     through another on the same storage.
func TestHistory(t *testing.T, f Features, newBackend Constructor, reopen Reopener) {
	checkSetup(t, f, newBackend, reopen)
	open := func(t *testing.T, b backend.Backend, maxExports int, ttl time.Duration) backend.History {
		hb, ok := b.(backend.HistoryBackend)
		if !ok {
			t.Fatalf("%T keeps no export history (backend.HistoryBackend)", b)
		}
		return hb.History(maxExports, ttl)
	}
	base := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	entry := func(i int) *backend.ExportEntry {
		return &backend.ExportEntry{ID: fmt.Sprintf("exp-%03d", i), ReceivedAt: base.Add(time.Duration(i) * time.Second),
			Event: "issue-exported", Project: "p", IssueID: fmt.Sprintf("issue-%d", i), Key: "k", Payload: []byte(`{"a":1}`),
			Requests: map[string]backend.RequestState{
				backend.HistoryKey("scale", 0): {Sink: "scale", Chunk: 0, Chunks: 1, State: backend.StateQueued, IdempotencyKey: "k.scale.0"},
				backend.HistoryKey("lb", -1):   {Sink: "lb", Chunk: -1, State: backend.StateSkipped},
			}}
	}
	ids := func(t *testing.T, h backend.History, since, until time.Time, stop int) []string {
		t.Helper()
		var out []string
		err := h.Scan(context.Background(), since, until, func(e *backend.ExportEntry) bool {
			out = append(out, e.ID)
			return stop == 0 || len(out) < stop
		})
		if err != nil {
			t.Fatalf("Scan: %v", err)
		}
		return out
	}
	t.Run("AddGetSetState", func(t *testing.T) {
		ctx := context.Background()
		h := open(t, newBackend(t), 100, time.Hour)
		if err := h.Add(ctx, entry(1)); err != nil {
			t.Fatal(err)
		}
		if err := h.SetState(ctx, "exp-001", backend.RequestState{Sink: "scale", Chunk: 0, State: backend.StateDeadLettered, Status: 500, Error: "boom"}); err != nil {
			t.Fatal(err)
		}
		if err := h.SetState(ctx, "nope", backend.RequestState{Sink: "scale", Chunk: 0, State: backend.StateDeadLettered}); err != nil {
			t.Fatal(err)
		}
		resend := entry(1)
		resend.Generation, resend.Requests = 1, nil
		if err := h.Add(ctx, resend); err != nil {
			t.Fatal(err)
		}
		e, ok, err := h.Get(ctx, "exp-001")
		if err != nil || !ok {
			t.Fatalf("Get = %v %v, want the export", ok, err)
		}
		if e.IssueID != "issue-1" || !e.ReceivedAt.Equal(base.Add(time.Second)) || string(e.Payload) != `{"a":1}` || e.Generation != 1 {
			t.Errorf("Get = %+v, want issue-1 received at %v with its payload, generation 1", e, base.Add(time.Second))
		}
		sc := e.Requests[backend.HistoryKey("scale", 0)]
		if sc.State != backend.StateDeadLettered || sc.Status != 500 || sc.Error != "boom" {
			t.Errorf("scale's state = %+v, want dead_lettered 500 boom", sc)
		}
		if e.Requests[backend.HistoryKey("lb", -1)].State != backend.StateSkipped {
			t.Errorf("requests = %+v, want lb skipped kept by the resend's Add", e.Requests)
		}
		if _, ok, err := h.Get(ctx, "nope"); ok || err != nil {
			t.Errorf("Get of an export never added = %v %v, want not found", ok, err)
		}
	})
	t.Run("Events", func(t *testing.T) {
		ctx := context.Background()
		h := open(t, newBackend(t), 100, time.Hour)
		e := entry(2)
		e.QueuedAt = map[int]time.Time{0: base.Add(2 * time.Second)}
		if err := h.Add(ctx, e); err != nil {
			t.Fatal(err)
		}
		fail := func(n int) backend.RequestEvent {
			return backend.RequestEvent{At: base.Add(time.Duration(n) * time.Millisecond), Event: backend.EventAttemptFailed,
				Attempt: n, Status: 500 + n%4, Error: fmt.Sprintf("attempt %d: \"boom\"\nsecond line ü", n)}
		}
		const n = backend.MaxRequestEvents + 5
		for i := 1; i <= n; i++ {
			s := backend.RequestState{Sink: "scale", Chunk: 0, Chunks: 1, State: backend.StateDelivering, Attempts: i,
				Events: []backend.RequestEvent{fail(i)}}
			if err := h.SetState(ctx, "exp-002", s); err != nil {
				t.Fatal(err)
			}
		}
		dead := backend.RequestEvent{At: base.Add(time.Minute), Event: backend.EventDeadLettered, Attempt: n, Status: 503, Error: "gave up"}
		if err := h.SetState(ctx, "exp-002", backend.RequestState{Sink: "scale", Chunk: 0, State: backend.StateDeadLettered,
			Attempts: n, Events: []backend.RequestEvent{dead}}); err != nil {
			t.Fatal(err)
		}
		// The resend's Add, then its fan-out's: the events stay, and the
		// fan-out's own (there should be none) are not written.
		resend := entry(2)
		resend.Generation, resend.Requests = 1, nil
		if err := h.Add(ctx, resend); err != nil {
			t.Fatal(err)
		}
		fanout := entry(2)
		fanout.Generation = 1
		fanout.QueuedAt = map[int]time.Time{1: base.Add(time.Hour)}
		fanout.Requests = map[string]backend.RequestState{backend.HistoryKey("scale", 0): {Sink: "scale", Chunk: 0, Chunks: 1,
			State: backend.StateQueued, Generation: 1, Events: []backend.RequestEvent{{At: base, Event: "not kept"}}}}
		if err := h.Add(ctx, fanout); err != nil {
			t.Fatal(err)
		}
		got, ok, err := h.Get(ctx, "exp-002")
		if err != nil || !ok {
			t.Fatalf("Get = %v %v", ok, err)
		}
		var want []backend.RequestEvent
		for i := n - backend.MaxRequestEvents + 2; i <= n; i++ {
			want = append(want, fail(i))
		}
		want = append(want, dead)
		sc := got.Requests[backend.HistoryKey("scale", 0)]
		if sc.State != backend.StateQueued || sc.Generation != 1 || !slices.EqualFunc(sc.Events, want, sameEvent) {
			t.Errorf("scale.0 = %+v\nwant queued in generation 1 with the last %d events %+v", sc, backend.MaxRequestEvents, want)
		}
		if q := got.QueuedAt; len(q) != 2 || !q[0].Equal(base.Add(2*time.Second)) || !q[1].Equal(base.Add(time.Hour)) {
			t.Errorf("QueuedAt = %v, want generation 0 at %v and 1 at %v", q, base.Add(2*time.Second), base.Add(time.Hour))
		}
		if lb := got.Requests[backend.HistoryKey("lb", -1)]; lb.Events != nil {
			t.Errorf("lb's events = %+v, want none", lb.Events)
		}
		// Get's entry is the caller's own.
		sc.Events[0].Error = "changed by the caller"
		again, _, _ := h.Get(ctx, "exp-002")
		if ev := again.Requests[backend.HistoryKey("scale", 0)].Events; len(ev) == 0 || !sameEvent(ev[0], want[0]) {
			t.Errorf("after the caller changed Get's events the kept ones are %+v", ev)
		}
	})
	t.Run("ScanOrderAndBounds", func(t *testing.T) {
		ctx := context.Background()
		const maxExports = 64
		h := open(t, newBackend(t), maxExports, time.Hour)
		for i := range maxExports + 30 {
			if err := h.Add(ctx, entry(i)); err != nil {
				t.Fatal(err)
			}
		}
		all := ids(t, h, time.Time{}, time.Time{}, 0)
		var want []string
		for i := maxExports + 29; i >= 30; i-- {
			want = append(want, fmt.Sprintf("exp-%03d", i))
		}
		if !slices.Equal(all, want) {
			t.Fatalf("Scan = %v, want the %d newest, newest first: %v", all, maxExports, want)
		}
		if _, ok, _ := h.Get(ctx, "exp-000"); ok {
			t.Errorf("the oldest export is still kept past max_exports")
		}
		got := ids(t, h, base.Add(40*time.Second), base.Add(42*time.Second), 0)
		if !slices.Equal(got, []string{"exp-042", "exp-041", "exp-040"}) {
			t.Errorf("Scan since 40s until 42s = %v, want exp-042..exp-040", got)
		}
		if got := ids(t, h, time.Time{}, time.Time{}, 2); len(got) != 2 {
			t.Errorf("Scan stopped after 2 gave %v", got)
		}
	})
	t.Run("Age", func(t *testing.T) {
		ctx := context.Background()
		h := open(t, newBackend(t), 100, time.Hour)
		old := entry(1)
		old.ID, old.ReceivedAt = "old", time.Now().Add(-2*time.Hour)
		if err := h.Add(ctx, old); err != nil {
			t.Fatal(err)
		}
		if err := h.Add(ctx, entry(2)); err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := h.Get(ctx, "old"); ok {
			t.Errorf("an export received 2h ago is kept with ttl 1h")
		}
		if got := ids(t, h, time.Time{}, time.Time{}, 0); !slices.Equal(got, []string{"exp-002"}) {
			t.Errorf("Scan = %v, want only exp-002", got)
		}
	})
	if f.SharedAcrossInstances {
		t.Run("SharedAcrossInstances", func(t *testing.T) {
			ctx := context.Background()
			b := newBackend(t)
			if err := open(t, b, 100, time.Hour).Add(ctx, entry(7)); err != nil {
				t.Fatal(err)
			}
			other := open(t, reopen(t, b), 100, time.Hour)
			if e, ok, err := other.Get(ctx, "exp-007"); err != nil || !ok || e.IssueID != "issue-7" {
				t.Errorf("another instance's Get = %+v %v %v, want exp-007", e, ok, err)
			}
			if got := ids(t, other, time.Time{}, time.Time{}, 0); !slices.Equal(got, []string{"exp-007"}) {
				t.Errorf("another instance's Scan = %v, want exp-007", got)
			}
		})
	}
}

func sameEvent(a, b backend.RequestEvent) bool {
	return a.At.Equal(b.At) && a.Event == b.Event && a.Generation == b.Generation && a.Attempt == b.Attempt &&
		a.Status == b.Status && a.Error == b.Error
}
