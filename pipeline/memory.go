package pipeline

import (
	"context"
	"strconv"
	"sync"
	"time"
)

// memoryDLQ keeps dead letters in process memory: with the memory broker
// nothing survives a restart anyway, and the startup log says so.
type memoryDLQ struct {
	mu      sync.Mutex
	next    int
	entries map[string][]*DeadLetter
}

func newMemoryDLQ() *memoryDLQ { return &memoryDLQ{entries: map[string][]*DeadLetter{}} }

func (q *memoryDLQ) Add(_ context.Context, d *DeadLetter) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.next++
	d.ID = strconv.Itoa(q.next)
	q.entries[d.Sink] = append(q.entries[d.Sink], d)
	return nil
}

func (q *memoryDLQ) List(_ context.Context, sink string, limit int) ([]*DeadLetter, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	es := q.entries[sink]
	if limit > 0 && len(es) > limit {
		es = es[:limit]
	}
	return append([]*DeadLetter(nil), es...), nil
}

func (q *memoryDLQ) Take(_ context.Context, sink string, ids []string) ([]*DeadLetter, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	var taken, kept []*DeadLetter
	for _, d := range q.entries[sink] {
		if len(ids) == 0 || want[d.ID] {
			taken = append(taken, d)
		} else {
			kept = append(kept, d)
		}
	}
	q.entries[sink] = kept
	return taken, nil
}

func (q *memoryDLQ) Len(_ context.Context, sink string) (int64, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return int64(len(q.entries[sink])), nil
}

// memoryLedger remembers delivered requests for ttl.
type memoryLedger struct {
	mu   sync.Mutex
	ttl  time.Duration
	seen map[string]time.Time
	// earliest is no later than the first expiry in seen: before it a
	// sweep would delete nothing, so none is made.
	earliest time.Time
}

func newMemoryLedger(ttl time.Duration) *memoryLedger {
	return &memoryLedger{ttl: ttl, seen: map[string]time.Time{}}
}

func (l *memoryLedger) Delivered(_ context.Context, key string) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	exp, ok := l.seen[key]
	if ok && time.Now().After(exp) {
		delete(l.seen, key)
		return false, nil
	}
	return ok, nil
}

func (l *memoryLedger) Record(_ context.Context, key string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	// Sweep now and then so the map does not grow without bound.
	if len(l.seen) > 0 && len(l.seen)%4096 == 0 && now.After(l.earliest) {
		l.earliest = time.Time{}
		for k, exp := range l.seen {
			if now.After(exp) {
				delete(l.seen, k)
			} else if l.earliest.IsZero() || exp.Before(l.earliest) {
				l.earliest = exp
			}
		}
	}
	exp := now.Add(l.ttl)
	if l.earliest.IsZero() || exp.Before(l.earliest) {
		l.earliest = exp
	}
	l.seen[key] = exp
	return nil
}
