package memory

import (
	"sync/atomic"
	"testing"
	"time"
)

// The first waiter in line (index 0) that gives up while the queue is
// over its bound (an export fanned out to several sinks queues more than
// one message) leaves the line and hands back no room it never held:
// otherwise the count of grants goes negative and a later request is let
// in past max_pending.
func TestAdmissionFirstWaiterGivesUpOverTheBound(t *testing.T) {
	var pending atomic.Int64
	pending.Store(2)
	a := &admission{max: 1, pending: pending.Load}
	if _, ok := a.admit(t.Context(), time.Millisecond); ok {
		t.Fatal("admitted into a queue over its bound")
	}
	if n := a.queued(); n != 0 {
		t.Errorf("%d waiters left queued after the only one gave up", n)
	}
	a.mu.Lock()
	granted := a.granted
	a.mu.Unlock()
	if granted != 0 {
		t.Errorf("granted = %d after a waiter gave up, want 0", granted)
	}
	// With one message still queued the queue is full: a newcomer waits.
	pending.Store(1)
	if _, ok := a.admit(t.Context(), time.Millisecond); ok {
		t.Error("a newcomer was let in past max_pending")
	}
}
