package resilience_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/sinks/resilience"
)

// memStore is a gobreaker.SharedDataStore in memory, standing in for Redis;
// its Lock fails fast while the lock is held, like a SET NX lock.
type memStore struct {
	mu    sync.Mutex
	locks map[string]bool
	data  map[string][]byte
}

func newMemStore() *memStore {
	return &memStore{locks: map[string]bool{}, data: map[string][]byte{}}
}

func (s *memStore) Lock(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.locks[name] {
		return errors.New("locked")
	}
	s.locks[name] = true
	return nil
}

func (s *memStore) Unlock(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.locks, name)
	return nil
}

func (s *memStore) GetData(name string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.data[name], nil
}

func (s *memStore) SetData(name string, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data[name] = append([]byte(nil), data...)
	return nil
}

func (s *memStore) forget() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.data)
}

func sharedPair(t *testing.T, c resilience.Config) (a, b *resilience.Policy, store *memStore) {
	t.Helper()
	store = newMemStore()
	a = newPolicy(t, c, resilience.Options{Name: "labelbox", Store: store})
	b = newPolicy(t, c, resilience.Options{Name: "labelbox", Store: store})
	return a, b, store
}

func TestSharedBreakerAcrossReplicas(t *testing.T) {
	const open = 150 * time.Millisecond
	c := fastConfig()
	c.Retry.MaxAttempts = 1
	c.Breaker.ConsecutiveFailures = 2
	c.Breaker.OpenTimeout = open
	a, b, _ := sharedPair(t, c)

	fail := func(context.Context, resilience.Attempt) error { return errRetry }
	_, _ = a.Do(t.Context(), fail)
	if a.State() != "closed" {
		t.Fatalf("open after one failure")
	}
	_, _ = b.Do(t.Context(), fail) // the second failure in a row, on the other replica
	opened := time.Now()
	if a.State() != "open" || b.State() != "open" {
		t.Fatalf("states a=%q b=%q, want both open", a.State(), b.State())
	}

	var probe resilience.Attempt
	var at time.Time
	if _, err := a.Do(t.Context(), func(_ context.Context, at0 resilience.Attempt) error {
		probe, at = at0, time.Now()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if at.Sub(opened) < open-5*time.Millisecond || probe.BreakerState != "half-open" {
		t.Fatalf("attempt %v after opening in %q, want a half-open probe after %v", at.Sub(opened), probe.BreakerState, open)
	}
	if a.State() != "closed" || b.State() != "closed" {
		t.Fatalf("states a=%q b=%q after a good probe, want closed", a.State(), b.State())
	}
}

func TestSharedBreakerDoesNotSerialiseAttempts(t *testing.T) {
	a, _, _ := sharedPair(t, fastConfig())
	const n = 3
	var started sync.WaitGroup
	started.Add(n)
	all := make(chan struct{})
	go func() { started.Wait(); close(all) }()
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			_, err := a.Do(t.Context(), func(ctx context.Context, _ resilience.Attempt) error {
				started.Done()
				select { // every attempt is under way at once, or none finishes
				case <-all:
					return nil
				case <-time.After(3 * time.Second):
					return errors.New("attempts were serialised")
				}
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
}

func TestSharedBreakerSurvivesLostState(t *testing.T) {
	c := fastConfig()
	c.Retry.MaxAttempts = 1
	c.Breaker.ConsecutiveFailures = 2
	a, _, store := sharedPair(t, c)
	store.forget()
	if a.State() != "closed" {
		t.Fatalf("State = %q after the store lost the state", a.State())
	}
	fail := func(context.Context, resilience.Attempt) error { return errRetry }
	_, _ = a.Do(t.Context(), fail)
	_, _ = a.Do(t.Context(), fail)
	if a.State() != "open" {
		t.Fatalf("State = %q, want the recreated breaker to open", a.State())
	}
}
