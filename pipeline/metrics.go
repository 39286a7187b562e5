package pipeline

import (
	"context"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// instruments are the pipeline's own metrics. Names follow the OTel
// convention (dotted, unit suffix in the unit, not the name); the
// Prometheus exporter turns them into labelpipe_webhook_requests_total etc.
type instruments struct {
	requests   metric.Int64Counter
	stageDur   metric.Float64Histogram
	deliveries metric.Int64Counter
	attempts   metric.Int64Counter
	retries    metric.Int64Counter
	e2e        metric.Float64Histogram
	queueFull  metric.Int64Counter

	// opts caches one measurement option per attribute set: building a set
	// sorts and copies its attributes, which every export did several
	// times over before.
	optMu sync.RWMutex
	opts  map[attrKey]metric.MeasurementOption
}

// attrKey names an attribute set of at most two string attributes, or
// the request counter's (status, answer) when status is set.
type attrKey struct {
	k1, v1, k2, v2 string
	status         int
}

// with returns the measurement option for {k1: v1, k2: v2}; k2 "" leaves
// the second attribute out.
func (in *instruments) with(k1, v1, k2, v2 string) metric.MeasurementOption {
	return in.opt(attrKey{k1: k1, v1: v1, k2: k2, v2: v2})
}

// withStatus returns the option for a webhook answer.
func (in *instruments) withStatus(status int, answer string) metric.MeasurementOption {
	return in.opt(attrKey{k2: "answer", v2: answer, status: status})
}

func (in *instruments) opt(k attrKey) metric.MeasurementOption {
	in.optMu.RLock()
	o, ok := in.opts[k]
	in.optMu.RUnlock()
	if ok {
		return o
	}
	kv := make([]attribute.KeyValue, 0, 2)
	if k.status != 0 {
		kv = append(kv, attribute.Int("status", k.status))
	} else {
		kv = append(kv, attribute.String(k.k1, k.v1))
	}
	if k.k2 != "" {
		kv = append(kv, attribute.String(k.k2, k.v2))
	}
	o = metric.WithAttributeSet(attribute.NewSet(kv...))
	in.optMu.Lock()
	in.opts[k] = o
	in.optMu.Unlock()
	return o
}

// newInstruments makes the pipeline's instruments; the gauges observe the
// built sinks.
func newInstruments(mp metric.MeterProvider, sinks func() []*builtSink, bodies *bodyBudget, dlqLen func(ctx context.Context, sink string) int64,
	queue func(ctx context.Context, s *builtSink) backend.QueueStat) (*instruments, error) {
	m := mp.Meter("github.com/labelpipe/labelpipe/pipeline")
	in := &instruments{opts: map[attrKey]metric.MeasurementOption{}}
	var err error
	must := func(e error) {
		if err == nil {
			err = e
		}
	}
	var e error
	in.requests, e = m.Int64Counter("labelpipe.webhook.requests", metric.WithDescription("Webhook requests by answer status."))
	must(e)
	in.stageDur, e = m.Float64Histogram("labelpipe.stage.duration", metric.WithUnit("s"), metric.WithDescription("Time spent in one ingress stage."))
	must(e)
	in.deliveries, e = m.Int64Counter("labelpipe.sink.deliveries", metric.WithDescription("Requests finished by sink and outcome (delivered, skipped, dead_lettered)."))
	must(e)
	in.attempts, e = m.Int64Counter("labelpipe.sink.attempts", metric.WithDescription("Delivery attempts by sink and result."))
	must(e)
	in.retries, e = m.Int64Counter("labelpipe.sink.retries", metric.WithDescription("Attempts after the first, by sink."))
	must(e)
	in.e2e, e = m.Float64Histogram("labelpipe.sink.delivery_latency", metric.WithUnit("s"), metric.WithDescription("Time from webhook accepted to request delivered."))
	must(e)
	in.queueFull, e = m.Int64Counter("labelpipe.sink.queue.full",
		metric.WithDescription("Requests that found their sink's queue full, by sink and action (dead_letter, backpressure)."))
	must(e)
	depth, e := m.Int64ObservableGauge("labelpipe.sink.queue_depth",
		metric.WithDescription("Requests queued for the sink and not finished (across replicas on Redis)."))
	must(e)
	oldest, e := m.Float64ObservableGauge("labelpipe.sink.oldest_pending_age", metric.WithUnit("s"),
		metric.WithDescription("Age of the oldest request queued for the sink and not finished."))
	must(e)
	if e == nil {
		_, e = m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
			for _, s := range sinks() {
				st := queue(ctx, s)
				attrs := metric.WithAttributes(attribute.String("sink", s.cfg.Name))
				o.ObserveInt64(depth, st.Depth, attrs)
				age := 0.0
				if !st.Oldest.IsZero() {
					age = time.Since(st.Oldest).Seconds()
				}
				o.ObserveFloat64(oldest, age, attrs)
			}
			return nil
		}, depth, oldest)
		must(e)
	}
	_, e = m.Int64ObservableGauge("labelpipe.webhook.body.inflight", metric.WithUnit("By"),
		metric.WithDescription("Body bytes reserved by requests being read and checked, by pool: verified (server.max_inflight_bytes) or unverified (server.unverified)."),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(bodies.inflight.verified.Load(), metric.WithAttributes(attribute.String("pool", "verified")))
			o.Observe(bodies.inflight.unverified.Load(), metric.WithAttributes(attribute.String("pool", "unverified")))
			return nil
		}))
	must(e)
	_, e = m.Int64ObservableGauge("labelpipe.sink.breaker_state",
		metric.WithDescription("Circuit breaker state: 0 closed, 1 half-open, 2 open."),
		// The policy's state, as /api/sinks shows it: with a shared breaker
		// that is the shared state, which another replica or this one
		// before a restart may have moved; the transitions this process
		// made itself would say closed after a restart.
		metric.WithInt64Callback(func(ctx context.Context, o metric.Int64Observer) error {
			for _, s := range sinks() {
				o.Observe(breakerGauge(s.cur().policy.StateContext(ctx)), metric.WithAttributes(attribute.String("sink", s.cfg.Name)))
			}
			return nil
		}))
	must(e)
	_, e = m.Int64ObservableGauge("labelpipe.sink.dlq_size",
		metric.WithDescription("Entries in the sink's dead-letter queue."),
		metric.WithInt64Callback(func(ctx context.Context, o metric.Int64Observer) error {
			for _, s := range sinks() {
				o.Observe(dlqLen(ctx, s.cfg.Name), metric.WithAttributes(attribute.String("sink", s.cfg.Name)))
			}
			return nil
		}))
	must(e)
	return in, err
}

// breakerGauge is the gauge's value for a breaker state: gobreaker numbers
// them closed 0, half-open 1, open 2, as the gauge's description says.
func breakerGauge(state gobreaker.State) int64 { return int64(state) }
