// Package redis is the durable backend: watermill-redisstream consumer
// groups as the broker, and the DLQ, delivery ledger, dedupe store and
// shared circuit-breaker store in the same Redis, on one shared client.
// Several replicas share one Redis and split the work; a dead replica's
// pending messages are claimed by the living ones after claim_idle.
//
// Keys start with redis.key_prefix (streams with broker.prefix); see each
// type for its keys.
package redis

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	goredis "github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"

	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/backend"
	"github.com/labelpipe/labelpipe/pipeline/resilience"
)

// Kind is the name the redis backend is registered under.
const Kind = "redis"

// Type is the redis backend as a registered kind. It opens when the config
// sets redis.url; the client connects lazily, so a Redis that is down at
// start makes the daemon not ready rather than unable to start.
var Type = pipeline.BackendType{
	Doc:        "Redis streams broker, DLQ, ledger, dedupe and breaker stores; durable, shared by replicas",
	Configured: func(cfg *pipeline.Config) bool { return cfg.Redis.URL != "" },
	Needs:      "redis.url",
	Open: func(ctx context.Context, env pipeline.BackendEnv) (backend.Backend, error) {
		client, err := NewClient(ctx, env.Config.Redis, env.TracerProvider, env.MeterProvider, env.Logger)
		if err != nil {
			return nil, err
		}
		return New(client, true, Config{Broker: env.Config.Broker, KeyPrefix: env.Config.Redis.KeyPrefix,
			ReplicaID: env.ReplicaID, Logger: env.Watermill}), nil
	},
}

// Config is what the backend needs besides its client.
type Config struct {
	// Broker is the broker section: stream prefix, claim_idle, max_len.
	Broker pipeline.BrokerConfig
	// KeyPrefix starts the keys of the DLQ, ledger and breaker store
	// (redis.key_prefix, default "labelpipe:").
	KeyPrefix string
	// ReplicaID names this process's consumers; it must differ between
	// processes sharing the Redis.
	ReplicaID string
	// Logger receives the broker's logs; nil discards them.
	Logger watermill.LoggerAdapter
}

func (c Config) withDefaults() Config {
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
	return c
}

// Backend is the redis backend on one client.
type Backend struct {
	client goredis.UniversalClient
	owns   bool
	cfg    Config

	mu        sync.Mutex
	broker    *Broker
	histories []*History // batched: Close flushes them before closing the client
	closed    bool
}

// New returns a backend on client; owns says Close closes the client too.
func New(client goredis.UniversalClient, owns bool, cfg Config) *Backend {
	return &Backend{client: client, owns: owns, cfg: cfg.withDefaults()}
}

// Client is the backend's shared client.
func (b *Backend) Client() goredis.UniversalClient { return b.client }

// Broker opens the streams broker on the first call.
func (b *Backend) Broker() (backend.Broker, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, errors.New("redis backend: closed")
	}
	if b.broker == nil {
		if err := b.checkDurability(); err != nil {
			return nil, err
		}
		br, err := NewBroker(b.client, b.cfg.Broker, b.cfg.ReplicaID, b.cfg.Logger)
		if err != nil {
			return nil, err
		}
		b.broker = br
	}
	return b.broker, nil
}

// checkDurability says at start whether Redis could lose accepted work,
// and with broker.require_persistence refuses to start when it could, or
// when that cannot be told. A Redis that is down only makes the daemon not
// ready, unless persistence is required.
func (b *Backend) checkDurability() error {
	ctx, cancel := context.WithTimeout(quiet(context.Background()), startPingTimeout)
	defer cancel()
	require := b.cfg.Broker.RequirePersistence
	d, err := CheckDurability(ctx, b.client)
	if err != nil {
		if require {
			return fmt.Errorf("broker.require_persistence: cannot read redis persistence settings: %w", err)
		}
		b.cfg.Logger.Info("cannot check redis persistence yet; /readyz reports it once redis answers", watermill.LogFields{"err": err.Error()})
		return nil
	}
	risks := d.Risks()
	if len(risks) > 0 && require {
		return fmt.Errorf("broker.require_persistence: %s", strings.Join(risks, "; "))
	}
	for _, r := range risks {
		b.cfg.Logger.Error("accepted exports could be lost", errors.New(r), nil)
	}
	return nil
}

// DLQ keeps dead letters in one stream per sink.
func (b *Backend) DLQ() backend.DLQ { return NewDLQ(b.client, b.cfg.KeyPrefix) }

// Ledger keeps one key per delivered request for backend.LedgerTTL.
func (b *Backend) Ledger() backend.Ledger {
	return NewLedger(b.client, b.cfg.KeyPrefix, backend.LedgerTTL)
}

// DedupeStore keeps keys as prefix+key, shared by every replica.
func (b *Backend) DedupeStore(prefix string, ttl, hold time.Duration) (backend.DedupeStore, error) {
	return NewDedupeStore(b.client, prefix, ttl, hold), nil
}

// BreakerStore shares each sink's breaker state between replicas.
func (b *Backend) BreakerStore() gobreaker.SharedDataStore {
	return NewBreakerStore(b.client, b.cfg.KeyPrefix)
}

// SharedLimiter shares sinks' rate limits (rate_limit.shared) between
// the replicas on this Redis.
func (b *Backend) SharedLimiter() resilience.SharedLimiter {
	return NewRateLimiter(b.client, b.cfg.KeyPrefix)
}

// Close closes the broker, then the client if the backend owns it.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	var errs []error
	if b.broker != nil {
		errs = append(errs, b.broker.Close())
	}
	for _, h := range b.histories {
		errs = append(errs, h.Close())
	}
	if b.owns {
		errs = append(errs, b.client.Close())
	}
	return errors.Join(errs...)
}

var _ backend.Backend = (*Backend)(nil)

// History keeps the export history in this Redis, shared by every replica.
// Its Adds are written in batches by a background writer (see
// NewBatchedHistory) that Close flushes before closing the client.
func (b *Backend) History(maxExports int, ttl time.Duration) backend.History {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return NewHistory(b.client, b.cfg.KeyPrefix, maxExports, ttl)
	}
	h := NewBatchedHistory(b.client, b.cfg.KeyPrefix, maxExports, ttl)
	b.histories = append(b.histories, h)
	return h
}
