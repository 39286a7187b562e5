package backendtest

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// TestLedger checks the Ledger contract on a fresh backend per subtest.
//
//   - Record: a key is not delivered before Record and is after it (and
//     after a second Record); another chunk, sink or export is not, a
//     render failure's chunk -1 included. The record keeps the attempts
//     and the time Record was given (now when none), to the millisecond.
//   - LookupMany: every key's record in the order asked, Leased for the
//     keys a copy is being sent under; none for none.
//   - Lease: of copies leasing one request at once exactly one wins; the
//     lease holds past its ttl while its holder's ctx lasts, ends with
//     release or Record, and lapses within about ttl once the holder's
//     ctx ended without a release (a holder that died); with
//     SharedAcrossInstances a lease taken through one instance holds
//     against another.
//   - Steps: a step saved with SaveStep is in the next Lookup, with every
//     other step of the request and its attempts; steps saved at once all
//     stay; they are per request, survive a SaveAttempts and a Record, and
//     (SharedAcrossInstances) are seen by another instance, as by a
//     process started after a crash between two steps.
//   - SharedAcrossInstances: a record made through one backend is seen
//     through another on the same storage, both ways.
func TestLedger(t *testing.T, f Features, newBackend Constructor, reopen Reopener) {
	checkSetup(t, f, newBackend, reopen)
	t.Run("Record", func(t *testing.T) { testLedgerRecord(t, newBackend) })
	t.Run("Attempts", func(t *testing.T) { testLedgerAttempts(t, f, newBackend, reopen) })
	t.Run("Lease", func(t *testing.T) { testLedgerLease(t, f, newBackend, reopen) })
	t.Run("LookupMany", func(t *testing.T) { testLedgerLookupMany(t, f, newBackend, reopen) })
	t.Run("Steps", func(t *testing.T) { testLedgerSteps(t, f, newBackend, reopen) })
	if f.SharedAcrossInstances {
		t.Run("SharedAcrossInstances", func(t *testing.T) { testLedgerShared(t, f, newBackend, reopen) })
	}
}

func openLedger(t *testing.T, b backend.Backend) backend.Ledger {
	t.Helper()
	l := b.Ledger()
	if l == nil {
		t.Fatal("Ledger() is nil")
	}
	return l
}

func wantDelivered(t *testing.T, l backend.Ledger, key backend.DeliveryKey, want bool) {
	t.Helper()
	r, err := l.Lookup(t.Context(), key)
	if err != nil {
		t.Fatalf("Lookup(%s): %v", key, err)
	}
	got := r.Delivered
	if got != want {
		t.Fatalf("Delivered(%s) = %v, want %v", key, got, want)
	}
}

// recordedAt is the delivery time record gives, on a millisecond: what
// every backend keeps.
var recordedAt = time.UnixMilli(1_790_000_000_123)

// delivered is the record record leaves.
var delivered = backend.DeliveryRecord{Delivered: true, Attempts: 1, DeliveredAt: recordedAt}

// record records key delivered on its first try, at recordedAt.
func record(t *testing.T, l backend.Ledger, key backend.DeliveryKey) {
	t.Helper()
	if err := l.Record(t.Context(), key, backend.DeliveryRecord{Attempts: 1, DeliveredAt: recordedAt}); err != nil {
		t.Fatalf("Record(%s): %v", key, err)
	}
}

