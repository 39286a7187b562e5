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
	// earliest is no later than the first expiry in seen: before it a
	// sweep would delete nothing, so none is made.
	earliest time.Time
}

// NewLedger returns an empty ledger keeping records for ttl.
func NewLedger(ttl time.Duration) *Ledger {
	return &Ledger{ttl: ttl, seen: map[backend.DeliveryKey]time.Time{}}
}

// Delivered reports whether key was recorded and has not expired.
func (l *Ledger) Delivered(_ context.Context, key backend.DeliveryKey) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	exp, ok := l.seen[key]
	if ok && time.Now().After(exp) {
		delete(l.seen, key)
		return false, nil
	}
	return ok, nil
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
	return nil
}

var _ backend.Ledger = (*Ledger)(nil)
