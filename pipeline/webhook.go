package pipeline

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/labelpipe/labelpipe/pipeline/internal/failpoint"
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
	Key        string      `json:"key,omitempty"`
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
	ctx := WithJQLimits(r.Context(), p.cfg.JQ)
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

	if err := p.ingress(ctx, e, nil); err != nil {
		// Not accepted: give back what earlier stages reserved (a dedupe
		// key), or the caller's retry would be taken for a duplicate.
		p.release(ctx, e)
		p.replyStageError(ctx, w, e, err)
		return
	}
	if ev := e.Event(); !p.events[ev] {
		p.release(ctx, e)
		p.reply(ctx, w, http.StatusOK, answer{Status: "ignored", Reason: fmt.Sprintf("no sink subscribes to event %q", ev)})
		return
	}
	failpoint.Hit("before-publish") // reserved by dedupe, not yet stored
	done, ok := p.broker.Admit(ctx, p.cfg.Broker.QueueWait)
	if !ok {
		p.release(ctx, e)
		p.unavailable(ctx, w, retryAfterUnavailable, "labelpipe's queue is full (the vendors are slower than the exports arriving); it was not accepted, retry shortly")
		return
	}
	defer done()
	if err := p.publish(ctx, e); err != nil {
		p.release(ctx, e)
		p.log.ErrorContext(ctx, "durable publish failed", "export", e.ID, "err", err)
		p.unavailable(ctx, w, retryAfterUnavailable, "could not store the export (broker unavailable); it was not accepted, retry shortly")
		return
	}
	failpoint.Hit("after-publish") // stored, not confirmed nor answered
	p.confirm(ctx, e)
	p.log.InfoContext(ctx, "export accepted", "export", e.ID, "event", e.Event())
	p.reply(ctx, w, http.StatusAccepted, answer{Status: "accepted", ID: e.ID, Key: e.key})
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
	case VerdictDrop:
		return http.StatusOK, answer{Status: "filtered", Reason: se.Msg}, 0
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
