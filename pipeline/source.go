package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/go-json-experiment/json/jsontext"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
)

// Message metadata keys on the exports and sink topics.
const (
	MetaExportID   = "export_id"
	MetaReceivedAt = "received_at"
	MetaEvent      = "event"
	MetaProject    = "project"
	MetaIssueID    = "issue_id"
	MetaSink       = "sink"
	MetaChunk      = "chunk"
	MetaChunks     = "chunks"
)

// retryAfterUnavailable is the Retry-After sent with a 503.
const retryAfterUnavailable = 5 * time.Second

func (p *Pipeline) webhookHandler() http.Handler {
	path := p.cfg.Server.Path
	return otelhttp.NewHandler(http.HandlerFunc(p.serveWebhook), "webhook",
		otelhttp.WithTracerProvider(p.opts.TracerProvider),
		otelhttp.WithMeterProvider(p.opts.MeterProvider),
		otelhttp.WithPropagators(p.prop),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return r.Method + " " + path }))
}

// answer is a webhook response body.
type answer struct {
	Status     string      `json:"status,omitempty"`
	ID         string      `json:"id,omitempty"`
	IDs        []string    `json:"ids,omitempty"`
	TraceID    string      `json:"trace_id,omitempty"`
	Reason     string      `json:"reason,omitempty"`
	Error      string      `json:"error,omitempty"`
	Violations []Violation `json:"violations,omitempty"`
}

func (p *Pipeline) reply(ctx context.Context, w http.ResponseWriter, code int, a answer) {
	span := trace.SpanFromContext(ctx)
	if a.TraceID == "" && span.SpanContext().HasTraceID() {
		a.TraceID = span.SpanContext().TraceID().String()
	}
	if a.Error != "" {
		span.SetStatus(codes.Error, a.Error)
	}
	if span.IsRecording() {
		span.SetAttributes(attribute.String("labelpipe.answer", answerName(code, a)))
	}
	p.metrics.requests.Add(ctx, 1, p.metrics.withStatus(code, answerName(code, a)))
	writeJSON(w, code, a)
}

func answerName(code int, a answer) string {
	if a.Status != "" {
		return a.Status
	}
	return strconv.Itoa(code)
}

func (p *Pipeline) unavailable(ctx context.Context, w http.ResponseWriter, after time.Duration, msg string) {
	setRetryAfter(w, after)
	p.reply(ctx, w, http.StatusServiceUnavailable, answer{Error: msg})
}

// setRetryAfter sets Retry-After in whole seconds, rounded up.
func setRetryAfter(w http.ResponseWriter, d time.Duration) {
	w.Header().Set("Retry-After", strconv.Itoa(int((d+time.Second-1)/time.Second)))
}

