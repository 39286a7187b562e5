package memory

import (
	"testing"
	"time"
)

// Expired keys are swept every half ttl, so a store holds about 1.5 ttl
// of keys: a key whose hold ran out is gone after the next sweep.
func TestDedupeSweepsEveryHalfTTL(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	now := t0
	s := NewDedupeStore(10*time.Second, time.Second)
	s.now = func() time.Time { return now }
	if _, ok, err := s.Reserve(t.Context(), "a", "1"); !ok || err != nil {
		t.Fatalf("Reserve a: %v, %v", ok, err)
	}
	now = t0.Add(6 * time.Second) // a's hold expired at 1s; the next sweep was due at 5s
	if _, ok, err := s.Reserve(t.Context(), "b", "2"); !ok || err != nil {
		t.Fatalf("Reserve b: %v, %v", ok, err)
	}
	s.mu.Lock()
	_, kept := s.keys["a"]
	n := len(s.keys)
	s.mu.Unlock()
	if kept || n != 1 {
		t.Errorf("after a sweep due at ttl/2: %d keys, expired key kept: %v; want 1, false", n, kept)
	}
}
