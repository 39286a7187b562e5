package redis

import (
	"context"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// Ledger keeps one key per delivered request (backend.DeliveryKey),
// <prefix>delivered:<key>, shared by all replicas, expiring after ttl.
type Ledger struct {
	client goredis.UniversalClient
	prefix string
	ttl    time.Duration
}

// NewLedger remembers deliveries for ttl; ttl ≤ 0 keeps them forever.
func NewLedger(client goredis.UniversalClient, prefix string, ttl time.Duration) *Ledger {
	return &Ledger{client: client, prefix: prefix + "delivered:", ttl: max(ttl, 0)}
}

func (l *Ledger) Delivered(ctx context.Context, key backend.DeliveryKey) (bool, error) {
	n, err := l.client.Exists(ctx, l.prefix+key.String()).Result()
	if err != nil {
		return false, fmt.Errorf("ledger: %w", err)
	}
	return n == 1, nil
}

func (l *Ledger) Record(ctx context.Context, key backend.DeliveryKey) error {
	if err := l.client.Set(ctx, l.prefix+key.String(), 1, l.ttl).Err(); err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	return nil
}

var _ backend.Ledger = (*Ledger)(nil)
