package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

type dlqOption func(*dlqEntry)

type dlqEntry struct {
	d     *backend.DeadLetter
	quiet bool
}

// withTopic marks a dead letter whose message belongs on another topic
// (a render failure keeps the export, to be fanned out again on replay).
func withTopic(topic string) dlqOption {
	return func(e *dlqEntry) { e.d.Message.Metadata.Set(backend.MetaReplayTopic, topic) }
}

// quietly logs the dead letter at debug level: its cause is logged once
// for many (a full queue).
func quietly() dlqOption { return func(e *dlqEntry) { e.quiet = true } }

// deadLetter stores a request the sink gave up on, with what went wrong.
func (p *Pipeline) deadLetter(ctx context.Context, s *builtSink, msg *message.Message, chunk, attempts int, cause error, opts ...dlqOption) error {
	span := trace.SpanFromContext(ctx)
	d := &backend.DeadLetter{
		Sink:     s.cfg.Name,
		ExportID: msg.Metadata.Get(backend.MetaExportID),
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
	e := dlqEntry{d: d}
	for _, o := range opts {
		o(&e)
	}
	if s := d.Message.Metadata.Get(backend.MetaSink); s == "" {
		d.Message.Metadata.Set(backend.MetaOnlySink, d.Sink)
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
	s.stats.failed(cause, time.Now())
	p.noteState(ctx, msg, s.cfg.Name, chunk, attempts, backend.StateDeadLettered, cause)
	level := slog.LevelError
	if e.quiet {
		level = slog.LevelDebug
	}
	s.log.Log(ctx, level, "request dead-lettered", "export", d.ExportID, "chunk", chunk, "attempts", attempts,
		"status", d.Status, "err", cause)
	return nil
}

// Replay moves dead letters of a sink back onto its queue (all when ids is
// empty) and reports how many it moved.
func (p *Pipeline) Replay(ctx context.Context, sink string, ids []string) (int, error) {
	s, ok := p.sinkNamed(sink)
	if !ok {
		return 0, p.noSink(sink)
	}
	return ReplayDeadLetters(ctx, p.dlq, pipelinePublisher{p: p, ctx: ctx}, s.cfg.Name, ids, nil)
}

// noSink says that no sink has this name, and which ones exist: a typo
// in a replay or purge URL is the usual cause.
func (p *Pipeline) noSink(name string) error {
	sinks := p.sinkList()
	names := make([]string, len(sinks))
	for i, s := range sinks {
		names[i] = s.cfg.Name
	}
	return fmt.Errorf("no sink named %q (sinks: %s)", name, strings.Join(names, ", "))
}

// pipelinePublisher publishes through the pipeline, so replayed messages
// are traced and counted like any other.
type pipelinePublisher struct {
	p   *Pipeline
	ctx context.Context
}

func (pp pipelinePublisher) Publish(topic string, msgs ...*message.Message) error {
	return pp.p.publishMsgs(pp.ctx, topic, msgs...)
}

func (pp pipelinePublisher) Close() error { return nil }

// ReplayDeadLetters takes entries from dlq and publishes them back with
// pub: requests to sink.<name>, render failures to exports. progress is
// called after each entry (may be nil).
func ReplayDeadLetters(ctx context.Context, dlq backend.DLQ, pub message.Publisher, sink string, ids []string, progress func(int)) (int, error) {
	entries, err := dlq.Take(ctx, sink, ids)
	if err != nil {
		return 0, fmt.Errorf("take dead letters: %w", err)
	}
	return replayEntries(ctx, dlq, pub, sink, entries, progress)
}

// replayEntries publishes dead letters already taken from dlq back with
// pub, and puts back those it could not.
func replayEntries(ctx context.Context, dlq backend.DLQ, pub message.Publisher, sink string, entries []*backend.DeadLetter, progress func(int)) (int, error) {
	for i, d := range entries {
		m := d.Message
		if m == nil {
			// Stored without its request (by another tool); nothing to
			// replay, so it goes back rather than vanish.
			_ = dlq.Add(context.WithoutCancel(ctx), d)
			continue
		}
		topic := m.Metadata.Get(backend.MetaReplayTopic)
		if topic == "" {
			topic = backend.TopicSink(sink)
		}
		if _, ok := m.Metadata[backend.MetaReplayTopic]; ok {
			m = m.Copy() // a listing may be reading the stored one
			delete(m.Metadata, backend.MetaReplayTopic)
		}
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