func (p *Pipeline) serveWebhook(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if p.draining.Load() {
		p.unavailable(ctx, w, retryAfterUnavailable, "labelpipe is shutting down; retry shortly")
		return
	}
	if !p.router.IsRunning() {
		p.unavailable(ctx, w, retryAfterUnavailable, "labelpipe is starting; retry shortly")
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		p.reply(ctx, w, http.StatusMethodNotAllowed, answer{Error: "use POST"})
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || (mt != "application/json" && mt != "text/json") {
			p.reply(ctx, w, http.StatusUnsupportedMediaType, answer{Error: fmt.Sprintf("Content-Type is %q; want application/json", ct)})
			return
		}
	}
	limit := p.cfg.Server.MaxBodyBytes
	if r.ContentLength > limit {
		// Said up front: refuse it without reading a byte.
		p.reply(ctx, w, http.StatusRequestEntityTooLarge, answer{Error: tooLarge(limit)})
		return
	}
	release, ok := p.reserveBody(ctx, r.ContentLength)
	if !ok {
		p.unavailable(ctx, w, retryAfterUnavailable, "labelpipe is busy reading other large exports (server.max_inflight_bytes); it was not accepted, retry shortly")
		return
	}
	defer release()
	body, err := readBody(w, r, limit)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			p.reply(ctx, w, http.StatusRequestEntityTooLarge, answer{Error: tooLarge(tooBig.Limit)})
			return
		}
		p.reply(ctx, w, http.StatusBadRequest, answer{Error: "could not read body: " + err.Error()})
		return
	}
	e := &Export{ID: watermill.NewULID(), ReceivedAt: time.Now(), Header: r.Header, Body: body}
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.SetAttributes(attribute.String("labelpipe.export.id", e.ID), attribute.Int("http.request.body.size", len(body)))
	}

	exports, err := p.ingress(ctx, e, nil)
	if err != nil {
		// Not accepted: give back what earlier stages reserved (a dedupe
		// key), or the caller's retry would be taken for a duplicate.
		p.release(ctx, e)
		p.replyStageError(ctx, w, e, err)
		return
	}
	if len(exports) == 0 {
		p.reply(ctx, w, http.StatusOK, answer{Status: "filtered", Reason: e.Attrs[AttrDropReason]})
		return
	}
	var ids []string
	for _, x := range exports {
		if ev := x.Event(); !p.events[ev] {
			p.release(ctx, x)
			p.reply(ctx, w, http.StatusOK, answer{Status: "ignored", Reason: fmt.Sprintf("no sink subscribes to event %q", ev)})
			return
		}
	}
	if !p.broker.Durable() {
		done, ok := p.admission.admit(ctx, p.cfg.Broker.QueueWait)
		if !ok {
			for _, x := range exports {
				p.release(ctx, x)
			}
			p.unavailable(ctx, w, retryAfterUnavailable, "labelpipe's queue is full (the vendors are slower than the exports arriving); it was not accepted, retry shortly")
			return
		}
		defer done()
	}
	for i, x := range exports {
		if err := p.publish(ctx, x); err != nil {
			for _, y := range exports[i:] {
				p.release(ctx, y)
			}
			p.log.ErrorContext(ctx, "durable publish failed", "export", x.ID, "err", err)
			p.unavailable(ctx, w, retryAfterUnavailable, "could not store the export (broker unavailable); it was not accepted, retry shortly")
			return
		}
		ids = append(ids, x.ID)
	}
	a := answer{Status: "accepted", ID: ids[0]}
	if len(ids) > 1 {
		a.IDs = ids
	}
	p.log.InfoContext(ctx, "export accepted", "export", ids[0], "event", exports[0].Event())
	p.reply(ctx, w, http.StatusAccepted, a)
}

// reserveBody takes a body's share of server.max_inflight_bytes before it
// is read: until it is checked, a body costs memory in proportion to its
// size. A body of unknown length counts as max_body_bytes. It waits up to
// broker.queue_wait for room.
func (p *Pipeline) reserveBody(ctx context.Context, contentLength int64) (release func(), ok bool) {
	n := contentLength
	if n < 0 {
		n = p.cfg.Server.MaxBodyBytes
	}
	if !p.bodies.TryAcquire(n) {
		wait, cancel := context.WithTimeout(ctx, p.cfg.Broker.QueueWait)
		defer cancel()
		if err := p.bodies.Acquire(wait, n); err != nil {
			return nil, false
		}
	}
	return func() { p.bodies.Release(n) }, true
}

func tooLarge(limit int64) string {
	return fmt.Sprintf("body is larger than the limit of %d bytes (server.max_body_bytes)", limit)
}

func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	rd := http.MaxBytesReader(w, r.Body, limit)
	if r.ContentLength > 0 && r.ContentLength <= limit {
		// Exactly Content-Length bytes, which net/http holds the body to. A
		// bytes.Buffer would double its capacity at the end to look for
		// more: twice the body's size in memory for a large export.
		buf := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(rd, buf); err != nil {
			return nil, err
		}
		return buf, nil
	}
	var buf bytes.Buffer
	_, err := buf.ReadFrom(rd)
	return buf.Bytes(), err
}

// trial, passed to ingress by a preview, makes the stage chain free of side
// effects (Previewer stages preview instead of processing) and records each
// stage's verdict.
type trial struct {
	// noHeaders skips raw stages: there is no request to check.
	noHeaders bool
	verdicts  []StageVerdict
}

