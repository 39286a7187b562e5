package pipeline

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/labelpipe/labelpipe/sinks/resilience"
)

// deliverHandler sends one sink's queued requests: ledger check, then the
// resilience policy (rate limit, breaker, retries) around each attempt,
// then the ledger record or the dead-letter queue.
func (p *Pipeline) deliverHandler(s *builtSink) message.NoPublishHandlerFunc {
	return func(msg *message.Message) error {
		s.slots <- struct{}{}
		defer func() { <-s.slots }()
		ctx, span := p.consumerSpan(msg, s.topic)
		defer span.End()
		req := &Request{Sink: s.cfg.Name, ExportID: msg.Metadata.Get(MetaExportID), Body: msg.Payload}
		req.Chunk, _ = strconv.Atoi(msg.Metadata.Get(MetaChunk))
		req.Chunks, _ = strconv.Atoi(msg.Metadata.Get(MetaChunks))
		key := req.IdempotencyKey()
		if span.IsRecording() {
			span.SetAttributes(attribute.String("labelpipe.sink", s.cfg.Name), attribute.Int("labelpipe.chunk", req.Chunk),
				attribute.Int("labelpipe.chunks", req.Chunks))
		}
		finish := func(outcome string) {
			s.local.done(msg.UUID)
			p.metrics.deliveries.Add(ctx, 1, p.metrics.with("sink", s.cfg.Name, "outcome", outcome))
		}

		if done, err := p.ledger.Delivered(ctx, key); err != nil {
			s.log.WarnContext(ctx, "delivered ledger unavailable; delivering anyway (at-least-once)", "export", req.ExportID, "chunk", req.Chunk, "err", err)
		} else if done {
			span.AddEvent("already delivered; skipped")
			finish("skipped")
			return nil
		}

		attempts, err := p.attempts(ctx, s, req)
		if span.IsRecording() {
			span.SetAttributes(attribute.Int("labelpipe.attempts", attempts))
		}
		if err == nil {
			if err := p.ledger.Record(ctx, key); err != nil {
				s.log.WarnContext(ctx, "could not record delivery; a redelivery may repeat it", "export", req.ExportID, "err", err)
			}
			if t, ok := receivedAt(msg.Metadata); ok {
				p.metrics.e2e.Record(ctx, time.Since(t).Seconds(), p.metrics.with("sink", s.cfg.Name, "", ""))
			}
			finish("delivered")
			return nil
		}
		if p.hardStop.Err() != nil || errors.Is(err, context.Canceled) {
			// Shutting down: leave the request on the broker (nack) rather
			// than dead-letter a request that did nothing wrong.
			span.SetStatus(codes.Error, "interrupted by shutdown")
			return fmt.Errorf("delivery to %s interrupted: %w", s.cfg.Name, err)
		}
		if err := p.deadLetter(ctx, s, msg, req.Chunk, attempts, err); err != nil {
			return err
		}
		finish("dead_lettered")
		return nil
	}
}

// attempts runs the resilience policy around Send, one span per attempt.
// Span attributes are built only for recorded spans: with sampling off
// they were a good part of a delivery's allocations.
func (p *Pipeline) attempts(ctx context.Context, s *builtSink, req *Request) (int, error) {
	ctx, span := p.tracer.Start(ctx, "deliver "+s.cfg.Name)
	defer span.End()
	if span.IsRecording() {
		span.SetAttributes(attribute.String("labelpipe.sink", s.cfg.Name), attribute.String("labelpipe.sink.type", s.cfg.Type),
			attribute.String("labelpipe.export.id", req.ExportID), attribute.Int("labelpipe.chunk", req.Chunk))
	}
	n, err := s.policy.Do(ctx, func(ctx context.Context, a resilience.Attempt) error {
		ctx, as := p.tracer.Start(ctx, "attempt "+s.cfg.Name)
		defer as.End()
		if as.IsRecording() {
			as.SetAttributes(attribute.Int("labelpipe.attempt", a.N),
				attribute.String("labelpipe.breaker.state", a.BreakerState),
				attribute.Int64("labelpipe.backoff_ms", a.Backoff.Milliseconds()),
				attribute.Bool("labelpipe.retry_after_honoured", a.RetryAfter),
				attribute.Int64("labelpipe.breaker_wait_ms", a.BreakerWait.Milliseconds()))
		}
		if a.N > 1 {
			p.metrics.retries.Add(ctx, 1, p.metrics.with("sink", s.cfg.Name, "", ""))
		}
		ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
		defer cancel()
		err := s.sink.Send(ctx, req)
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
			s.log.InfoContext(ctx, "attempt failed", "export", req.ExportID, "chunk", req.Chunk, "attempt", a.N, "err", err)
		}
		p.metrics.attempts.Add(ctx, 1, p.metrics.with("sink", s.cfg.Name, "result", result))
		return err
	})
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	return n, err
}

