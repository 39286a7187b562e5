package resilience_test

import (
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/labelpipe/labelpipe/pipeline/resilience"
)

// TestSharedBreakerQuietSuccessWritesNothingWhenReadEveryTime: with a
// sync_interval so short that no view is ever trusted, a success on a
// closed breaker with no failure streak still writes nothing: the read
// that admitted it showed there is nothing to change, and that read is
// all it costs (no lock, no write).
func TestSharedBreakerQuietSuccessWritesNothingWhenReadEveryTime(t *testing.T) {
	const runs = 5
	c := fastConfig()
	c.Retry.MaxAttempts = 1
	c.Breaker = resilience.Breaker{ConsecutiveFailures: 5, OpenTimeout: time.Minute, SyncInterval: time.Nanosecond}
	ps, cs := replicas(t, c, func() gobreaker.SharedDataStore { return newMemStore() }, resilience.Options{})
	if st := ps[0].State(); st != gobreaker.StateClosed {
		t.Fatalf("State = %q on a new breaker", st)
	}
	cs[0].reset()
	for range runs {
		if _, err := ps[0].Do(t.Context(), (&script{}).attempt); err != nil {
			t.Fatal(err)
		}
	}
	if locks, sets := cs[0].locks.Load(), cs[0].sets.Load(); locks != 0 || sets != 0 {
		t.Fatalf("%d quiet successes took the lock %d times and wrote %d times, want neither", runs, locks, sets)
	}
	if gets := cs[0].gets.Load(); gets < runs {
		t.Fatalf("%d quiet successes made %d reads, want at least one each (sync_interval 1ns trusts no view)", runs, gets)
	}
}
