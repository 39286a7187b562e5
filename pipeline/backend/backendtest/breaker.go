package backendtest

import (
	"bytes"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"
)

// TestBreakerStore checks BreakerStore: nil unless Features.BreakerStore;
// otherwise GetData of an unknown name is empty, SetData/GetData round-trip
// (an overwrite included) and are seen by another store of the backend
// (and, with SharedAcrossInstances, of another backend on the same
// storage), and Lock excludes another store's Lock of the same name until
// Unlock. Names are the ones gobreaker uses.
func TestBreakerStore(t *testing.T, f Features, newBackend Constructor, reopen Reopener) {
	checkSetup(t, f, newBackend, reopen)
	b := newBackend(t)
	s1 := b.BreakerStore()
	if !f.BreakerStore {
		if s1 != nil {
			t.Fatalf("BreakerStore() = %T, want nil (Features.BreakerStore is false)", s1)
		}
		return
	}
	if s1 == nil {
		t.Fatal("BreakerStore() is nil (Features.BreakerStore is true)")
	}
	s2 := b.BreakerStore()
	if f.SharedAcrossInstances {
		s2 = reopen(t, b).BreakerStore()
		if s2 == nil {
			t.Fatal("BreakerStore() of the reopened backend is nil")
		}
	}
	const state, mutex = "gobreaker:state:scale", "gobreaker:mutex:scale"

	t.Run("Data", func(t *testing.T) {
		if data, err := s1.GetData(state); err != nil || len(data) != 0 {
			t.Fatalf("GetData of an unknown name = %q, %v; want empty, nil", data, err)
		}
		for _, want := range [][]byte{[]byte(`{"state":2,"generation":1}`), []byte("\x00\xffbinary")} {
			if err := s1.SetData(state, want); err != nil {
				t.Fatalf("SetData: %v", err)
			}
			for i, s := range []gobreaker.SharedDataStore{s1, s2} {
				got, err := s.GetData(state)
				if err != nil {
					t.Fatalf("GetData (store %d): %v", i+1, err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("GetData (store %d) = %q, want %q", i+1, got, want)
				}
			}
		}
	})

	t.Run("Lock", func(t *testing.T) {
		if err := s1.Lock(mutex); err != nil {
			t.Fatalf("Lock: %v", err)
		}
		// A second holder must not get in while the first has it. It may
		// give up (gobreaker retries); it must not succeed.
		second := make(chan error, 1)
		go func() { second <- s2.Lock(mutex) }()
		timer := time.NewTimer(f.settle())
		select {
		case err := <-second:
			if err == nil {
				t.Fatal("a second store locked a name the first holds")
			}
			second <- err
		case <-timer.C:
		}
		timer.Stop()
		if err := s1.Unlock(mutex); err != nil {
			t.Fatalf("Unlock: %v", err)
		}
		wait := time.NewTimer(waitTimeout)
		defer wait.Stop()
		select {
		case err := <-second:
			if err != nil { // it gave up before the Unlock: the lock is free now
				if err := s2.Lock(mutex); err != nil {
					t.Fatalf("Lock after Unlock: %v", err)
				}
			}
		case <-wait.C:
			t.Fatalf("second Lock still waiting %s after Unlock", waitTimeout)
		}
		if err := s2.Unlock(mutex); err != nil {
			t.Fatalf("Unlock of the second store: %v", err)
		}
		if err := s1.Lock(mutex); err != nil {
			t.Fatalf("Lock after both unlocked: %v", err)
		}
		if err := s1.Unlock(mutex); err != nil {
			t.Fatalf("Unlock: %v", err)
		}
	})
}