func testLedgerRecord(t *testing.T, newBackend Constructor) {
	l := openLedger(t, newBackend(t))
	key := backend.DeliveryKey{ExportID: "exp-1", Sink: "scale", Chunk: 0}
	others := []backend.DeliveryKey{
		{ExportID: "exp-1", Sink: "scale", Chunk: 1},
		{ExportID: "exp-1", Sink: "scale", Chunk: -1},
		{ExportID: "exp-1", Sink: "labelbox", Chunk: 0},
		{ExportID: "exp-2", Sink: "scale", Chunk: 0},
	}
	wantDelivered(t, l, key, false)
	record(t, l, key)
	wantDelivered(t, l, key, true)
	for _, k := range others {
		wantDelivered(t, l, k, false)
	}
	if r, err := l.Lookup(t.Context(), key); err != nil || !sameRecord(r, delivered) {
		t.Fatalf("Lookup(%s) after a first-try Record = %+v, %v; want %+v", key, r, err, delivered)
	}
	record(t, l, key) // a redelivery records again
	wantDelivered(t, l, key, true)

	// No time given: the time of the Record.
	now := others[3]
	before := time.Now().Truncate(time.Millisecond)
	if err := l.Record(t.Context(), now, backend.DeliveryRecord{Attempts: 3, Spent: 9, Elapsed: time.Hour}); err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	r, err := l.Lookup(t.Context(), now)
	if err != nil || !r.Delivered || r.Attempts != 3 || r.Spent != 0 || r.Elapsed != 0 || r.DeliveredAt.Before(before) || r.DeliveredAt.After(after) {
		t.Fatalf("Lookup(%s) after Record of 3 attempts without a time = %+v, %v; want delivered, 3 attempts, at a time in [%v, %v]",
			now, r, err, before, after)
	}

	unrendered := others[1]
	record(t, l, unrendered)
	wantDelivered(t, l, unrendered, true)
	wantDelivered(t, l, others[0], false)
}

func testLedgerShared(t *testing.T, f Features, newBackend Constructor, reopen Reopener) {
	b1 := newBackend(t)
	b2 := reopen(t, b1)
	l1, l2 := openLedger(t, b1), openLedger(t, b2)
	k1 := backend.DeliveryKey{ExportID: "exp-1", Sink: "scale", Chunk: 0}
	k2 := backend.DeliveryKey{ExportID: "exp-1", Sink: "scale", Chunk: 1}
	wantDelivered(t, l2, k1, false)
	record(t, l1, k1)
	wantDelivered(t, l2, k1, true)
	wantDelivered(t, l2, k2, false)
	record(t, l2, k2)
	wantDelivered(t, l1, k2, true)
}

// testLedgerAttempts: a request's retry progress is kept until it is
// delivered, per request, and (SharedAcrossInstances) seen by another
// instance, as a replica that claims the request after a crash would.
func testLedgerAttempts(t *testing.T, f Features, newBackend Constructor, reopen Reopener) {
	ctx := t.Context()
	b := newBackend(t)
	l := b.Ledger()
	key := backend.DeliveryKey{ExportID: "export-a", Sink: "scale", Chunk: 2}
	other := backend.DeliveryKey{ExportID: "export-a", Sink: "scale", Chunk: 3}
	lookup := func(l backend.Ledger, k backend.DeliveryKey, want backend.DeliveryRecord) {
		t.Helper()
		got, err := l.Lookup(ctx, k)
		if err != nil || !sameRecord(got, want) {
			t.Fatalf("Lookup(%s) = %+v, %v; want %+v", k, got, err, want)
		}
	}
	lookup(l, key, backend.DeliveryRecord{})
	saved := backend.DeliveryRecord{Attempts: 5, Spent: 3, Elapsed: 1500 * time.Millisecond}
	if err := l.SaveAttempts(ctx, key, backend.DeliveryRecord{Attempts: 1, Spent: 1}); err != nil {
		t.Fatal(err)
	}
	if err := l.SaveAttempts(ctx, key, saved); err != nil {
		t.Fatal(err)
	}
	lookup(l, key, saved)
	lookup(l, other, backend.DeliveryRecord{})
	if f.SharedAcrossInstances {
		lookup(reopen(t, b).Ledger(), key, saved)
	}
	// Delivered on the 6th attempt: the record says so, the retry
	// progress goes.
	if err := l.Record(ctx, key, backend.DeliveryRecord{Attempts: 6, DeliveredAt: recordedAt}); err != nil {
		t.Fatal(err)
	}
	lookup(l, key, backend.DeliveryRecord{Delivered: true, Attempts: 6, DeliveredAt: recordedAt})
	if f.SharedAcrossInstances {
		lookup(reopen(t, b).Ledger(), key, backend.DeliveryRecord{Delivered: true, Attempts: 6, DeliveredAt: recordedAt})
	}
}

