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
		if err := l.Record(t.Context(), backend.DeliveryKey{ExportID: "e", Sink: "s", Chunk: i}); err != nil {
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
	if err := l.Record(t.Context(), backend.DeliveryKey{ExportID: "e", Sink: "s", Chunk: 4096}); err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	after := len(l.seen)
	l.mu.Unlock()
	if after != 1 {
		t.Errorf("%d records after the sweep at 4096, want 1 (the expired ones gone)", after)
	}
}
