package memory

import (
	"context"
	"strconv"
	"sync"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// DLQ keeps dead letters in process memory: with the memory broker nothing
// survives a restart anyway, and the startup log says so.
type DLQ struct {
	mu      sync.Mutex
	next    int
	entries map[string][]*backend.DeadLetter
}

// NewDLQ returns an empty DLQ.
func NewDLQ() *DLQ { return &DLQ{entries: map[string][]*backend.DeadLetter{}} }

// Add stores d with the next id.
func (q *DLQ) Add(_ context.Context, d *backend.DeadLetter) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.next++
	d.ID = strconv.Itoa(q.next)
	q.entries[d.Sink] = append(q.entries[d.Sink], d)
	return nil
}

// List returns up to limit entries, oldest first.
func (q *DLQ) List(_ context.Context, sink string, limit int) ([]*backend.DeadLetter, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	es := q.entries[sink]
	if limit > 0 && len(es) > limit {
		es = es[:limit]
	}
	return append([]*backend.DeadLetter(nil), es...), nil
}

// Take removes and returns the entries with ids, or all.
func (q *DLQ) Take(_ context.Context, sink string, ids []string) ([]*backend.DeadLetter, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	var taken, kept []*backend.DeadLetter
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

// Len is the number of entries of sink.
func (q *DLQ) Len(_ context.Context, sink string) (int64, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return int64(len(q.entries[sink])), nil
}

var _ backend.DLQ = (*DLQ)(nil)
