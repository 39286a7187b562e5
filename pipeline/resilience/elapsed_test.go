package resilience_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/labelpipe/labelpipe/pipeline/resilience"
)

// TestBreakerWaitSpendsNoElapsedBudget: several requests share one
// breaker. The vendor goes down, the breaker stays open (and its slow
// probes fail) for far longer than retry.max_elapsed, then the vendor comes
// back but answers each waiting request one more 503. That 503 is a
// counted failure after the breaker wait, so it is where a max_elapsed
// that wrongly counted the wait would dead-letter the request. With one
// caller this cannot be seen: its wait always ends in a probe, and a
// successful probe ends the request before the budget is checked.
func TestBreakerWaitSpendsNoElapsedBudget(t *testing.T) {
	const (
		callers    = 4
		trip       = callers + 1 // the post-recovery 503s (callers-1) cannot re-trip it
		open       = 250 * time.Millisecond
		maxElapsed = 150 * time.Millisecond // shorter than one open period, with room for a slow start
		// Each failed probe outlasts max_elapsed too.
		probeLatency = 200 * time.Millisecond
		failedProbes = 2
	)
	stores := []struct {
		name  string
		store func() gobreaker.SharedDataStore
	}{
		{"local", func() gobreaker.SharedDataStore { return nil }},
		{"shared", func() gobreaker.SharedDataStore { return newMemStore() }},
	}
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			c := fastConfig()
			c.Retry = resilience.Retry{MaxAttempts: 1000, InitialInterval: time.Millisecond,
				MaxInterval: 2 * time.Millisecond, MaxElapsed: maxElapsed}
			c.Breaker.ConsecutiveFailures = trip
			c.Breaker.OpenTimeout = open
			p := newPolicy(t, c, resilience.Options{Name: "labelbox", Store: st.store()})

			var (
				started   sync.WaitGroup
				probesBad atomic.Int32 // failed probes so far
				blips     atomic.Int32 // counted failures after the vendor came back
			)
			started.Add(callers)
			all := make(chan struct{})
			go func() { started.Wait(); close(all) }()
			recovered := func() bool { return probesBad.Load() >= failedProbes }

			type result struct {
				n      int
				err    error
				waited time.Duration   // total BreakerWait seen by its attempts
				saved  []time.Duration // Progress.Elapsed after each retried failure
			}
			results := make([]result, callers)
			var wg sync.WaitGroup
			for i := range callers {
				wg.Go(func() {
					r := &results[i]
					first, blipped := true, false
					r.n, r.err = p.Resume(t.Context(), resilience.Progress{},
						func(pr resilience.Progress) { r.saved = append(r.saved, pr.Elapsed) },
						func(ctx context.Context, a resilience.Attempt) error {
							r.waited += a.BreakerWait
							if first {
								// Every request fails once before the
								// breaker trips, so that all of them
								// end up waiting behind it.
								first = false
								started.Done()
								select {
								case <-all:
									return errRetry
								case <-time.After(5 * time.Second):
									return errors.New("not every caller started")
								}
							}
							if a.BreakerState == gobreaker.StateHalfOpen {
								if recovered() {
									return nil
								}
								if err := sleepCtx(ctx, probeLatency); err != nil {
									return err
								}
								probesBad.Add(1)
								return errRetry
							}
							if !recovered() {
								return errRetry
							}
							if !blipped { // back, but still shaky
								blipped = true
								blips.Add(1)
								return errRetry
							}
							return nil
						})
				})
			}
			wg.Wait()

			for i, r := range results {
				if r.err != nil {
					t.Errorf("request %d: Do = %d attempts, %v; want delivered (breaker waits must not spend max_elapsed %v)", i, r.n, r.err, maxElapsed)
				}
				// The scenario holds: each request waited behind the
				// breaker for longer than its whole max_elapsed.
				if r.waited <= maxElapsed {
					t.Errorf("request %d waited %v behind the breaker, want more than max_elapsed %v", i, r.waited, maxElapsed)
				}
				for _, e := range r.saved {
					if e > maxElapsed {
						t.Errorf("request %d saved Progress.Elapsed %v > max_elapsed %v while still retrying: it counted breaker time", i, e, maxElapsed)
					}
				}
			}
			if got := probesBad.Load(); got != failedProbes {
				t.Errorf("%d failed probes, want %d", got, failedProbes)
			}
			// Without a counted failure after the wait, the budget is never
			// checked and the test could not fail.
			if got := blips.Load(); got < 1 {
				t.Fatalf("%d counted failures after the vendor came back, want at least 1", got)
			}
			if s := p.State(); s != gobreaker.StateClosed {
				t.Errorf("State = %q after recovery, want closed", s)
			}
		})
	}
}
