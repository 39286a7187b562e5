package memory_test

import (
	"context"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/pipeline/backend"
	"github.com/labelpipe/labelpipe/pipeline/backend/memory"
)

// LookupMany reports a request leased while its holder's ctx lasts, past
// the lease's ttl, and for ttl after the holder's ctx ended; only when both
// are over is it free, as Lease itself decides.
func TestLookupManyLeasedWhileCtxOrTTLLasts(t *testing.T) {
	tests := []struct {
		name     string
		ctxEnded bool
		ttl      time.Duration
		want     bool
	}{
		{"ctx alive, ttl passed", false, time.Nanosecond, true},
		{"ctx ended, ttl left", true, time.Hour, true},
		{"ctx ended, ttl passed", true, time.Nanosecond, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := memory.NewLedger(time.Hour)
			key := backend.DeliveryKey{ExportID: "e", Sink: "scale", Chunk: 0}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			if _, ok, err := l.Lease(ctx, key, tt.ttl); err != nil || !ok {
				t.Fatalf("Lease = %v, %v; want it taken", ok, err)
			}
			if tt.ctxEnded {
				cancel()
			}
			last := time.Now().Add(time.Nanosecond)
			for !time.Now().After(last) { // spin on the clock past a 1ns ttl, no sleep
			}
			got, err := l.LookupMany(t.Context(), []backend.DeliveryKey{key})
			if err != nil || len(got) != 1 {
				t.Fatalf("LookupMany = %+v, %v", got, err)
			}
			if got[0].Leased != tt.want {
				t.Errorf("Leased = %v, want %v", got[0].Leased, tt.want)
			}
			// Lease agrees: a second holder gets the request only when free.
			if _, ok, err := l.Lease(t.Context(), key, time.Hour); err != nil || ok == tt.want {
				t.Errorf("second Lease = %v, %v; want %v", ok, err, !tt.want)
			}
		})
	}
}
