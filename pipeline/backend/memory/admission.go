package memory

import (
	"context"
	"slices"
	"sync"
	"time"
)

// admission lets webhook requests into the broker's queue in arrival
// order. A request that finds the queue full (broker.max_pending) waits its
// turn, and a later request cannot overtake it: if a finished delivery
// woke any waiter while newcomers took the room first, a few requests would
// wait many times as long as the median.
type admission struct {
	max     int64
	pending func() int64 // messages queued and not finished

	mu      sync.Mutex
	granted int64 // requests let in that have not yet published
	waiters []chan struct{}
}

// admit waits up to wait for room and reports whether it got it. done,
// called once the request has published (or given up), hands the room it
// held back to the count of queued messages.
func (a *admission) admit(ctx context.Context, wait time.Duration) (done func(), ok bool) {
	a.mu.Lock()
	if len(a.waiters) == 0 && a.pending()+a.granted < a.max {
		a.granted++
		a.mu.Unlock()
		return a.done, true
	}
	turn := make(chan struct{})
	a.waiters = append(a.waiters, turn)
	a.mu.Unlock()

	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-turn:
		return a.done, true
	case <-ctx.Done():
	case <-timer.C:
	}
	a.mu.Lock()
	if i := slices.Index(a.waiters, turn); i >= 0 {
		a.waiters = slices.Delete(a.waiters, i, i+1)
		a.mu.Unlock()
		return nil, false
	}
	a.mu.Unlock()
	// Let in just as it gave up: pass the room on.
	a.done()
	return nil, false
}

func (a *admission) done() {
	a.mu.Lock()
	a.granted--
	a.mu.Unlock()
	a.wake()
}

// wake lets in waiters, oldest first, while there is room. Called when a
// queued message finishes.
func (a *admission) wake() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for len(a.waiters) > 0 && a.pending()+a.granted < a.max {
		close(a.waiters[0])
		a.waiters = slices.Delete(a.waiters, 0, 1)
		a.granted++
	}
}
