package pipeline

import (
	"context"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
)

// newRedisClientFor builds the shared Redis client from the config, traced
// with the injected providers.
func newRedisClientFor(p *Pipeline) (redis.UniversalClient, error) {
	return NewRedisClient(context.Background(), p.cfg.Redis, p.opts.TracerProvider, p.opts.MeterProvider, p.log.With("component", "redis"))
}

// openRedisBackends opens the durable broker, DLQ and ledger on the shared
// client.
func openRedisBackends(p *Pipeline, wlog watermill.LoggerAdapter) (Broker, DLQ, Ledger, error) {
	b, err := NewRedisBroker(p.redis, p.cfg.Broker, p.opts.ReplicaID, wlog)
	if err != nil {
		return nil, nil, nil, err
	}
	prefix := p.cfg.Redis.KeyPrefix
	return b, NewRedisDLQ(p.redis, prefix), NewRedisLedger(p.redis, prefix, ledgerTTL), nil
}

// breakerStore shares breaker state across replicas when Redis is there.
func (p *Pipeline) breakerStore() gobreaker.SharedDataStore {
	if p.redis == nil {
		return nil
	}
	return NewRedisBreakerStore(p.redis, p.cfg.Redis.KeyPrefix)
}
