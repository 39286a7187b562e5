package resilience_test

import (
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/pipeline/resilience"
)

// TestSharedWaitForOurOwnProbePollsAtSyncInterval: behind this replica's
// own half-open probe, another caller polls the shared state every
// breaker.sync_interval. A read that finds the breaker as it was (the same
// state and generation) wakes nobody: were it to, each poll would wake the
// caller at once for a second try, twice the tries and the store reads.
func TestSharedWaitForOurOwnProbePollsAtSyncInterval(t *testing.T) {
	const (
		syncEvery = 20 * time.Millisecond
		tries     = 11
	)
	c := fastConfig()
	c.Retry.MaxAttempts = 1
	c.Breaker = resilience.Breaker{ConsecutiveFailures: 1, OpenTimeout: 50 * time.Millisecond, SyncInterval: syncEvery}
	at := triesWhileAProbes(t, c, resilience.Options{Name: "labelbox", Store: newMemStore()}, tries)
	// Timers never fire early: a slow machine only spreads the tries out.
	if span, low := at[tries-1].Sub(at[0]), (tries-1)*syncEvery; span < low {
		t.Fatalf("%d tries for admission in %v behind our own probe, want them sync_interval (%v) apart, at least %v in all", tries, span, syncEvery, low)
	}
}
