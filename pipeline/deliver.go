package pipeline

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/labelpipe/labelpipe/pipeline/backend"
	"github.com/labelpipe/labelpipe/pipeline/internal/failpoint"
	"github.com/labelpipe/labelpipe/pipeline/resilience"
)

// deliverHandler sends one sink's queued requests: ledger check, then the
// resilience policy (rate limit, breaker, retries) around each attempt,
// then the ledger record or the dead-letter queue. Once run stops (a
// reload removed the sink), a request not yet sent, or whose attempt
// under way fails, is handed back un-acked for redelivery: neither
// retried nor dead-lettered.
func (p *Pipeline) deliverHandler(s *builtSink, run *sinkRun) message.NoPublishHandlerFunc {
	return func(msg *message.Message) error {
		select {
		case s.slots <- struct{}{}:
		case <-run.ctx.Done():
			return fmt.Errorf("sink %s stopped: %w", s.cfg.Name, run.ctx.Err())
		}
		defer func() { <-s.slots }()
		ctx, span := p.consumerSpan(msg, s.topic)
		defer span.End()
		req := &Request{Sink: s.cfg.Name, ExportID: msg.Metadata.Get(backend.MetaExportID),
			ExportKey: msg.Metadata.Get(backend.MetaExportKey), Body: msg.Payload}
		req.Chunk, _ = strconv.Atoi(msg.Metadata.Get(backend.MetaChunk))
		req.Chunks, _ = strconv.Atoi(msg.Metadata.Get(backend.MetaChunks))
		req.Generation = generation(msg.Metadata)
		key := req.Key()
		if span.IsRecording() {
			span.SetAttributes(attribute.String("labelpipe.sink", s.cfg.Name), attribute.Int("labelpipe.chunk", req.Chunk),
				attribute.Int("labelpipe.chunks", req.Chunks))
		}
		finish := func(outcome string) {
			if outcome == "delivered" && p.draining.Load() {
				p.shutdown.delivered.Add(1)
			}
			p.metrics.deliveries.Add(ctx, 1, p.metrics.with("sink", s.cfg.Name, "outcome", outcome))
			if outcome == "delivered" {
				s.stats.delivered(time.Now())
			}
		}

		release, err := p.lease(ctx, s, req)
		if err != nil {
			return err
		}
		defer release()
		rec, err := p.ledger.Lookup(ctx, key)
		if err != nil {
			s.log.WarnContext(ctx, "delivery ledger unavailable; delivering anyway (at-least-once)", "export", req.ExportID, "chunk", req.Chunk, "err", err)
		} else if rec.Delivered {
			span.AddEvent("already delivered; skipped")
			finish("skipped")
			return nil
		}
		// The steps a multi-step sink checkpointed came with the Lookup;
		// Resume only points SaveStep at the ledger (no copy when none).
		req.ledger = p.ledger
		if rec.Steps != nil {
			req.steps = rec.Steps // the ledger's Lookup returned a map of our own
			if span.IsRecording() {
				span.AddEvent("resumed after checkpointed steps", trace.WithAttributes(attribute.Int("labelpipe.steps", len(rec.Steps))))
			}
		}

		if run.ctx.Err() != nil {
			span.SetStatus(codes.Error, "sink stopped")
			return fmt.Errorf("sink %s stopped before sending: %w", s.cfg.Name, run.ctx.Err())
		}
		// In flight with the sink's config of now: a reload lets it finish
		// with that one. Retries and waits end when the sink is stopped;
		// the lease and the ledger keep ctx, so that an attempt that
		// finishes after the stop is still recorded.
		rctx, cancel := context.WithCancel(ctx)
		stopWatch := context.AfterFunc(run.ctx, cancel)
		g := s.take()
		attempts, err := p.attempts(rctx, s, g, req, rec, msg)
		g.refs.drop()
		stopWatch()
		cancel()
		if span.IsRecording() {
			span.SetAttributes(attribute.Int("labelpipe.attempts", attempts))
		}
		if err == nil {
			failpoint.Hit("after-delivery") // the vendor has it; the ledger does not know yet
			// The count and time ride on the record the delivery writes
			// anyway: the history reads them from it.
			if err := p.ledger.Record(ctx, key, backend.DeliveryRecord{Attempts: attempts}); err != nil {
				s.log.WarnContext(ctx, "could not record delivery; a redelivery may repeat it", "export", req.ExportID, "err", err)
			}
			if t, ok := receivedAt(msg.Metadata); ok {
				p.metrics.e2e.Record(ctx, time.Since(t).Seconds(), p.metrics.with("sink", s.cfg.Name, "", ""))
			}
			finish("delivered")
			return nil
		}
		if p.hardStop.Err() == nil && run.ctx.Err() != nil {
			span.SetStatus(codes.Error, "sink stopped")
			s.log.InfoContext(ctx, "the sink was stopped; the request is left on the broker for redelivery", "export", req.ExportID, "chunk", req.Chunk, "err", err)
			return fmt.Errorf("delivery to %s stopped: %w", s.cfg.Name, err)
		}
		if p.hardStop.Err() != nil || errors.Is(err, context.Canceled) {
			// Shutting down: leave the request on the broker (nack) rather
			// than dead-letter a request that did nothing wrong.
			span.SetStatus(codes.Error, "interrupted by shutdown")
			p.handBack(req.Key().String())
			return fmt.Errorf("delivery to %s interrupted: %w", s.cfg.Name, err)
		}
		if err := p.deadLetter(ctx, s, msg, req.Chunk, attempts, err); err != nil {
			return err
		}
		finish("dead_lettered")
		return nil
	}
}