// ingress runs the stage chain. Leading raw stages run before the body is
// decoded; the body is decoded once, then every other stage sees Payload.
// tr is nil except in a preview.
func (p *Pipeline) ingress(ctx context.Context, e *Export, tr *trial) ([]*Export, error) {
	cur := []*Export{e}
	decoded := false
	for _, s := range p.stages {
		_, raw := s.stage.(RawStage)
		if raw && tr != nil && tr.noHeaders {
			tr.verdicts = append(tr.verdicts, StageVerdict{Name: s.cfg.Name, Type: s.cfg.Type,
				Verdict: "skipped", Detail: "no request headers in preview (pass --secret to check it)"})
			continue
		}
		if !raw && !decoded {
			if err := decodePayload(e); err != nil {
				return nil, err
			}
			decoded = true
		}
		var next []*Export
		for _, x := range cur {
			out, outcome, err := p.runStage(ctx, s, x, tr != nil)
			if tr != nil {
				tr.record(s, outcome, x, err)
			}
			if err != nil {
				return nil, err
			}
			next = append(next, out...)
		}
		if len(next) == 0 {
			if e.Attrs[AttrDropReason] == "" && len(cur) > 0 {
				Dropped(e, "stage "+s.cfg.Name+" dropped the export")
			}
			return nil, nil
		}
		if next[0] != e && e.Attrs[AttrDropReason] == "" {
			e = next[0]
		}
		cur = next
	}
	if !decoded {
		if err := decodePayload(e); err != nil {
			return nil, err
		}
	}
	return cur, nil
}

func (tr *trial) record(s builtStage, outcome string, e *Export, err error) {
	v := StageVerdict{Name: s.cfg.Name, Type: s.cfg.Type, Verdict: outcome}
	switch se, ok := AsStageError(err); {
	case outcome == "dropped":
		v.Detail = e.Attrs[AttrDropReason]
	case ok && se.Verdict == VerdictReject:
		v.Detail = se.Msg
	case err != nil && outcome != "duplicate":
		v.Detail = err.Error()
	}
	tr.verdicts = append(tr.verdicts, v)
}

