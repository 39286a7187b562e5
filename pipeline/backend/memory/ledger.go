package memory

import (
	"context"
	"maps"
	"sync"
	"time"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// Ledger keeps delivery records in process memory for ttl.
type Ledger struct {
	mu  sync.Mutex
	ttl time.Duration
	// seen holds the delivered requests until their expiry.
	seen map[backend.DeliveryKey]delivered
	// tries holds the retry progress of requests not yet delivered; it is
	// dropped when they are, and expires with the same ttl.
	tries map[backend.DeliveryKey]progress
	// steps holds the checkpointed steps of requests, delivered or not,
	// until ttl after the last one was saved.
	steps map[backend.DeliveryKey]stepSet
	// earliest is no later than the first expiry in seen: before it a
	// sweep would delete nothing, so none is made.
	earliest time.Time
	// leases are the requests being sent; a lease needs no renewal, it
	// holds while its holder's ctx lasts (and ttl after it was taken).
	leases map[backend.DeliveryKey]*lease
}

type delivered struct {
	expires  time.Time
	at       time.Time
	attempts int
}

type lease struct {
	ctx     context.Context
	expires time.Time
}

// NewLedger returns an empty ledger keeping records for ttl.
func NewLedger(ttl time.Duration) *Ledger {
	return &Ledger{ttl: ttl, seen: map[backend.DeliveryKey]delivered{}, tries: map[backend.DeliveryKey]progress{},
		leases: map[backend.DeliveryKey]*lease{}, steps: map[backend.DeliveryKey]stepSet{}}
}

type stepSet struct {
	values  map[string]string
	expires time.Time
}

type progress struct {
	backend.DeliveryRecord
	expires time.Time
}

// Lookup returns key's record.
func (l *Ledger) Lookup(_ context.Context, key backend.DeliveryKey) (backend.DeliveryRecord, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lookup(key, time.Now()), nil
}

// LookupMany returns the records of keys under one lock.
func (l *Ledger) LookupMany(_ context.Context, keys []backend.DeliveryKey) ([]backend.DeliveryRecord, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	out := make([]backend.DeliveryRecord, len(keys))
	for i, k := range keys {
		out[i] = l.lookup(k, now)
		if h, ok := l.leases[k]; ok && (h.ctx.Err() == nil || now.Before(h.expires)) {
			out[i].Leased = true
		}
	}
	return out, nil
}

func (l *Ledger) lookup(key backend.DeliveryKey, now time.Time) backend.DeliveryRecord {
	var r backend.DeliveryRecord
	if st, ok := l.steps[key]; ok {
		if now.After(st.expires) {
			delete(l.steps, key)
		} else {
			r.Steps = maps.Clone(st.values) // SaveStep changes the ledger's own
		}
	}
	if d, ok := l.seen[key]; ok {
		if now.After(d.expires) {
			delete(l.seen, key)
		} else {
			r.Delivered, r.Attempts, r.DeliveredAt = true, d.attempts, d.at
			return r
		}
	}
	if p, ok := l.tries[key]; ok {
		if now.After(p.expires) {
			delete(l.tries, key)
		} else {
			r.Attempts, r.Spent, r.Elapsed = p.Attempts, p.Spent, p.Elapsed
		}
	}
	return r
}

// SaveStep sets one step of key's record and renews its steps' expiry.
// Now and then it sweeps the steps past their ttl, so that the map does
// not grow without bound.
func (l *Ledger) SaveStep(_ context.Context, key backend.DeliveryKey, name, value string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if n := len(l.steps); n > 0 && n%4096 == 0 {
		for k, st := range l.steps {
			if now.After(st.expires) {
				delete(l.steps, k)
			}
		}
	}
	st, ok := l.steps[key]
	if !ok || now.After(st.expires) {
		st.values = map[string]string{}
	}
	st.values[name] = value
	st.expires = now.Add(l.ttl)
	l.steps[key] = st
	return nil
}

// SaveAttempts records key's retry progress.
func (l *Ledger) SaveAttempts(_ context.Context, key backend.DeliveryKey, r backend.DeliveryRecord) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	r.Delivered, r.Steps = false, nil
	l.tries[key] = progress{DeliveryRecord: r, expires: time.Now().Add(l.ttl)}
	return nil
}

// Record marks key delivered, with its attempts and time.
func (l *Ledger) Record(_ context.Context, key backend.DeliveryKey, r backend.DeliveryRecord) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	// Sweep now and then so the map does not grow without bound.
	if len(l.seen) > 0 && len(l.seen)%4096 == 0 && now.After(l.earliest) {
		l.earliest = time.Time{}
		for k, d := range l.seen {
			if exp := d.expires; now.After(exp) {
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
	at := r.DeliveredAt
	if at.IsZero() {
		at = now
	}
	l.seen[key] = delivered{expires: exp, at: at, attempts: r.Attempts}
	delete(l.tries, key)
	delete(l.leases, key)
	return nil
}

// Lease takes key's lease unless a holder whose ctx is alive, or whose
// ttl has not passed, has it.
func (l *Ledger) Lease(ctx context.Context, key backend.DeliveryKey, ttl time.Duration) (func(), bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if h, ok := l.leases[key]; ok && (h.ctx.Err() == nil || now.Before(h.expires)) {
		return func() {}, false, nil
	}
	h := &lease{ctx: ctx, expires: now.Add(ttl)}
	l.leases[key] = h
	return func() {
		l.mu.Lock()
		if l.leases[key] == h {
			delete(l.leases, key)
		}
		l.mu.Unlock()
	}, true, nil
}

var _ backend.Ledger = (*Ledger)(nil)