// deliveryLease is how long a delivery lease outlives a holder that
// stopped renewing it (a killed replica): a copy of its request waits
// that long at most.
const deliveryLease = 5 * time.Second

// lease waits until this copy of req is the only one being sent, across
// replicas (backend.Ledger.Lease): two copies of one request (a
// redelivery next to its original after a restart) would otherwise both
// pass the ledger's Lookup before either Records. The copy that waited
// then finds the request delivered, or sends it if the holder failed. It
// returns the lease's release; an error only when the wait was
// interrupted (the message is then nacked and redelivered). A ledger
// error does not block delivery: at-least-once, as with Lookup.
func (p *Pipeline) lease(ctx context.Context, s *builtSink, req *Request) (func(), error) {
	key := req.Key()
	var t *time.Timer
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		release, ok, err := p.ledger.Lease(ctx, key, deliveryLease)
		if err != nil {
			s.log.WarnContext(ctx, "delivery lease unavailable; delivering anyway (at-least-once)", "export", req.ExportID, "chunk", req.Chunk, "err", err)
			return func() {}, nil
		}
		if ok {
			return release, nil
		}
		if t == nil {
			trace.SpanFromContext(ctx).AddEvent("another copy of the request is being sent; waiting for it")
			s.log.InfoContext(ctx, "another copy of the request is being sent; waiting for it", "export", req.ExportID, "chunk", req.Chunk)
			t = time.NewTimer(wait)
			defer t.Stop()
		} else {
			t.Reset(wait)
		}
		select {
		case <-t.C:
			continue
		case <-ctx.Done():
		case <-p.hardStop.Done():
		}
		if p.draining.Load() {
			p.handBack(key.String()) // nacked
		}
		return nil, fmt.Errorf("delivery to %s: waiting for another copy: %w", s.cfg.Name, cmp.Or(ctx.Err(), p.hardStop.Err()))
	}
}

// handBack notes a request nacked because of the shutdown, for the drain
// report.
func (p *Pipeline) handBack(key string) {
	p.shutdown.mu.Lock()
	p.shutdown.handedBack = append(p.shutdown.handedBack, key)
	p.shutdown.mu.Unlock()
}