// runStage runs one stage under its span and reports the outcome: passed,
// dropped, duplicate, rejected, unavailable or error. In a preview a
// Previewer stage previews instead.
func (p *Pipeline) runStage(ctx context.Context, s builtStage, e *Export, preview bool) ([]*Export, string, error) {
	ctx, span := p.tracer.Start(ctx, "stage "+s.cfg.Name)
	defer span.End()
	if span.IsRecording() {
		span.SetAttributes(attribute.String("labelpipe.stage.type", s.cfg.Type),
			attribute.String("labelpipe.stage.name", s.cfg.Name),
			attribute.String("labelpipe.export.id", e.ID))
	}
	start := time.Now()
	var out []*Export
	var err error
	if pv, ok := s.stage.(Previewer); ok && preview {
		out, err = pv.Preview(ctx, e)
	} else {
		out, err = s.stage.Process(ctx, e)
	}
	outcome := "passed"
	switch se, ok := AsStageError(err); {
	case err == nil && len(out) == 0:
		outcome = "dropped"
		span.AddEvent("dropped", trace.WithAttributes(attribute.String("reason", e.Attrs[AttrDropReason])))
	case ok && se.Verdict == VerdictDuplicate:
		outcome = "duplicate"
		span.AddEvent("duplicate", trace.WithAttributes(attribute.String("labelpipe.duplicate_of", se.DuplicateOf)))
	case ok && se.Verdict == VerdictReject:
		outcome = "rejected"
		span.AddEvent("rejected", trace.WithAttributes(attribute.Int("http.response.status_code", se.Status), attribute.String("reason", se.Msg)))
		span.SetStatus(codes.Error, se.Msg)
	case ok && se.Verdict == VerdictUnavailable:
		outcome = "unavailable"
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	case err != nil:
		outcome = "error"
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	if span.IsRecording() {
		span.SetAttributes(attribute.String("labelpipe.stage.outcome", outcome))
	}
	p.metrics.stageDur.Record(ctx, time.Since(start).Seconds(), p.metrics.with("stage", s.cfg.Name, "outcome", outcome))
	if outcome == "rejected" || outcome == "error" || outcome == "unavailable" {
		s.log.InfoContext(ctx, "stage stopped the export", "export", e.ID, "outcome", outcome, "err", err)
	}
	return out, outcome, err
}

func decodePayload(e *Export) error {
	if len(bytes.TrimSpace(e.Body)) == 0 {
		return Reject(http.StatusBadRequest, "body is empty; want a JSON object")
	}
	v, err := decodeJSON(e.Body)
	if err != nil {
		var se *jsontext.SyntacticError
		if errors.As(err, &se) {
			return Reject(http.StatusBadRequest, "body is not valid JSON: %v (at byte %d)", se.Err, se.ByteOffset)
		}
		return Reject(http.StatusBadRequest, "body is not valid JSON: %v", err)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return Reject(http.StatusBadRequest, "body must be a JSON object with an \"event\" field")
	}
	if ev, _ := m["event"].(string); ev == "" {
		return Invalid("payload has no \"event\"", []Violation{{Pointer: "/event", Message: "required: a non-empty string naming the event"}})
	}
	e.Payload = v
	e.orig = v
	return nil
}

func (p *Pipeline) replyStageError(ctx context.Context, w http.ResponseWriter, e *Export, err error) {
	if _, ok := AsStageError(err); !ok {
		p.log.ErrorContext(ctx, "stage failed", "export", e.ID, "err", err)
	}
	code, a, after := stageAnswer(err)
	if after > 0 {
		setRetryAfter(w, after)
	}
	p.reply(ctx, w, code, a)
}

// stageAnswer is the webhook answer for an ingress error, with the
// Retry-After to send (0 for none).
func stageAnswer(err error) (int, answer, time.Duration) {
	se, ok := AsStageError(err)
	if !ok {
		return http.StatusInternalServerError, answer{Error: "internal error while checking the export: " + err.Error()}, 0
	}
	switch se.Verdict {
	case VerdictDuplicate:
		return http.StatusOK, answer{Status: "duplicate", ID: se.DuplicateOf}, 0
	case VerdictUnavailable:
		after := se.RetryAfter
		if after <= 0 {
			after = retryAfterUnavailable
		}
		return http.StatusServiceUnavailable, answer{Error: se.Error()}, after
	default:
		return se.Status, answer{Error: se.Msg, Violations: se.Violations}, se.RetryAfter
	}
}

// release gives back what stages reserved for an export that was not
// accepted, so that the caller's retry is not taken for a duplicate.
func (p *Pipeline) release(ctx context.Context, e *Export) {
	for _, s := range p.stages {
		if r, ok := s.stage.(Releaser); ok {
			if err := r.Release(context.WithoutCancel(ctx), e); err != nil {
				s.log.WarnContext(ctx, "could not release reservation; the caller's retry may be taken for a duplicate", "export", e.ID, "err", err)
			}
		}
	}
}

// publish durably stores one export on the exports topic.
func (p *Pipeline) publish(ctx context.Context, e *Export) error {
	body := e.Body
	if !samePayload(e.Payload, e.orig) {
		b, err := json.Marshal(e.Payload)
		if err != nil {
			return fmt.Errorf("encode payload: %w", err)
		}
		body = b
	}
	event, project, issueID := e.facts()
	msg := message.NewMessage(e.ID, body)
	msg.SetContext(context.WithValue(context.Background(), decodedPayload{}, e.Payload))
	msg.Metadata.Set(MetaExportID, e.ID)
	msg.Metadata.Set(MetaReceivedAt, e.ReceivedAt.UTC().Format(time.RFC3339Nano))
	msg.Metadata.Set(MetaEvent, event)
	msg.Metadata.Set(MetaProject, project)
	msg.Metadata.Set(MetaIssueID, issueID)
	return p.publishMsgs(ctx, TopicExports, msg)
}

// publishMsgs publishes under a producer span and carries the trace
// context in each message's metadata.
func (p *Pipeline) publishMsgs(ctx context.Context, topic string, msgs ...*message.Message) error {
	ctx, span := p.tracer.Start(ctx, "publish "+topic, trace.WithSpanKind(trace.SpanKindProducer))
	defer span.End()
	if span.IsRecording() {
		span.SetAttributes(semconv.MessagingSystemKey.String(p.messagingSystem()),
			semconv.MessagingDestinationName(topic),
			semconv.MessagingOperationTypeSend,
			semconv.MessagingBatchMessageCount(len(msgs)))
	}
	for _, m := range msgs {
		p.prop.Inject(ctx, metadataCarrier(m.Metadata))
	}
	if !p.broker.Durable() {
		p.pending.Add(int64(len(msgs)))
	}
	if err := p.broker.Publish(topic, msgs...); err != nil {
		if !p.broker.Durable() {
			p.pending.Add(-int64(len(msgs)))
		}
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		return err
	}
	return nil
}

func (p *Pipeline) messagingSystem() string {
	if p.cfg.Broker.Type == "redis" {
		return "redis"
	}
	return "gochannel"
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
