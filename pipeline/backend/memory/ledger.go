package memory

import (
	"context"
	"sync"
	"time"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// Ledger keeps delivery records in process memory for ttl.
type Ledger struct {
	mu   sync.Mutex
	ttl  time.Duration
	seen map[backend.DeliveryKey]time.Time
	// tries holds the retry progress of requests not yet delivered; it is
	// dropped when they are, and expires with the same ttl.
	tries map[backend.DeliveryKey]progress
	// earliest is no later than the first expiry in seen: before it a
	// sweep would delete nothing, so none is made.
	earliest time.Time
}

// NewLedger returns an empty ledger keeping records for ttl.
func NewLedger(ttl time.Duration) *Ledger {
	return &Ledger{ttl: ttl, seen: map[backend.DeliveryKey]time.Time{}, tries: map[backend.DeliveryKey]progress{}}
}

type progress struct {
	backend.DeliveryRecord
	expires time.Time
}

// Lookup returns key's record.
func (l *Ledger) Lookup(_ context.Context, key backend.DeliveryKey) (backend.DeliveryRecord, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if exp, ok := l.seen[key]; ok {
		if now.After(exp) {
			delete(l.seen, key)
		} else {
			return backend.DeliveryRecord{Delivered: true}, nil
		}
	}
	if p, ok := l.tries[key]; ok {
		if now.After(p.expires) {
			delete(l.tries, key)
		} else {
			return p.DeliveryRecord, nil
		}
	}
	return backend.DeliveryRecord{}, nil
}

// SaveAttempts records key's retry progress.
func (l *Ledger) SaveAttempts(_ context.Context, key backend.DeliveryKey, r backend.DeliveryRecord) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	r.Delivered = false
	l.tries[key] = progress{DeliveryRecord: r, expires: time.Now().Add(l.ttl)}
	return nil
}

// Record marks key delivered.
func (l *Ledger) Record(_ context.Context, key backend.DeliveryKey) error {
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
	delete(l.tries, key)
	return nil
}

var _ backend.Ledger = (*Ledger)(nil)
