package resilience_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

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
	var (
		mu sync.Mutex
		at []time.Time // B's tries for admission
	)
	p := newPolicy(t, c, resilience.Options{Name: "labelbox", Store: newMemStore(), Gate: func(ctx context.Context) error {
		if ctx.Value(callerB{}) != nil {
			mu.Lock()
			at = append(at, time.Now())
			mu.Unlock()
		}
		return nil
	}})
	if _, err := p.Do(t.Context(), func(context.Context, resilience.Attempt) error { return errRetry }); !errors.Is(err, resilience.ErrExhausted) {
		t.Fatalf("tripping Do = %v", err)
	}
	probing, release := make(chan struct{}), make(chan struct{})
	aDone := make(chan error, 1)
	go func() {
		_, err := p.Do(t.Context(), func(_ context.Context, a resilience.Attempt) error {
			if a.BreakerState == gobreaker.StateHalfOpen {
				close(probing)
				<-release
			}
			return nil
		})
		aDone <- err
	}()
	select {
	case <-probing:
	case <-time.After(10 * time.Second):
		t.Fatal("A never probed")
	}
	bDone := make(chan error, 1)
	go func() {
		_, err := p.Do(context.WithValue(t.Context(), callerB{}, true), func(context.Context, resilience.Attempt) error { return nil })
		bDone <- err
	}()
	waitFor(t, "B's tries while A probes", func() bool { mu.Lock(); defer mu.Unlock(); return len(at) >= tries })
	close(release)
	for _, ch := range []chan error{aDone, bDone} {
		select {
		case err := <-ch:
			if err != nil {
				t.Fatalf("Do = %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Do never finished")
		}
	}
	mu.Lock()
	defer mu.Unlock()
	// Timers never fire early: a slow machine only spreads the tries out.
	if span, low := at[tries-1].Sub(at[0]), (tries-1)*syncEvery; span < low {
		t.Fatalf("%d tries for admission in %v behind our own probe, want them sync_interval (%v) apart, at least %v in all", tries, span, syncEvery, low)
	}
}
