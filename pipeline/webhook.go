package pipeline

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/labelpipe/labelpipe/pipeline/internal/failpoint"
)

// retryAfterUnavailable is the Retry-After sent with a 503.
const retryAfterUnavailable = 5 * time.Second

func (p *Pipeline) webhookHandler() http.Handler {
	path := p.cfg.Server.Path
	// server.address on otelhttp's metrics comes from the Host header
	// unless a server name is set: any client could mint a new series per
	// request. The configured address is one value.
	server := p.cfg.Server.Addr
	if _, _, err := net.SplitHostPort(server); err != nil {
		server = "labelpipe:0"
	}
	h := otelhttp.NewHandler(http.HandlerFunc(p.serveWebhook), "webhook",
		otelhttp.WithTracerProvider(p.opts.TracerProvider),
		otelhttp.WithMeterProvider(p.opts.MeterProvider),
		otelhttp.WithServerName(server),
		// Only the trace context is taken from a caller, never baggage:
		// it would ride along into every message and vendor request.
		otelhttp.WithPropagators(propagation.TraceContext{}),
		// By default the caller's trace is linked, not continued, so a
		// caller cannot choose labelpipe's trace ids or sampling.
		otelhttp.WithPublicEndpointFn(func(*http.Request) bool { return p.cfg.Tracing.CallerContext != CallerContextParent }),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return r.Method + " " + path }))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// otelhttp's writer hides the connection's deadlines; keep the
		// server's own for readDeadline.
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), connWriterKey{}, w)))
	})
}

type connWriterKey struct{}

// replyUnread answers without reading the body.
func (p *Pipeline) replyUnread(ctx context.Context, w http.ResponseWriter, code int, a answer) {
	leaveBody(ctx, w)
	p.reply(ctx, w, code, a)
}

// leaveBody closes the connection after an answer given before the body
// was read. net/http sends the answer first, then reads what is left of
// the body (up to 256 KiB) before closing, so that the client, still
// writing it, is not reset before it reads the answer: a reset makes it
// see a broken pipe instead of the 413 or 401. Those reads get
// leaveBodyLinger, not the full read timeout, so a client that never
// sends its body holds the connection no longer than that.
func leaveBody(ctx context.Context, w http.ResponseWriter) {
	w.Header().Set("Connection", "close")
	setReadDeadline(ctx, w, leaveBodyLinger)
}

// leaveBodyLinger bounds the reads of a body left unread (see leaveBody).
const leaveBodyLinger = time.Second