// testLedgerLookupMany: one call returns what Lookup returns for each key,
// in order, and which of them are leased.
func testLedgerLookupMany(t *testing.T, f Features, newBackend Constructor, reopen Reopener) {
	ctx := t.Context()
	b := newBackend(t)
	l := openLedger(t, b)
	if got, err := l.LookupMany(ctx, nil); err != nil || len(got) != 0 {
		t.Fatalf("LookupMany(none) = %+v, %v; want nothing", got, err)
	}
	k := func(chunk int) backend.DeliveryKey {
		return backend.DeliveryKey{ExportID: "export-m", Sink: "scale", Chunk: chunk}
	}
	done, retrying, leased, stepped, unknown := k(0), k(1), k(2), k(3), k(4)
	record(t, l, done)
	tries := backend.DeliveryRecord{Attempts: 2, Spent: 2, Elapsed: 300 * time.Millisecond}
	if err := l.SaveAttempts(ctx, retrying, tries); err != nil {
		t.Fatal(err)
	}
	if err := l.SaveStep(ctx, stepped, "task_id", "9"); err != nil {
		t.Fatal(err)
	}
	holder := l
	if f.SharedAcrossInstances {
		holder = reopen(t, b).Ledger() // another replica is sending it
	}
	release, ok, err := holder.Lease(ctx, leased, time.Minute)
	if err != nil || !ok {
		t.Fatalf("Lease(%s) = %v, %v", leased, ok, err)
	}
	keys := []backend.DeliveryKey{unknown, stepped, leased, done, retrying, done}
	want := []backend.DeliveryRecord{{}, {Steps: map[string]string{"task_id": "9"}}, {Leased: true}, delivered, tries, delivered}
	check := func(what string, want []backend.DeliveryRecord) {
		t.Helper()
		got, err := l.LookupMany(ctx, keys)
		if err != nil || len(got) != len(want) {
			t.Fatalf("%s: LookupMany = %+v, %v; want %+v", what, got, err, want)
		}
		for i := range want {
			if !sameRecord(got[i], want[i]) || got[i].Leased != want[i].Leased {
				t.Errorf("%s: LookupMany[%d] (%s) = %+v, want %+v", what, i, keys[i], got[i], want[i])
			}
		}
	}
	check("one leased", want)
	release()
	want[2].Leased = false
	check("lease released", want)
}

func testLedgerLease(t *testing.T, f Features, newBackend Constructor, reopen Reopener) {
	ctx := t.Context()
	b := newBackend(t)
	l := openLedger(t, b)
	key := backend.DeliveryKey{ExportID: "export-l", Sink: "scale", Chunk: 0}
	const ttl = 300 * time.Millisecond
	lease := func(l backend.Ledger, ctx context.Context, want bool) func() {
		t.Helper()
		release, ok, err := l.Lease(ctx, key, ttl)
		if err != nil || ok != want {
			t.Fatalf("Lease(%s) = %v, %v; want %v", key, ok, err, want)
		}
		return release
	}

	// Copies leasing at once: one wins.
	const copies = 8
	var (
		wg       sync.WaitGroup
		start    = make(chan struct{})
		mu       sync.Mutex
		won      int
		releases []func()
	)
	for range copies {
		wg.Go(func() {
			<-start
			release, ok, err := l.Lease(ctx, key, ttl)
			if err != nil {
				t.Errorf("Lease: %v", err)
			}
			mu.Lock()
			defer mu.Unlock()
			if ok {
				won++
				releases = append(releases, release)
			}
		})
	}
	close(start)
	wg.Wait()
	if won != 1 {
		t.Fatalf("%d of %d concurrent leases won, want 1", won, copies)
	}
	if f.SharedAcrossInstances {
		lease(reopen(t, b).Ledger(), ctx, false)
	}
	// Held past its ttl while the holder's ctx lasts.
	for deadline := time.Now().Add(3 * ttl); time.Now().Before(deadline); {
		lease(l, ctx, false)
	}
	releases[0]()
	releases[0]() // twice is harmless
	lease(l, ctx, true)()

	// Record ends the lease.
	lease(l, ctx, true)
	record(t, l, key)
	lease(l, ctx, true)()

	// A holder whose ctx ended without a release loses it within about ttl.
	other := backend.DeliveryKey{ExportID: "export-l", Sink: "scale", Chunk: 1}
	hctx, cancel := context.WithCancel(ctx)
	if _, ok, err := l.Lease(hctx, other, ttl); err != nil || !ok {
		t.Fatalf("Lease(%s) = %v, %v", other, ok, err)
	}
	cancel()
	deadline := time.Now().Add(10 * ttl)
	for {
		_, ok, err := l.Lease(ctx, other, ttl)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lease of a holder that is gone still held after %v (ttl %v)", 10*ttl, ttl)
		}
	}
}

