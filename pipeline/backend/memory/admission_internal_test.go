package memory

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// waitFor polls cond, bounded, for state another goroutine sets.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // polling state owned by other goroutines
	}
}

func (a *admission) queued() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.waiters)
}

func TestAdmissionLetsWaitersInInArrivalOrder(t *testing.T) {
	var pending atomic.Int64
	a := &admission{max: 1, pending: pending.Load}
	pending.Store(1) // full
	type admitted struct {
		who  int
		done func()
	}
	in := make(chan admitted, 4)
	enqueue := func(who int) {
		go func() {
			done, ok := a.admit(t.Context(), time.Minute)
			if !ok {
				t.Errorf("waiter %d gave up", who)
				return
			}
			in <- admitted{who, done}
		}()
		waitFor(t, "waiter to queue", func() bool { return a.queued() == who+1 })
	}
	for who := range 3 {
		enqueue(who)
	}
	// Room frees, but a newcomer must still queue behind the waiters.
	pending.Store(0)
	enqueue(3)
	for want := range 4 {
		a.wake()
		got := <-in
		if got.who != want {
			t.Fatalf("let in waiter %d, want %d (arrival order)", got.who, want)
		}
		select {
		case extra := <-in:
			t.Fatalf("waiter %d let in while %d held the only room", extra.who, got.who)
		default:
		}
		pending.Add(1) // its export is queued now
		got.done()
		pending.Add(-1) // and delivered
	}
	if a.granted != 0 || a.queued() != 0 {
		t.Fatalf("granted %d, queued %d after all finished; want 0, 0", a.granted, a.queued())
	}
}

func TestAdmissionGivesUp(t *testing.T) {
	tests := []struct {
		name   string
		ctx    func() context.Context
		wait   time.Duration
		grants bool // room frees while the waiter gives up
	}{
		{"queue_wait passes", context.Background, 10 * time.Millisecond, false},
		{"caller goes away", func() context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx
		}, time.Minute, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var pending atomic.Int64
			pending.Store(1)
			a := &admission{max: 1, pending: pending.Load}
			if _, ok := a.admit(tt.ctx(), tt.wait); ok {
				t.Fatal("admitted into a full queue")
			}
			if n := a.queued(); n != 0 {
				t.Fatalf("%d waiters left queued after giving up", n)
			}
			// The room it did not take goes to the next request.
			pending.Store(0)
			done, ok := a.admit(t.Context(), time.Minute)
			if !ok {
				t.Fatal("next request not admitted")
			}
			done()
			if a.granted != 0 {
				t.Fatalf("granted = %d after every request finished, want 0", a.granted)
			}
		})
	}
}

// A waiter let in just as it gives up must pass the room on. Which of
// the two happens first is up to the scheduler; either way the next
// waiter gets in and no room is lost.
func TestAdmissionPassesOnRoomGrantedAsTheWaiterLeft(t *testing.T) {
	for range 20 {
		var pending atomic.Int64
		pending.Store(1)
		a := &admission{max: 1, pending: pending.Load}
		ctx, cancel := context.WithCancel(t.Context())
		first := make(chan func(), 1)
		go func() {
			done, _ := a.admit(ctx, time.Minute)
			first <- done
		}()
		waitFor(t, "first waiter", func() bool { return a.queued() == 1 })
		second := make(chan bool, 1)
		go func() {
			done, ok := a.admit(t.Context(), time.Minute)
			if ok {
				done()
			}
			second <- ok
		}()
		waitFor(t, "second waiter", func() bool { return a.queued() == 2 })
		pending.Store(0)
		cancel()
		a.wake() // room for one: it goes to the first, which is leaving
		if done := <-first; done != nil {
			done() // it saw the room before the cancel and finishes normally
		}
		if !<-second {
			t.Fatal("the second waiter never got the room")
		}
		if a.granted != 0 || a.queued() != 0 {
			t.Fatalf("granted %d, queued %d after all finished; want 0, 0", a.granted, a.queued())
		}
	}
}
