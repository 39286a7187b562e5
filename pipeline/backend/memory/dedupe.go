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
	ttl time.Duration
	now func() time.Time

	mu        sync.Mutex
	keys      map[string]memoryEntry
	nextSweep time.Time
}

type memoryEntry struct {
	id      string
	expires time.Time
}

// NewDedupeStore returns an empty store remembering keys for ttl.
func NewDedupeStore(ttl time.Duration) *DedupeStore {
	return &DedupeStore{ttl: ttl, now: time.Now, keys: map[string]memoryEntry{}}
}

// Reserve implements backend.DedupeStore.
func (s *DedupeStore) Reserve(_ context.Context, key, id string) (string, bool, error) {
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
		return e.id, false, nil
	}
	s.keys[key] = memoryEntry{id: id, expires: now.Add(s.ttl)}
	return id, true, nil
}

// Holder implements backend.DedupeStore.
func (s *DedupeStore) Holder(_ context.Context, key string) (string, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.keys[key]; ok && s.now().Before(e.expires) {
		return e.id, true, nil
	}
	return "", false, nil
}

// Release implements backend.DedupeStore.
func (s *DedupeStore) Release(_ context.Context, key, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.keys[key]; ok && e.id == id {
		delete(s.keys, key)
	}
	return nil
}

var _ backend.DedupeStore = (*DedupeStore)(nil)
