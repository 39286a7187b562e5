package memory

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// History keeps up to max exports, for ttl, in a map and a ring of their
// ids in arrival order; the oldest goes when a new one needs its slot.
type History struct {
	max int
	ttl time.Duration
	now func() time.Time

	mu   sync.Mutex
	byID map[string]*backend.ExportEntry
	ring []string // ids in arrival order, len ≤ max
	head int      // index of the oldest id once the ring is full
}

// NewHistory keeps up to maxExports exports for ttl (≤ 0: no age bound).
func NewHistory(maxExports int, ttl time.Duration) *History {
	return &History{max: max(maxExports, 1), ttl: ttl, now: time.Now, byID: map[string]*backend.ExportEntry{}}
}

func (h *History) expired(e *backend.ExportEntry) bool {
	return h.ttl > 0 && h.now().Sub(e.ReceivedAt) > h.ttl
}

// Add stores a copy of e.
func (h *History) Add(_ context.Context, e *backend.ExportEntry) error {
	c := *e
	c.Requests = maps.Clone(e.Requests)
	c.QueuedAt = maps.Clone(e.QueuedAt)
	for k, s := range c.Requests {
		s.Events = nil // appended by SetState only
		c.Requests[k] = s
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if old, ok := h.byID[e.ID]; ok {
		for k, v := range old.Requests {
			if c.Requests == nil {
				c.Requests = map[string]backend.RequestState{}
			}
			if s, set := c.Requests[k]; set {
				s.Events = v.Events
				c.Requests[k] = s
			} else {
				c.Requests[k] = v
			}
		}
		for g, t := range old.QueuedAt {
			if _, set := c.QueuedAt[g]; !set {
				if c.QueuedAt == nil {
					c.QueuedAt = map[int]time.Time{}
				}
				c.QueuedAt[g] = t
			}
		}
		h.byID[e.ID] = &c
		return nil
	}
	if len(h.ring) < h.max {
		h.ring = append(h.ring, e.ID)
	} else {
		delete(h.byID, h.ring[h.head])
		h.ring[h.head] = e.ID
		h.head = (h.head + 1) % h.max
	}
	h.byID[e.ID] = &c
	return nil
}

// SetState sets one request's state of a kept export.
func (h *History) SetState(_ context.Context, id string, s backend.RequestState) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	e, ok := h.byID[id]
	if !ok {
		return nil
	}
	c := *e // entries handed out by Get are never changed
	c.Requests = maps.Clone(e.Requests)
	if c.Requests == nil {
		c.Requests = map[string]backend.RequestState{}
	}
	k := backend.HistoryKey(s.Sink, s.Chunk)
	evs := append(slices.Clip(c.Requests[k].Events), s.Events...) // a copy: Get's callers hold the old slice
	s.Events = evs[max(0, len(evs)-backend.MaxRequestEvents):]
	c.Requests[k] = s
	h.byID[id] = &c
	return nil
}

// Get returns the entry with id unless it expired.
func (h *History) Get(_ context.Context, id string) (*backend.ExportEntry, bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	e, ok := h.byID[id]
	if !ok || h.expired(e) {
		return nil, false, nil
	}
	return copyEntry(e), true, nil
}

// Scan walks the ring newest first.
func (h *History) Scan(ctx context.Context, since, until time.Time, fn func(*backend.ExportEntry) bool) error {
	h.mu.Lock()
	var es []*backend.ExportEntry
	n := len(h.ring)
	for i := range n {
		idx := (h.head + n - 1 - i) % n
		e := h.byID[h.ring[idx]]
		if e == nil || h.expired(e) {
			continue
		}
		if (!since.IsZero() && e.ReceivedAt.Before(since)) || (!until.IsZero() && e.ReceivedAt.After(until)) {
			continue
		}
		es = append(es, e)
	}
	h.mu.Unlock()
	for _, e := range es {
		if !fn(copyEntry(e)) {
			break
		}
	}
	return nil
}

// copyEntry is a copy of a kept entry its caller may change.
func copyEntry(e *backend.ExportEntry) *backend.ExportEntry {
	c := *e
	c.Requests = maps.Clone(e.Requests)
	for k, s := range c.Requests {
		s.Events = slices.Clone(s.Events)
		c.Requests[k] = s
	}
	c.QueuedAt = maps.Clone(e.QueuedAt)
	return &c
}

var _ backend.History = (*History)(nil)
