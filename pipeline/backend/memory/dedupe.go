package memory

import (
	"context"
	"sync"
	"time"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// DedupeStore keeps dedupe keys in this process's memory. Expired keys are
// never seen again and are swept out as new keys arrive, with no goroutine
// to stop. (Watermill's map repository expires only on a timer, cannot
// return the holder, cannot release a key, and leaks its timer goroutine.)
type DedupeStore struct {
	ttl, hold time.Duration
	now       func() time.Time

	mu        sync.Mutex
	keys      map[string]memoryEntry
	nextSweep time.Time
}

type memoryEntry struct {
	backend.Hold
	expires time.Time
}

// NewDedupeStore returns an empty store holding keys provisionally for
// hold, and for ttl once confirmed.
func NewDedupeStore(ttl, hold time.Duration) *DedupeStore {
	return &DedupeStore{ttl: ttl, hold: hold, now: time.Now, keys: map[string]memoryEntry{}}
}

// Reserve implements backend.DedupeStore.
func (s *DedupeStore) Reserve(_ context.Context, key, id string) (backend.Hold, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if now.After(s.nextSweep) {
		for k, e := range s.keys {
			if !now.Before(e.expires) {
				delete(s.keys, k)
			}
		}
		// Sweeping every half ttl bounds memory to about 1.5 ttl of keys.
		s.nextSweep = now.Add(max(s.ttl/2, time.Second))
	}
	if e, ok := s.keys[key]; ok && now.Before(e.expires) {
		return e.Hold, false, nil
	}
	h := backend.Hold{ID: id}
	s.keys[key] = memoryEntry{Hold: h, expires: now.Add(s.hold)}
	return h, true, nil
}

// Confirm implements backend.DedupeStore.
func (s *DedupeStore) Confirm(_ context.Context, key, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	e, ok := s.keys[key]
	if !ok || e.ID != id || !now.Before(e.expires) {
		return backend.ErrHoldLost
	}
	s.keys[key] = memoryEntry{Hold: backend.Hold{ID: id, Confirmed: true}, expires: now.Add(s.ttl)}
	return nil
}

// Holder implements backend.DedupeStore.
func (s *DedupeStore) Holder(_ context.Context, key string) (backend.Hold, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.keys[key]; ok && s.now().Before(e.expires) {
		return e.Hold, true, nil
	}
	return backend.Hold{}, false, nil
}

// Release implements backend.DedupeStore.
func (s *DedupeStore) Release(_ context.Context, key, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.keys[key]; ok && e.ID == id {
		delete(s.keys, key)
	}
	return nil
}

var _ backend.DedupeStore = (*DedupeStore)(nil)
