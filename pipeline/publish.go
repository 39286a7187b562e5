package pipeline

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// publish durably stores one accepted export on the exports topic, with
// its facts in the message metadata.
func (p *Pipeline) publish(ctx context.Context, e *Export) error {
	body := e.Body
	if !samePayload(e.Payload, e.orig) {
		b, err := json.Marshal(e.Payload)
		if err != nil {
			return fmt.Errorf("encode payload: %w", err)
		}
		body = b
	}
	msg := message.NewMessage(e.ID, body)
	msg.Metadata = e.withKey()
	msg.SetContext(context.WithValue(context.Background(), decodedPayload{}, e.Payload))
	return p.publishMsgs(ctx, backend.TopicExports, msg)
}

// publishMsgs publishes under a producer span and carries the trace
// context in each message's metadata.
func (p *Pipeline) publishMsgs(ctx context.Context, topic string, msgs ...*message.Message) error {
	return p.publishEntry(ctx, topic, nil, msgs...)
}

// publishEntry is publishMsgs with e, an export's history entry (nil:
// none), stored first: in the same round trip where the broker can
// (backend.EntryPublisher), so that the history costs the fan-out no
// round trip of its own.
func (p *Pipeline) publishEntry(ctx context.Context, topic string, e *backend.ExportEntry, msgs ...*message.Message) error {
	ctx, span := p.tracer.Start(ctx, "publish "+topic, trace.WithSpanKind(trace.SpanKindProducer))
	defer span.End()
	if span.IsRecording() {
		span.SetAttributes(semconv.MessagingSystemKey.String(p.system),
			semconv.MessagingDestinationName(topic),
			semconv.MessagingOperationTypeSend,
			semconv.MessagingBatchMessageCount(len(msgs)))
	}
	for _, m := range msgs {
		p.prop.Inject(ctx, metadataCarrier(m.Metadata))
		// A broker that writes with the message's context (Redis: XADD)
		// traces it under this span, not as a trace of its own. Only the
		// span is taken from ctx: never the request's cancellation.
		m.SetContext(trace.ContextWithSpan(m.Context(), span))
	}
	if e != nil {
		if ep, ok := p.broker.(backend.EntryPublisher); ok {
			done, histErr, err := ep.PublishWithEntry(p.history, e, topic, msgs...)
			if done {
				if histErr != nil {
					p.log.WarnContext(ctx, "could not record the export in the history", "export", e.ID, "err", histErr)
				}
				if err != nil {
					span.RecordError(err)
					span.SetStatus(codes.Error, err.Error())
				}
				return err
			}
		}
		p.addHistory(ctx, e)
	}
	if err := p.broker.Publish(topic, msgs...); err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		return err
	}
	return nil
}

// consumerSpan continues the trace carried in a consumed message's
// metadata, for the fan-out and the deliveries.
func (p *Pipeline) consumerSpan(msg *message.Message, topic string) (context.Context, trace.Span) {
	ctx := p.prop.Extract(p.jqCtx, metadataCarrier(msg.Metadata))
	ctx, span := p.tracer.Start(ctx, "process "+topic, trace.WithSpanKind(trace.SpanKindConsumer))
	if span.IsRecording() {
		span.SetAttributes(semconv.MessagingSystemKey.String(p.system),
			semconv.MessagingDestinationName(topic),
			semconv.MessagingOperationTypeProcess,
			semconv.MessagingMessageID(msg.UUID),
			attribute.String("labelpipe.export.id", msg.Metadata.Get(backend.MetaExportID)))
	}
	return ctx, span
}

// samePayload reports whether no stage replaced the decoded payload, so the
// raw body can be published as is instead of encoded again.
func samePayload(a, b any) bool {
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	if va.Kind() != vb.Kind() {
		return false
	}
	switch va.Kind() {
	case reflect.Map, reflect.Slice:
		return va.UnsafePointer() == vb.UnsafePointer()
	}
	return false
}

// decodedPayload is the context key under which an in-process broker
// hands the already decoded payload to the fan-out.
type decodedPayload struct{}

// metadataCarrier lets the propagator read and write message metadata.
type metadataCarrier message.Metadata

func (c metadataCarrier) Get(k string) string { return c[k] }
func (c metadataCarrier) Set(k, v string)     { c[k] = v }
func (c metadataCarrier) Keys() []string {
	out := make([]string, 0, len(c))
	for k := range c {
		out = append(out, k)
	}
	return out
}

// Propagator is the W3C TraceContext + Baggage propagator labelpipe uses on
// the webhook request, in message metadata and on vendor requests. It is a
// function, not a global, so embedders keep control of otel's globals.
func Propagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}
