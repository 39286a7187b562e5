package backendtest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// TestDedupeStore checks the DedupeStore contract on stores from
// DedupeStore(prefix, ttl) of a fresh backend per subtest.
//
//   - ReserveHolderRelease: the first Reserve of a key reserves it for its
//     id; a second, by another id, does not and names the first holder, as
//     does Holder, which changes nothing; Release by another id leaves the
//     key; Release by the holder frees it for the next Reserve; Release of
//     a key nobody holds is no error.
//   - Prefixes: stores with different prefixes keep different keys.
//   - Expiry: a key reserved with a 200ms ttl is free again after it (and
//     was not gone well before it).
//   - Concurrent: of 20 concurrent Reserves of one key exactly one wins and
//     every other names the winner.
//   - SharedAcrossInstances: stores with one prefix share their keys, on
//     one backend and across two on the same storage. (Only then: the
//     memory backend gives each stage a store of its own.)
func TestDedupeStore(t *testing.T, f Features, newBackend Constructor, reopen Reopener) {
	checkSetup(t, f, newBackend, reopen)
	t.Run("ReserveHolderRelease", func(t *testing.T) { testDedupeReserve(t, newBackend) })
	t.Run("Prefixes", func(t *testing.T) { testDedupePrefixes(t, newBackend) })
	t.Run("Expiry", func(t *testing.T) { testDedupeExpiry(t, newBackend) })
	t.Run("Concurrent", func(t *testing.T) { testDedupeConcurrent(t, newBackend) })
	t.Run("ProvisionalThenConfirmed", func(t *testing.T) { testDedupeConfirm(t, newBackend) })
	if f.SharedAcrossInstances {
		t.Run("SharedAcrossInstances", func(t *testing.T) { testDedupeShared(t, f, newBackend, reopen) })
	}
}

// dedupePrefix is the prefix the webhook-like stores of the suite use.
const dedupePrefix = "dedupe:webhook:"

func openDedupe(t *testing.T, b backend.Backend, prefix string, ttl time.Duration) backend.DedupeStore {
	t.Helper()
	s, err := b.DedupeStore(prefix, ttl, ttl)
	if err != nil {
		t.Fatalf("DedupeStore(%q, %s): %v", prefix, ttl, err)
	}
	if s == nil {
		t.Fatalf("DedupeStore(%q, %s) is nil", prefix, ttl)
	}
	return s
}

func reserve(t *testing.T, s backend.DedupeStore, key, id, wantHolder string, wantReserved bool) {
	t.Helper()
	holder, reserved, err := s.Reserve(t.Context(), key, id)
	if err != nil {
		t.Fatalf("Reserve(%s, %s): %v", key, id, err)
	}
	if holder.ID != wantHolder || reserved != wantReserved {
		t.Fatalf("Reserve(%s, %s) = %q, %v; want %q, %v", key, id, holder.ID, reserved, wantHolder, wantReserved)
	}
}

func wantHolder(t *testing.T, s backend.DedupeStore, key, want string) {
	t.Helper()
	id, held, err := s.Holder(t.Context(), key)
	if err != nil {
		t.Fatalf("Holder(%s): %v", key, err)
	}
	if held != (want != "") || id.ID != want {
		t.Fatalf("Holder(%s) = %q, %v; want %q, %v", key, id.ID, held, want, want != "")
	}
}

func release(t *testing.T, s backend.DedupeStore, key, id string) {
	t.Helper()
	if err := s.Release(t.Context(), key, id); err != nil {
		t.Fatalf("Release(%s, %s): %v", key, id, err)
	}
}

func testDedupeReserve(t *testing.T, newBackend Constructor) {
	s := openDedupe(t, newBackend(t), dedupePrefix, time.Hour)
	const key = "project-1:issue-7:updated"
	wantHolder(t, s, key, "")
	reserve(t, s, key, "export-a", "export-a", true)
	wantHolder(t, s, key, "export-a")
	wantHolder(t, s, key, "export-a") // Holder changes nothing
	reserve(t, s, key, "export-b", "export-a", false)
	reserve(t, s, key, "export-a", "export-a", false) // held, even for its holder
	wantHolder(t, s, "another-key", "")

	release(t, s, key, "export-b") // not the holder
	wantHolder(t, s, key, "export-a")
	release(t, s, key, "export-a")
	wantHolder(t, s, key, "")
	reserve(t, s, key, "export-b", "export-b", true)
	wantHolder(t, s, key, "export-b")
	release(t, s, "never-reserved", "export-a")
	release(t, s, key, "export-a") // the earlier holder cannot free the new one's key
	wantHolder(t, s, key, "export-b")
}

func testDedupePrefixes(t *testing.T, newBackend Constructor) {
	b := newBackend(t)
	s1 := openDedupe(t, b, "dedupe:one:", time.Hour)
	s2 := openDedupe(t, b, "dedupe:two:", time.Hour)
	reserve(t, s1, "k", "export-a", "export-a", true)
	wantHolder(t, s2, "k", "")
	reserve(t, s2, "k", "export-b", "export-b", true)
	wantHolder(t, s1, "k", "export-a")
	release(t, s2, "k", "export-b")
	wantHolder(t, s1, "k", "export-a")
}

