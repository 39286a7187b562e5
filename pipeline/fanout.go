package pipeline

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
)

// metaOnlySink, on an exports message, limits the fan-out to one sink; a
// replayed render failure carries it.
const metaOnlySink = "only_sink"

// fanout decodes an export once and queues one message per request of
// every sink that wants it, on topic sink.<name>.
func (p *Pipeline) fanout(msg *message.Message) error {
	p.fanoutSlots <- struct{}{}
	defer func() { <-p.fanoutSlots }()
	ctx, span := p.consumerSpan(msg, TopicExports)
	defer span.End()
	exportID := msg.Metadata.Get(MetaExportID)

	payload := msg.Context().Value(decodedPayload{})
	if payload == nil {
		var err error
		if payload, err = decodeJSON(msg.Payload); err != nil {
			// Only valid JSON is ever published; a corrupt entry cannot be
			// delivered anywhere, so it is logged loudly and dropped.
			span.SetStatus(codes.Error, "corrupt export")
			p.log.ErrorContext(ctx, "export on the broker is not valid JSON; dropping it", "export", exportID, "err", err)
			return nil
		}
	}
	export := exportInfo(msg.Metadata)
	only := msg.Metadata.Get(metaOnlySink)
	for _, s := range p.sinks {
		if only != "" && s.cfg.Name != only {
			continue
		}
		msgs, err := p.render(ctx, s, msg, payload, export)
		if err != nil {
			if err := p.deadLetter(ctx, s, msg, -1, 0, err, withTopic(TopicExports)); err != nil {
				return err
			}
			continue
		}
		if len(msgs) == 0 {
			continue
		}
		p.queued(s, msgs)
		if err := p.publishMsgs(ctx, s.topic, msgs...); err != nil {
			for _, m := range msgs {
				s.local.done(m.UUID)
			}
			span.RecordError(err)
			// Nacked: the export is fanned out again. Requests already
			// queued for earlier sinks are caught by the delivered ledger.
			return fmt.Errorf("queue requests for sink %s: %w", s.cfg.Name, err)
		}
	}
	return nil
}

// render turns one sink's bodies for an export into messages for its topic.
func (p *Pipeline) render(ctx context.Context, s *builtSink, msg *message.Message, payload any, export map[string]any) ([]*message.Message, error) {
	ev, _ := export["event"].(string)
	bodies, skip, err := s.bodies(ctx, ev, payload, export)
	if err != nil {
		return nil, err
	}
	if skip != "" {
		s.log.DebugContext(ctx, "sink skips the export", "export", export["id"], "reason", skip)
		return nil, nil
	}
	out := make([]*message.Message, len(bodies))
	for i, b := range bodies {
		req := Request{Sink: s.cfg.Name, ExportID: msg.Metadata.Get(MetaExportID), Chunk: i, Chunks: len(bodies)}
		m := message.NewMessage(req.IdempotencyKey(), b)
		for _, k := range []string{MetaExportID, MetaReceivedAt, MetaEvent, MetaProject, MetaIssueID} {
			m.Metadata.Set(k, msg.Metadata.Get(k))
		}
		m.Metadata.Set(MetaSink, s.cfg.Name)
		m.Metadata.Set(MetaChunk, strconv.Itoa(i))
		m.Metadata.Set(MetaChunks, strconv.Itoa(len(bodies)))
		out[i] = m
	}
	return out, nil
}

// bodies runs the sink's event check, filter and body program for an
// export: what the fan-out queues and what a preview shows. skip says why
// the sink takes no part, "" when it does. A render error comes with the
// bodies rendered before it, for the preview.
func (s *builtSink) bodies(ctx context.Context, event string, payload any, export map[string]any) (bodies [][]byte, skip string, err error) {
	if !slices.Contains(s.cfg.Events, event) {
		return nil, fmt.Sprintf("does not subscribe to event %q", event), nil
	}
	if s.filter != nil {
		ok, err := s.filter.Bool(ctx, payload, export)
		if err != nil {
			return nil, "", fmt.Errorf("filter: %w", err)
		}
		if !ok {
			return nil, "filter is false", nil
		}
	}
	sinkExport := make(map[string]any, len(export)+1)
	maps.Copy(sinkExport, export)
	sinkExport["sink"] = s.cfg.Name
	bodies, err = s.sink.Render(ctx, payload, sinkExport)
	if err != nil {
		return bodies, "", fmt.Errorf("render: %w", err)
	}
	return bodies, "", nil
}

// exportInfo rebuilds `$export` from message metadata.
func exportInfo(md message.Metadata) map[string]any {
	return map[string]any{
		"id":          md.Get(MetaExportID),
		"received_at": md.Get(MetaReceivedAt),
		"event":       md.Get(MetaEvent),
		"project":     md.Get(MetaProject),
		"issue_id":    md.Get(MetaIssueID),
	}
}

// consumerSpan continues the trace carried in the message metadata.
func (p *Pipeline) consumerSpan(msg *message.Message, topic string) (context.Context, trace.Span) {
	ctx := p.prop.Extract(p.hardStop, metadataCarrier(msg.Metadata))
	ctx, span := p.tracer.Start(ctx, "process "+topic, trace.WithSpanKind(trace.SpanKindConsumer))
	if span.IsRecording() {
		span.SetAttributes(semconv.MessagingSystemKey.String(p.messagingSystem()),
			semconv.MessagingDestinationName(topic),
			semconv.MessagingOperationTypeProcess,
			semconv.MessagingMessageID(msg.UUID),
			attribute.String("labelpipe.export.id", msg.Metadata.Get(MetaExportID)))
	}
	return ctx, span
}

func receivedAt(md message.Metadata) (time.Time, bool) {
	t, err := time.Parse(time.RFC3339Nano, md.Get(MetaReceivedAt))
	return t, err == nil
}