type dlqOption func(*DeadLetter)

// withTopic marks a dead letter whose message belongs on another topic
// (a render failure keeps the export, to be fanned out again on replay).
func withTopic(topic string) dlqOption {
	return func(d *DeadLetter) { d.Message.Metadata.Set(metaReplayTopic, topic) }
}

const metaReplayTopic = "replay_topic"

// deadLetter stores a request the sink gave up on, with what went wrong.
func (p *Pipeline) deadLetter(ctx context.Context, s *builtSink, msg *message.Message, chunk, attempts int, cause error, opts ...dlqOption) error {
	span := trace.SpanFromContext(ctx)
	d := &DeadLetter{
		Sink:     s.cfg.Name,
		ExportID: msg.Metadata.Get(MetaExportID),
		Chunk:    chunk,
		Error:    cause.Error(),
		Attempts: attempts,
		FailedAt: time.Now().UTC().Format(time.RFC3339Nano),
		Message:  msg.Copy(),
	}
	if sc := span.SpanContext(); sc.HasTraceID() {
		d.TraceID = sc.TraceID().String()
	}
	var de *DeliveryError
	if errors.As(cause, &de) {
		d.Status, d.Answer = de.Status, de.Answer
	}
	for _, o := range opts {
		o(d)
	}
	if s := d.Message.Metadata.Get(MetaSink); s == "" {
		d.Message.Metadata.Set(metaOnlySink, d.Sink)
	}
	span.AddEvent("dead_lettered", trace.WithAttributes(
		attribute.String("labelpipe.error", d.Error),
		attribute.Int("http.response.status_code", d.Status),
		attribute.String("labelpipe.vendor_answer", d.Answer)))
	span.SetStatus(codes.Error, "dead-lettered: "+d.Error)
	if err := p.dlq.Add(ctx, d); err != nil {
		// Not stored anywhere yet: nack so the broker keeps it.
		return fmt.Errorf("dead-letter for sink %s: %w", s.cfg.Name, err)
	}
	s.log.ErrorContext(ctx, "request dead-lettered", "export", d.ExportID, "chunk", chunk, "attempts", attempts,
		"status", d.Status, "err", cause)
	return nil
}

// Replay moves dead letters of a sink back onto its queue (all when ids is
// empty) and reports how many it moved.
func (p *Pipeline) Replay(ctx context.Context, sink string, ids []string) (int, error) {
	s, ok := p.byName[sink]
	if !ok {
		return 0, fmt.Errorf("no sink named %q", sink)
	}
	return ReplayDeadLetters(ctx, p.dlq, pipelinePublisher{p: p, ctx: ctx}, s.cfg.Name, ids, nil)
}

// pipelinePublisher publishes through the pipeline, so replayed messages
// are traced and counted like any other.
type pipelinePublisher struct {
	p   *Pipeline
	ctx context.Context
}

func (pp pipelinePublisher) Publish(topic string, msgs ...*message.Message) error {
	if s, ok := pp.p.byName[msgs[0].Metadata.Get(MetaSink)]; ok && topic == s.topic {
		pp.p.queued(s, msgs)
	}
	return pp.p.publishMsgs(pp.ctx, topic, msgs...)
}

func (pp pipelinePublisher) Close() error { return nil }

// ReplayDeadLetters takes entries from dlq and publishes them back with
// pub: requests to sink.<name>, render failures to exports. progress is
// called after each entry (may be nil).
func ReplayDeadLetters(ctx context.Context, dlq DLQ, pub message.Publisher, sink string, ids []string, progress func(int)) (int, error) {
	entries, err := dlq.Take(ctx, sink, ids)
	if err != nil {
		return 0, fmt.Errorf("take dead letters: %w", err)
	}
	for i, d := range entries {
		m := d.Message
		if m == nil {
			// Stored without its request (by another tool); nothing to
			// replay, so it goes back rather than vanish.
			_ = dlq.Add(context.WithoutCancel(ctx), d)
			continue
		}
		topic := m.Metadata.Get(metaReplayTopic)
		if topic == "" {
			topic = TopicSink(sink)
		}
		delete(m.Metadata, metaReplayTopic)
		if err := pub.Publish(topic, m); err != nil {
			// Put back what was not replayed, so nothing is lost.
			for _, rest := range entries[i:] {
				_ = dlq.Add(context.WithoutCancel(ctx), rest)
			}
			return i, fmt.Errorf("replay to %s: %w", topic, err)
		}
		if progress != nil {
			progress(i + 1)
		}
	}
	return len(entries), nil
}