func testDedupeExpiry(t *testing.T, newBackend Constructor) {
	const ttl = 200 * time.Millisecond
	s := openDedupe(t, newBackend(t), dedupePrefix, ttl)
	start := time.Now()
	reserve(t, s, "k", "export-a", "export-a", true)
	// Gone long before its ttl is wrong; looking once is enough.
	id, held, err := s.Holder(t.Context(), "k")
	if err != nil {
		t.Fatalf("Holder: %v", err)
	}
	if since := time.Since(start); !held && since < ttl/2 {
		t.Fatalf("key gone %s after Reserve with a ttl of %s", since, ttl)
	}
	if held && id.ID != "export-a" {
		t.Fatalf("Holder = %q, want export-a", id.ID)
	}
	eventually(t, "key expires after its ttl", func() (bool, string) {
		id, held, err := s.Holder(t.Context(), "k")
		if err != nil {
			t.Fatalf("Holder: %v", err)
		}
		return !held, fmt.Sprintf("held by %q %s after Reserve", id.ID, time.Since(start))
	})
	if since := time.Since(start); since < ttl {
		t.Fatalf("key expired %s after Reserve, before its ttl of %s", since, ttl)
	}
	reserve(t, s, "k", "export-b", "export-b", true)
}

func testDedupeConcurrent(t *testing.T, newBackend Constructor) {
	s := openDedupe(t, newBackend(t), dedupePrefix, time.Hour)
	const n = 20
	type result struct {
		holder   string
		reserved bool
		err      error
	}
	res := make([]result, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range res {
		wg.Go(func() {
			<-start
			h, r, err := s.Reserve(t.Context(), "contended", fmt.Sprintf("export-%02d", i))
			res[i] = result{h.ID, r, err}
		})
	}
	close(start)
	wg.Wait()
	winner := ""
	for i, r := range res {
		if r.err != nil {
			t.Fatalf("Reserve %d: %v", i, r.err)
		}
		if r.reserved {
			if winner != "" {
				t.Fatalf("both %s and export-%02d reserved the key: %+v", winner, i, res)
			}
			winner = fmt.Sprintf("export-%02d", i)
		}
	}
	if winner == "" {
		t.Fatalf("no Reserve won: %+v", res)
	}
	for i, r := range res {
		if r.holder != winner {
			t.Fatalf("Reserve %d names holder %q, winner is %s", i, r.holder, winner)
		}
	}
	wantHolder(t, s, "contended", winner)
}

func testDedupeShared(t *testing.T, f Features, newBackend Constructor, reopen Reopener) {
	b1 := newBackend(t)
	b2 := reopen(t, b1)
	s1 := openDedupe(t, b1, dedupePrefix, time.Hour)
	again := openDedupe(t, b1, dedupePrefix, time.Hour)
	s2 := openDedupe(t, b2, dedupePrefix, time.Hour)
	reserve(t, s1, "k", "export-a", "export-a", true)
	wantHolder(t, again, "k", "export-a")
	reserve(t, s2, "k", "export-b", "export-a", false)
	wantHolder(t, s2, "k", "export-a")
	release(t, s2, "k", "export-a")
	wantHolder(t, s1, "k", "")
	reserve(t, again, "k", "export-c", "export-c", true)
	wantHolder(t, s2, "k", "export-c")
}

// testDedupeConfirm: a reservation is provisional until confirmed; a
// provisional hold lapses after hold, a confirmed one lasts ttl; only the
// holder confirms, and not once its hold has lapsed.
func testDedupeConfirm(t *testing.T, newBackend Constructor) {
	const hold = 200 * time.Millisecond
	b := newBackend(t)
	s, err := b.DedupeStore(dedupePrefix, time.Hour, hold)
	if err != nil {
		t.Fatalf("DedupeStore: %v", err)
	}
	wantHold := func(key string, want backend.Hold) {
		t.Helper()
		h, held, err := s.Holder(t.Context(), key)
		if err != nil || !held || h != want {
			t.Fatalf("Holder(%s) = %+v, %v, %v; want %+v", key, h, held, err, want)
		}
	}
	h, reserved, err := s.Reserve(t.Context(), "kept", "export-a")
	if err != nil || !reserved || h != (backend.Hold{ID: "export-a"}) {
		t.Fatalf("Reserve = %+v, %v, %v; want a provisional hold by export-a", h, reserved, err)
	}
	wantHold("kept", backend.Hold{ID: "export-a"})
	if err := s.Confirm(t.Context(), "kept", "export-b"); !errors.Is(err, backend.ErrHoldLost) {
		t.Fatalf("Confirm by a non-holder = %v, want ErrHoldLost", err)
	}
	if err := s.Confirm(t.Context(), "kept", "export-a"); err != nil {
		t.Fatalf("Confirm by the holder: %v", err)
	}
	wantHold("kept", backend.Hold{ID: "export-a", Confirmed: true})
	h, reserved, err = s.Reserve(t.Context(), "kept", "export-b")
	if err != nil || reserved || h != (backend.Hold{ID: "export-a", Confirmed: true}) {
		t.Fatalf("Reserve of a confirmed key = %+v, %v, %v; want the confirmed hold of export-a", h, reserved, err)
	}

	// A provisional hold that is never confirmed (its export was never
	// stored) lapses, and cannot be confirmed after that.
	reserve(t, s, "lapsed", "export-c", "export-c", true)
	start := time.Now()
	eventually(t, "a provisional hold lapses", func() (bool, string) {
		h, held, err := s.Holder(t.Context(), "lapsed")
		if err != nil {
			t.Fatalf("Holder: %v", err)
		}
		return !held, fmt.Sprintf("held %+v %s after Reserve", h, time.Since(start))
	})
	if err := s.Confirm(t.Context(), "lapsed", "export-c"); !errors.Is(err, backend.ErrHoldLost) {
		t.Fatalf("Confirm after the hold lapsed = %v, want ErrHoldLost", err)
	}
	reserve(t, s, "lapsed", "export-d", "export-d", true)

	// The confirmed key outlived the provisional hold.
	wantHold("kept", backend.Hold{ID: "export-a", Confirmed: true})
	release(t, s, "kept", "export-a")
	wantHolder(t, s, "kept", "")
}
