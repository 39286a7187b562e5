package pipeline

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/labelpipe/labelpipe/pipeline/backend"
	"github.com/labelpipe/labelpipe/pipeline/resilience"
)

// openBackends are the backends a pipeline opened, the broker's first.
type openBackends struct {
	kinds  []string
	byKind map[string]backend.Backend
}

// openBackends opens every registered backend the config configures and
// takes the broker, DLQ and ledger from the one broker.type names. A
// preview opens in-process backends only and uses one of them for
// everything.
func (p *Pipeline) openBackends() error {
	reg := p.opts.Registry
	p.backends.byKind = map[string]backend.Backend{}
	brokerKind := p.cfg.Broker.Type
	if p.offline {
		brokerKind = inProcessKind(reg)
	}
	kinds := append([]string{brokerKind}, slices.DeleteFunc(reg.BackendTypes(), func(k string) bool { return k == brokerKind })...)
	env := BackendEnv{
		Config:         p.cfg,
		TracerProvider: p.opts.TracerProvider,
		MeterProvider:  p.opts.MeterProvider,
		ReplicaID:      p.opts.ReplicaID,
	}
	for _, kind := range kinds {
		t, ok := reg.Backend(kind)
		if !ok || (p.offline && !t.InProcess) || (t.Configured != nil && !t.Configured(p.cfg)) {
			continue
		}
		env.Logger = p.log.With("backend", kind)
		env.Watermill = newWatermillLogger(env.Logger.With("component", "watermill"))
		b, err := t.Open(context.Background(), env)
		if err != nil {
			return fmt.Errorf("backend %s: %w", kind, err)
		}
		p.backends.kinds = append(p.backends.kinds, kind)
		p.backends.byKind[kind] = b
	}
	b, ok := p.backends.byKind[brokerKind]
	if !ok {
		return fmt.Errorf("broker.type %s: %w", brokerKind, notConfigured(reg, brokerKind))
	}
	var err error
	if p.broker, err = b.Broker(); err != nil {
		return fmt.Errorf("broker %s: %w", brokerKind, err)
	}
	p.dlq, p.ledger = b.DLQ(), b.Ledger()
	p.openHistory(b)
	p.system = p.broker.Info().System
	return nil
}

// inProcessKind is the first registered in-process backend, "" if none.
func inProcessKind(reg *Registry) string {
	for _, k := range reg.BackendTypes() {
		if t, _ := reg.Backend(k); t.InProcess {
			return k
		}
	}
	return ""
}

func notConfigured(reg *Registry, kind string) error {
	t, ok := reg.Backend(kind)
	switch {
	case !ok:
		return fmt.Errorf("unknown backend %q (known: %v)", kind, reg.BackendTypes())
	case t.Needs != "":
		return fmt.Errorf("backend %s needs %s in the config", kind, t.Needs)
	}
	return fmt.Errorf("backend %s is not configured", kind)
}

// dedupeStore is Env.DedupeStore: a store on an open backend, or on the
// in-process one in a preview.
func (p *Pipeline) dedupeStore(kind, prefix string, ttl, hold time.Duration) (backend.DedupeStore, error) {
	if p.offline {
		kind = p.backends.kinds[0]
	}
	b, ok := p.backends.byKind[kind]
	if !ok {
		return nil, notConfigured(p.opts.Registry, kind)
	}
	return b.DedupeStore(prefix, ttl, hold)
}

// breakerStore is the first shared breaker store an open backend offers,
// the broker's first; nil keeps each breaker in this process.
func (b *openBackends) breakerStore() gobreaker.SharedDataStore {
	for _, k := range b.kinds {
		if s := b.byKind[k].BreakerStore(); s != nil {
			return s
		}
	}
	return nil
}

// pauseStore is the broker's backend's shared pause store, when it has
// one: pauses follow the queues. nil keeps them in this process.
func (b *openBackends) pauseStore() backend.PauseStore {
	if ps, ok := brokerBackendAs[backend.Pauser](b); ok {
		return ps.PauseStore()
	}
	return nil
}

// sessionStore is the broker's backend's shared console session store,
// when it has one, like pauseStore. nil keeps them in this process.
func (b *openBackends) sessionStore() backend.SessionStore {
	if ss, ok := brokerBackendAs[backend.SessionKeeper](b); ok {
		return ss.SessionStore()
	}
	return nil
}

// brokerBackendAs is the broker's backend (the first opened) as a T.
func brokerBackendAs[T any](b *openBackends) (T, bool) {
	var zero T
	if len(b.kinds) == 0 {
		return zero, false
	}
	t, ok := b.byKind[b.kinds[0]].(T)
	return t, ok
}

// rateLimiter is the first shared rate limiter an open backend offers
// (redis); nil keeps every rate limit in this process.
func (b *openBackends) rateLimiter() resilience.SharedLimiter {
	for _, k := range b.kinds {
		if l, ok := b.byKind[k].(interface {
			SharedLimiter() resilience.SharedLimiter
		}); ok {
			if sl := l.SharedLimiter(); sl != nil {
				return sl
			}
		}
	}
	return nil
}

func (b *openBackends) close() error {
	var errs []error
	for _, k := range slices.Backward(b.kinds) {
		errs = append(errs, b.byKind[k].Close())
	}
	return errors.Join(errs...)
}

// sinkQueue reports a sink's queue as the broker sees it.
func (p *Pipeline) sinkQueue(ctx context.Context, s *builtSink) backend.QueueStat {
	st, err := p.broker.QueueStats(ctx, s.topic, backend.SinkGroup(s.cfg.Name))
	if err != nil {
		p.log.DebugContext(ctx, "queue stats unavailable", "sink", s.cfg.Name, "err", err)
	}
	return st
}

func (p *Pipeline) dlqLen(ctx context.Context, sink string) int64 {
	if p.dlq == nil {
		return 0
	}
	n, err := p.dlq.Len(ctx, sink)
	if err != nil {
		return 0
	}
	return n
}
