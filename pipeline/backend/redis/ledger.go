package redis

import (
	"context"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// Ledger keeps, per request (backend.DeliveryKey) and shared by all
// replicas, <prefix>attempts:<key> while it is being retried and
// <prefix>delivered:<key> once it succeeded, both expiring after ttl.
type Ledger struct {
	client goredis.UniversalClient
	prefix string // of the delivered keys
	tries  string // of the attempts keys
	ttl    time.Duration
}

// NewLedger remembers deliveries for ttl; ttl ≤ 0 keeps them forever.
func NewLedger(client goredis.UniversalClient, prefix string, ttl time.Duration) *Ledger {
	return &Ledger{client: client, prefix: prefix + "delivered:", tries: prefix + "attempts:", ttl: max(ttl, 0)}
}

// Lookup reads the delivered key and the attempts key in one round trip.
func (l *Ledger) Lookup(ctx context.Context, key backend.DeliveryKey) (backend.DeliveryRecord, error) {
	k := key.String()
	vs, err := l.client.MGet(ctx, l.prefix+k, l.tries+k).Result()
	if err != nil {
		return backend.DeliveryRecord{}, fmt.Errorf("ledger: %w", err)
	}
	var r backend.DeliveryRecord
	if vs[0] != nil {
		r.Delivered = true
		return r, nil
	}
	if s, ok := vs[1].(string); ok {
		var ms int64
		if _, err := fmt.Sscanf(s, "%d %d %d", &r.Attempts, &r.Spent, &ms); err != nil {
			return backend.DeliveryRecord{}, fmt.Errorf("ledger: attempts of %s: %q: %w", k, s, err)
		}
		r.Elapsed = time.Duration(ms) * time.Millisecond
	}
	return r, nil
}

// SaveAttempts stores "<attempts> <spent> <elapsed ms>" under
// <prefix>attempts:<key>, expiring with the delivered keys' ttl.
func (l *Ledger) SaveAttempts(ctx context.Context, key backend.DeliveryKey, r backend.DeliveryRecord) error {
	v := fmt.Sprintf("%d %d %d", r.Attempts, r.Spent, r.Elapsed.Milliseconds())
	if err := l.client.Set(ctx, l.tries+key.String(), v, l.ttl).Err(); err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	return nil
}

// Record sets the delivered key and drops the attempts key, in one round
// trip.
func (l *Ledger) Record(ctx context.Context, key backend.DeliveryKey) error {
	k := key.String()
	_, err := l.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
		p.Set(ctx, l.prefix+k, 1, l.ttl)
		p.Del(ctx, l.tries+k)
		return nil
	})
	if err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	return nil
}

var _ backend.Ledger = (*Ledger)(nil)
