package resilience_test

import (
	"context"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/labelpipe/labelpipe/pipeline/resilience"
)

// Reset closes an open breaker at once, with its counts forgotten, and a
// caller waiting for the open period is let through; a shared breaker's
// state in the store says closed, for every replica.
func TestResetClosesAnOpenBreaker(t *testing.T) {
	c := fastConfig()
	c.Retry.MaxAttempts = 1
	c.Breaker = resilience.Breaker{ConsecutiveFailures: 2, OpenTimeout: time.Hour}
	trip := func(t *testing.T, p *resilience.Policy) {
		for range 2 {
			_, _ = p.Do(t.Context(), func(context.Context, resilience.Attempt) error { return errRetry })
		}
		if st := p.State(); st != gobreaker.StateOpen {
			t.Fatalf("state after 2 failures = %v, want open", st)
		}
	}
	waiter := func(t *testing.T, p *resilience.Policy) chan int {
		done := make(chan int, 1)
		go func() {
			n, _ := p.Do(t.Context(), func(context.Context, resilience.Attempt) error { return nil })
			done <- n
		}()
		return done
	}
	check := func(t *testing.T, p *resilience.Policy, done chan int) {
		t.Helper()
		from, err := p.Reset(t.Context())
		if err != nil || from != gobreaker.StateOpen {
			t.Fatalf("Reset = %v, %v; want from open", from, err)
		}
		if st := p.State(); st != gobreaker.StateClosed {
			t.Fatalf("state after Reset = %v, want closed", st)
		}
		select {
		case n := <-done:
			if n != 1 {
				t.Errorf("the waiting call made %d attempts, want 1", n)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the call waiting for the open breaker (open_timeout 1h) was not let through by Reset")
		}
		// The counts were forgotten: one more failure does not re-open it.
		_, _ = p.Do(t.Context(), func(context.Context, resilience.Attempt) error { return errRetry })
		if st := p.State(); st != gobreaker.StateClosed {
			t.Errorf("state after one failure following Reset = %v, want closed", st)
		}
	}

	t.Run("local", func(t *testing.T) {
		ch, onChange := transitions()
		p := newPolicy(t, c, resilience.Options{Name: "labelbox", OnStateChange: onChange})
		trip(t, p)
		expectTransitions(t, ch, "closed->open")
		check(t, p, waiter(t, p))
		expectTransitions(t, ch, "open->closed")
	})
	for _, be := range backends {
		t.Run("shared/"+be.name, func(t *testing.T) {
			ps, cs := replicas(t, c, be.start(t), resilience.Options{}, resilience.Options{})
			trip(t, ps[0])
			check(t, ps[0], waiter(t, ps[0]))
			if st := sharedState(t, cs[0]); st.State != gobreaker.StateClosed || st.Counts.ConsecutiveFailures > 1 {
				t.Errorf("shared state after Reset = %v %+v, want closed with at most the one failure since", st.State, st.Counts)
			}
		})
	}
}