// attempts runs the resilience policy around Send, one span per attempt.
// Span attributes are built only for recorded spans: with sampling off
// they would be a good part of a delivery's allocations.
// rec carries the retries earlier processes made, and each failed attempt
// is saved to the ledger, so that the retry budget holds across restarts.
func (p *Pipeline) attempts(ctx context.Context, s *builtSink, g *sinkGen, req *Request, rec backend.DeliveryRecord, msg *message.Message) (int, error) {
	ctx, span := p.tracer.Start(ctx, "deliver "+s.cfg.Name)
	defer span.End()
	if span.IsRecording() {
		span.SetAttributes(attribute.String("labelpipe.sink", s.cfg.Name), attribute.String("labelpipe.sink.type", s.cfg.Type),
			attribute.String("labelpipe.export.id", req.ExportID), attribute.Int("labelpipe.chunk", req.Chunk))
	}
	prior := resilience.Progress{Attempts: rec.Attempts, Spent: rec.Spent, Elapsed: rec.Elapsed}
	if prior.Attempts > 0 {
		span.AddEvent("resumed", trace.WithAttributes(attribute.Int("labelpipe.prior_attempts", prior.Attempts)))
	}
	last := prior // the progress saved last
	save := func(pr resilience.Progress) {
		last = pr
		r := backend.DeliveryRecord{Attempts: pr.Attempts, Spent: pr.Spent, Elapsed: pr.Elapsed}
		if err := p.ledger.SaveAttempts(context.WithoutCancel(ctx), req.Key(), r); err != nil {
			s.log.WarnContext(ctx, "could not save the retry progress; a restart would count this request's attempts from zero", "export", req.ExportID, "err", err)
		}
	}
	n, err := g.policy.Resume(ctx, prior, save, func(ctx context.Context, a resilience.Attempt) error {
		ctx, as := p.tracer.Start(ctx, "attempt "+s.cfg.Name)
		defer as.End()
		if as.IsRecording() {
			as.SetAttributes(attribute.Int("labelpipe.attempt", a.N),
				attribute.String("labelpipe.breaker.state", a.BreakerState.String()),
				attribute.Int64("labelpipe.backoff_ms", a.Backoff.Milliseconds()),
				attribute.Bool("labelpipe.retry_after_honoured", a.RetryAfter),
				attribute.Int64("labelpipe.breaker_wait_ms", a.BreakerWait.Milliseconds()))
		}
		if a.N > 1 {
			p.metrics.retries.Add(ctx, 1, p.metrics.with("sink", s.cfg.Name, "", ""))
		}
		// The attempt is not cut short when the sink is stopped (ctx):
		// the vendor may already have acted on it, and its outcome is
		// then recorded. Shutting down still cuts it (jqCtx).
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.cfg.Timeout)
		defer cancel()
		defer context.AfterFunc(p.jqCtx, cancel)()
		err := g.sink.Send(ctx, req)
		result := "ok"
		if err != nil {
			result = "retryable"
			var de *DeliveryError
			if errors.As(err, &de) {
				if !de.Retry {
					result = "permanent"
				}
				if de.Status != 0 {
					as.SetAttributes(attribute.Int("http.response.status_code", de.Status))
				}
			}
			as.RecordError(err)
			as.SetStatus(codes.Error, err.Error())
			s.stats.failed(err, time.Now())
			p.noteState(ctx, msg, s.cfg.Name, req.Chunk, a.N, backend.StateDelivering, err)
			s.log.InfoContext(ctx, "attempt failed", "export", req.ExportID, "chunk", req.Chunk, "attempt", a.N, "err", err)
		}
		p.metrics.attempts.Add(ctx, 1, p.metrics.with("sink", s.cfg.Name, "result", result))
		return err
	})
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		if n > last.Attempts && (errors.Is(err, resilience.ErrExhausted) || errors.Is(err, resilience.ErrPermanent)) {
			// The policy saves no progress after the attempt it gives up
			// on (no retry follows): its count is saved here, so that a
			// replay of the dead letter counts on from every attempt
			// made. The budget (Spent, Elapsed) stays as the policy left
			// it. An attempt cut short by a shutdown is not one: not
			// saved. Dead-letter path only.
			save(resilience.Progress{Attempts: n, Spent: last.Spent, Elapsed: last.Elapsed})
		}
	}
	return n, err
}

func receivedAt(md message.Metadata) (time.Time, bool) {
	t, err := time.Parse(time.RFC3339Nano, md.Get(backend.MetaReceivedAt))
	return t, err == nil
}
