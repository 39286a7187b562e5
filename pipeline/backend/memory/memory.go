// Package memory is the in-process backend: watermill's gochannel as the
// broker, and the DLQ, delivery ledger and dedupe store in this process's
// memory. It needs no setup and is the default, but it is not durable:
// exports accepted and not yet delivered are lost if the process dies, and
// it says so at start. Use the redis backend in production.
package memory

import (
	"context"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/sony/gobreaker/v2"

	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// Kind is the name the memory backend is registered under.
const Kind = "memory"

// Type is the memory backend as a registered kind. It is always open, and a
// preview uses it in place of every other kind.
var Type = pipeline.BackendType{
	Doc:       "in-process broker, DLQ, ledger and dedupe store; not durable",
	InProcess: true,
	Open: func(_ context.Context, env pipeline.BackendEnv) (backend.Backend, error) {
		return New(Config{MaxPending: env.Config.Broker.MaxPending}, env.Watermill), nil
	},
}

// Config tunes the memory backend.
type Config struct {
	// MaxPending bounds the exports waiting for the fan-out, and makes
	// Admit wait when every sink has that many requests waiting;
	// broker.max_pending, default 128. Each sink's queue is bounded by the
	// engine (the sink's queue: settings).
	MaxPending int64
}

// Backend is the in-process backend.
type Backend struct {
	cfg    Config
	logger watermill.LoggerAdapter
	dlq    *DLQ
	ledger *Ledger

	mu      sync.Mutex
	broker  *Broker
	history *History
}

// New returns an empty backend; logger may be nil.
func New(cfg Config, logger watermill.LoggerAdapter) *Backend {
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 128
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	return &Backend{cfg: cfg, logger: logger, dlq: NewDLQ(), ledger: NewLedger(backend.LedgerTTL)}
}

// Broker returns the gochannel broker, made on the first call.
func (b *Backend) Broker() (backend.Broker, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.broker == nil {
		b.broker = NewBroker(b.cfg.MaxPending, b.logger)
	}
	return b.broker, nil
}

// DLQ keeps dead letters until the process ends.
func (b *Backend) DLQ() backend.DLQ { return b.dlq }

// Ledger keeps delivery records until they expire or the process ends.
func (b *Backend) Ledger() backend.Ledger { return b.ledger }

// DedupeStore returns a new, empty store: memory stores are per process,
// and each stage keeps its own.
func (b *Backend) DedupeStore(_ string, ttl, hold time.Duration) (backend.DedupeStore, error) {
	return NewDedupeStore(ttl, hold), nil
}

// BreakerStore is nil: each process keeps its own breaker state.
func (b *Backend) BreakerStore() gobreaker.SharedDataStore { return nil }

// Close closes the broker, if one was made.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.broker == nil {
		return nil
	}
	return b.broker.Close()
}

var _ backend.Backend = (*Backend)(nil)

// History returns the backend's export history, made on the first call
// with these bounds.
func (b *Backend) History(maxExports int, ttl time.Duration) backend.History {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.history == nil {
		b.history = NewHistory(maxExports, ttl)
	}
	return b.history
}