// setReadDeadline shortens the time left to read r's body.
func setReadDeadline(ctx context.Context, w http.ResponseWriter, d time.Duration) {
	if cw, ok := ctx.Value(connWriterKey{}).(http.ResponseWriter); ok {
		w = cw
	}
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(d)) // unsupported: read_timeout still bounds it
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
	// ViolationsTotal and ViolationsTruncated say the list was cut short.
	ViolationsTotal     int  `json:"violations_total,omitempty"`
	ViolationsTruncated bool `json:"violations_truncated,omitempty"`
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
		leaveBody(ctx, w)
		p.unavailable(ctx, w, retryAfterUnavailable, "labelpipe is shutting down; retry shortly")
		return
	}
	if !p.router.IsRunning() {
		leaveBody(ctx, w)
		p.unavailable(ctx, w, retryAfterUnavailable, "labelpipe is starting; retry shortly")
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		p.replyUnread(ctx, w, http.StatusMethodNotAllowed, answer{Error: "use POST"})
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || (mt != "application/json" && mt != "text/json") {
			p.replyUnread(ctx, w, http.StatusUnsupportedMediaType, answer{Error: fmt.Sprintf("Content-Type is %q; want application/json", ct)})
			return
		}
	}
	if ce := r.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		p.replyUnread(ctx, w, http.StatusUnsupportedMediaType, answer{Error: fmt.Sprintf("Content-Encoding %q is not supported; send the body uncompressed", ce)})
		return
	}
	limit := p.cfg.Server.MaxBodyBytes
	if r.ContentLength > limit {
		// Said up front: refuse it without reading a byte.
		p.replyUnread(ctx, w, http.StatusRequestEntityTooLarge, answer{Error: tooLarge(limit)})
		return
	}
	// Whatever the headers can refuse is refused before a byte of the
	// body is read or any memory is set aside for it.
	id := watermill.NewULID()
	// One stage chain for the whole request: a reload swaps the chain for
	// the requests that come after.
	ch := p.takeChain()
	defer ch.refs.drop()
	stages := ch.stages
	verified, err := p.checkHeaders(ctx, stages, id, r.Header)
	if err != nil {
		code, a, _ := stageAnswer(err)
		p.replyUnread(ctx, w, code, a)
		return
	}
	n := r.ContentLength
	if n < 0 {
		n = limit // unknown length: the most it may be
	}
	var client netip.Addr // only an unverified body is charged to its sender
	if !verified {
		client = p.clients.addr(r)
	}
	release, err := p.bodies.reserve(ctx, n, p.cfg.Broker.QueueWait, verified, client)
	if err != nil {
		leaveBody(ctx, w)
		p.unavailable(ctx, w, retryAfterUnavailable, err.Error())
		return
	}
	defer release()
	if !verified {
		setReadDeadline(ctx, w, p.unverifiedReadTimeout())
	}
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
	e := &Export{ID: id, ReceivedAt: time.Now(), Header: r.Header, Body: body}
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.SetAttributes(attribute.String("labelpipe.export.id", e.ID), attribute.Int("http.request.body.size", len(body)))
	}

	if err := p.ingress(ctx, stages, e, nil); err != nil {
		// Not accepted: give back what earlier stages reserved (a dedupe
		// key), or the caller's retry would be taken for a duplicate.
		p.release(ctx, stages, e)
		p.replyStageError(ctx, w, e, err)
		return
	}
	if ev := e.Event(); !ch.events[ev] {
		p.release(ctx, stages, e)
		p.reply(ctx, w, http.StatusOK, answer{Status: "ignored", Reason: fmt.Sprintf("no sink subscribes to event %q", ev)})
		return
	}
	failpoint.Hit("before-publish") // reserved by dedupe, not yet stored
	admitted, ok := p.broker.Admit(ctx, p.cfg.Broker.QueueWait)
	if !ok {
		p.release(ctx, stages, e)
		p.unavailable(ctx, w, retryAfterUnavailable, "labelpipe's queue is full (the vendors are slower than the exports arriving); it was not accepted, retry shortly")
		return
	}
	defer admitted()
	if err := p.publish(ctx, e); err != nil {
		p.release(ctx, stages, e)
		p.log.ErrorContext(ctx, "durable publish failed", "export", e.ID, "err", err)
		p.unavailable(ctx, w, retryAfterUnavailable, "could not store the export (broker unavailable); it was not accepted, retry shortly")
		return
	}
	failpoint.Hit("after-publish") // stored, not confirmed nor answered
	p.confirm(ctx, stages, e)
	p.log.InfoContext(ctx, "export accepted", "export", e.ID, "event", e.Event())
	p.reply(ctx, w, http.StatusAccepted, answer{Status: "accepted", ID: e.ID, Key: e.key})
}

// checkHeaders runs the header checks of the leading raw stages. It
// reports whether the headers alone proved the caller (a header secret);
// when they cannot (a signature needs the body), the body is read from
// the unverified budget.
func (p *Pipeline) checkHeaders(ctx context.Context, stages []builtStage, id string, h http.Header) (verified bool, err error) {
	for _, s := range stages {
		if _, raw := s.stage.(RawStage); !raw {
			break
		}
		hc, ok := s.stage.(HeaderChecker)
		if !ok {
			continue
		}
		start := time.Now()
		proven, err := hc.CheckHeaders(h)
		if err != nil {
			// Only a refusal gets its span here; a pass is the stage's
			// Process span, once the body is in.
			sctx, span := p.stageSpan(ctx, s, id, start)
			p.endStage(sctx, span, s, id, start, err)
			return false, err
		}
		verified = verified || proven
	}
	return verified, nil
}

func (p *Pipeline) unverifiedReadTimeout() time.Duration {
	if d := p.cfg.Server.Unverified.ReadTimeout; d > 0 {
		return d
	}
	return 15 * time.Second
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
		return se.Status, answer{Error: se.Msg, Violations: se.Violations,
			ViolationsTotal: se.ViolationsTotal, ViolationsTruncated: se.ViolationsTruncated}, se.RetryAfter
	}
}
