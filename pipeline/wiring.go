package pipeline

import (
	"errors"
	"fmt"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
)

// newRedisClientFor builds the shared Redis client from the config.
func newRedisClientFor(p *Pipeline) (redis.UniversalClient, error) {
	opt, err := redis.ParseURL(p.cfg.Redis.URL)
	if err != nil {
		return nil, fmt.Errorf("redis.url: %w", err)
	}
	return redis.NewClient(opt), nil
}

// openRedisBackends opens the durable broker, DLQ and ledger.
func openRedisBackends(p *Pipeline, _ watermill.LoggerAdapter) (Broker, DLQ, Ledger, error) {
	return nil, nil, nil, errors.New("broker redis: not wired yet")
}

// breakerStore shares breaker state across replicas when Redis is there.
func (p *Pipeline) breakerStore() gobreaker.SharedDataStore { return nil }
