package pipeline

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisLedger keeps one key per delivered request,
// <prefix>delivered:<key>, shared by all replicas, expiring after ttl.
type redisLedger struct {
	client redis.UniversalClient
	prefix string
	ttl    time.Duration
}

// NewRedisLedger remembers deliveries for ttl; ttl ≤ 0 keeps them forever.
func NewRedisLedger(client redis.UniversalClient, prefix string, ttl time.Duration) Ledger {
	return &redisLedger{client: client, prefix: prefix + "delivered:", ttl: max(ttl, 0)}
}

func (l *redisLedger) Delivered(ctx context.Context, key string) (bool, error) {
	n, err := l.client.Exists(ctx, l.prefix+key).Result()
	if err != nil {
		return false, fmt.Errorf("ledger: %w", err)
	}
	return n == 1, nil
}

func (l *redisLedger) Record(ctx context.Context, key string) error {
	if err := l.client.Set(ctx, l.prefix+key, 1, l.ttl).Err(); err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	return nil
}

var _ Ledger = (*redisLedger)(nil)
