package memory

import (
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// Once the ledger holds 4096 records, the next Record sweeps those past
// their ttl, so the map does not grow without bound.
func TestLedgerSweepsExpiredRecordsAt4096(t *testing.T) {
	l := NewLedger(time.Nanosecond)
	for i := range 4096 {
		if err := l.Record(t.Context(), backend.DeliveryKey{ExportID: "e", Sink: "s", Chunk: i}, backend.DeliveryRecord{Attempts: 1}); err != nil {
			t.Fatal(err)
		}
	}
	l.mu.Lock()
	before := len(l.seen)
	l.mu.Unlock()
	if before != 4096 {
		t.Fatalf("%d records before the sweep, want 4096", before)
	}
	// Every record's 1ns ttl has passed once the clock moves past the last
	// Record: spin on the clock (nanoseconds), no sleep.
	last := time.Now().Add(time.Nanosecond)
	for !time.Now().After(last) {
	}
	if err := l.Record(t.Context(), backend.DeliveryKey{ExportID: "e", Sink: "s", Chunk: 4096}, backend.DeliveryRecord{Attempts: 1}); err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	after := len(l.seen)
	l.mu.Unlock()
	if after != 1 {
		t.Errorf("%d records after the sweep at 4096, want 1 (the expired ones gone)", after)
	}
}

// Steps expire ttl after they were saved: Lookup then has none, and a step
// saved afterwards starts a fresh set rather than reviving the old ones.
func TestLedgerStepsExpire(t *testing.T) {
	l := NewLedger(time.Nanosecond)
	key := backend.DeliveryKey{ExportID: "e", Sink: "cvat"}
	if err := l.SaveStep(t.Context(), key, "task_id", "1"); err != nil {
		t.Fatal(err)
	}
	last := time.Now().Add(time.Nanosecond)
	for !time.Now().After(last) { // spin on the clock, no sleep
	}
	if r, _ := l.Lookup(t.Context(), key); r.Steps != nil {
		t.Fatalf("expired steps still looked up: %v", r.Steps)
	}
	l.mu.Lock() // expired, yet not swept by a Lookup
	l.steps[key] = stepSet{values: map[string]string{"task_id": "1"}, expires: time.Now().Add(-time.Second)}
	l.mu.Unlock()
	if err := l.SaveStep(t.Context(), key, "attached", "yes"); err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if got := l.steps[key].values; len(got) != 1 || got["attached"] != "yes" {
		t.Fatalf("steps %v, want only the one saved after the others expired", got)
	}
}

// Once the ledger holds steps of 4096 requests, the next SaveStep sweeps
// those past their ttl, so the map does not grow without bound. White-box
// (package memory): a sweep changes nothing Lookup can see, since expired
// steps already read as none; only the map's size tells.
func TestLedgerSweepsExpiredStepsAt4096(t *testing.T) {
	l := NewLedger(time.Nanosecond)
	for i := range 4096 {
		if err := l.SaveStep(t.Context(), backend.DeliveryKey{ExportID: "e", Sink: "cvat", Chunk: i}, "task_id", "1"); err != nil {
			t.Fatal(err)
		}
	}
	l.mu.Lock()
	before := len(l.steps)
	l.mu.Unlock()
	if before != 4096 {
		t.Fatalf("steps of %d requests before the sweep, want 4096", before)
	}
	last := time.Now().Add(time.Nanosecond)
	for !time.Now().After(last) { // spin on the clock, no sleep
	}
	if err := l.SaveStep(t.Context(), backend.DeliveryKey{ExportID: "e", Sink: "cvat", Chunk: 4096}, "task_id", "1"); err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	after := len(l.steps)
	l.mu.Unlock()
	if after != 1 {
		t.Errorf("steps of %d requests after the sweep at 4096, want 1 (the expired ones gone)", after)
	}
}