// sameRecord compares two records, steps included (a nil and an empty
// Steps are the same).
func sameRecord(a, b backend.DeliveryRecord) bool {
	return a.Delivered == b.Delivered && a.Attempts == b.Attempts && a.Spent == b.Spent &&
		a.Elapsed == b.Elapsed && a.DeliveredAt.Equal(b.DeliveredAt) && maps.Equal(a.Steps, b.Steps)
}

func testLedgerSteps(t *testing.T, f Features, newBackend Constructor, reopen Reopener) {
	ctx := t.Context()
	b := newBackend(t)
	l := openLedger(t, b)
	key := backend.DeliveryKey{ExportID: "export-s", Sink: "cvat", Chunk: 0}
	other := backend.DeliveryKey{ExportID: "export-s", Sink: "cvat", Chunk: 1}
	lookup := func(l backend.Ledger, k backend.DeliveryKey, want backend.DeliveryRecord) {
		t.Helper()
		got, err := l.Lookup(ctx, k)
		if err != nil || !sameRecord(got, want) {
			t.Fatalf("Lookup(%s) = %+v, %v; want %+v", k, got, err, want)
		}
	}
	save := func(l backend.Ledger, k backend.DeliveryKey, name, value string) {
		t.Helper()
		if err := l.SaveStep(ctx, k, name, value); err != nil {
			t.Fatalf("SaveStep(%s, %q, %q): %v", k, name, value, err)
		}
	}
	lookup(l, key, backend.DeliveryRecord{})
	if r, _ := l.Lookup(ctx, key); r.Steps != nil {
		t.Fatalf("a record without steps has Steps %#v, want nil", r.Steps)
	}

	// A step, then another: both kept; saving one again replaces it. Values
	// are kept byte for byte, JSON-looking, quoted or empty ones included.
	save(l, key, "task_id", "41")
	lookup(l, key, backend.DeliveryRecord{Steps: map[string]string{"task_id": "41"}})
	if r, _ := l.Lookup(ctx, key); r.Steps != nil {
		r.Steps["task_id"] = "changed by the caller" // the caller's own map
	}
	lookup(l, key, backend.DeliveryRecord{Steps: map[string]string{"task_id": "41"}})
	save(l, key, "request_id", `{"rq":"a/b\"c"} ü`)
	save(l, key, "task_id", "42")
	save(l, key, "empty", "")
	steps := map[string]string{"task_id": "42", "request_id": `{"rq":"a/b\"c"} ü`, "empty": ""}
	lookup(l, key, backend.DeliveryRecord{Steps: steps})
	lookup(l, other, backend.DeliveryRecord{})

	// Steps and attempts are one record: neither erases the other.
	tries := backend.DeliveryRecord{Attempts: 3, Spent: 2, Elapsed: 700 * time.Millisecond}
	if err := l.SaveAttempts(ctx, key, tries); err != nil {
		t.Fatal(err)
	}
	both := tries
	both.Steps = steps
	lookup(l, key, both)
	save(l, key, "attached", "yes")
	steps = maps.Clone(steps)
	steps["attached"] = "yes"
	both.Steps = steps
	lookup(l, key, both)

	// Steps saved at once, by two copies or two goroutines, all stay.
	const n = 16
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if err := l.SaveStep(ctx, other, fmt.Sprintf("s%d", i), fmt.Sprint(i)); err != nil {
				t.Errorf("SaveStep: %v", err)
			}
		})
	}
	wg.Wait()
	r, err := l.Lookup(ctx, other)
	if err != nil || len(r.Steps) != n {
		t.Fatalf("after %d concurrent SaveSteps Lookup has %d steps (%v): %v", n, len(r.Steps), err, r.Steps)
	}

	// A process started after a crash between two steps sees them.
	if f.SharedAcrossInstances {
		lookup(reopen(t, b).Ledger(), key, both)
	}

	// Delivered: the steps stay (what the vendor made), attempts go.
	record(t, l, key)
	lookup(l, key, backend.DeliveryRecord{Delivered: true, Attempts: 1, DeliveredAt: recordedAt, Steps: steps})
}
