package sinks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/net/http/httpguts"

	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/redact"
)

// This file is the HTTP plumbing the http and graphql sinks share: the
// client, how a vendor's answer is classified, and what preview may show.

// answerLimit is how much of a vendor's answer a DeliveryError keeps.
const answerLimit = 2 << 10

// baseTransport is shared by every sink, so that sinks talking to the same
// vendor share its connections. The attempt timeout comes from the router's
// context, so there is no client-wide timeout here.
var baseTransport = func() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 512
	t.MaxIdleConnsPerHost = 64
	t.IdleConnTimeout = 90 * time.Second
	t.TLSHandshakeTimeout = 10 * time.Second
	t.ExpectContinueTimeout = time.Second
	return t
}()

// newClient returns a client that traces each request with the injected
// provider and sends W3C traceparent to the vendor, whatever the global
// propagator is.
func newClient(env pipeline.Env) *http.Client {
	tp := env.TracerProvider
	if tp == nil {
		tp = tracenoop.NewTracerProvider()
	}
	mp := env.MeterProvider
	if mp == nil {
		mp = metricnoop.NewMeterProvider()
	}
	return &http.Client{
		Transport: otelhttp.NewTransport(baseTransport,
			otelhttp.WithTracerProvider(redactingTracerProvider{tp}),
			otelhttp.WithMeterProvider(mp),
			otelhttp.WithPropagators(propagation.TraceContext{})),
		// A redirect on a vendor API call means the URL is wrong (http for
		// https, an old host); following it would turn a POST into a GET
		// and lose the body. Report it instead.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// urlFull is the span attribute holding the request URL.
const urlFull = attribute.Key("url.full")

// redactingTracerProvider gives otelhttp spans that redact url.full:
// otelhttp (v0.72) strips only the userinfo, and a vendor URL may carry its
// credential in the path or the query. Span start options cannot do it,
// since otelhttp sets the attribute after the span starts.
type redactingTracerProvider struct{ trace.TracerProvider }

func (p redactingTracerProvider) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	return redactingTracer{p.TracerProvider.Tracer(name, opts...)}
}

type redactingTracer struct{ trace.Tracer }

func (t redactingTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	ctx, span := t.Tracer.Start(ctx, name, opts...)
	if !span.IsRecording() {
		return ctx, span
	}
	rs := redactingSpan{span}
	return trace.ContextWithSpan(ctx, rs), rs
}

type redactingSpan struct{ trace.Span }

func (s redactingSpan) SetAttributes(kv ...attribute.KeyValue) {
	for i, a := range kv {
		if a.Key == urlFull {
			kv = slices.Clone(kv) // the caller's slice is not ours to change
			kv[i] = urlFull.String(redact.String(a.Value.Emit()))
			break
		}
	}
	s.Span.SetAttributes(kv...)
}

// BasicAuth is HTTP basic authentication.
type BasicAuth struct {
	// Username, for Scale the API key. A secret: never shown.
	Username string `yaml:"username"`
	// Password, empty for Scale. A secret: never shown.
	Password string `yaml:"password"`
}

// response is what came back from one request.
type response struct {
	status int
	header http.Header
	// body holds up to the limit the caller asked for.
	body []byte
}

// send makes one request and reads up to limit bytes of the answer. A
// transport failure comes back as a retryable *pipeline.DeliveryError.
func send(ctx context.Context, c *http.Client, req *http.Request, limit int64) (*response, error) {
	resp, err := c.Do(req)
	if err != nil {
		return nil, transportError(ctx, req, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		// The status arrived; the body broke off. Judge by the status.
		body = append(body, []byte(" [answer cut off: "+err.Error()+"]")...)
	}
	// Drain a little more so the connection can be reused.
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
	return &response{status: resp.StatusCode, header: resp.Header, body: body}, nil
}

// transportError classifies a request that got no answer: timeouts,
// refused and reset connections are all worth another attempt.
func transportError(ctx context.Context, req *http.Request, err error) error {
	target := req.Method + " " + redact.URL(req.URL)
	var msg string
	var ne net.Error
	switch {
	case ctx.Err() != nil:
		msg = fmt.Sprintf("%s: no answer before the attempt ended (%v)", target, context.Cause(ctx))
	case errors.As(err, &ne) && ne.Timeout():
		msg = fmt.Sprintf("%s: timed out: %v", target, redact.Error(unwrapURLError(err)))
	default:
		msg = fmt.Sprintf("%s: %v", target, redact.Error(unwrapURLError(err)))
	}
	return &pipeline.DeliveryError{Retry: true, Msg: msg}
}

// unwrapURLError drops *url.Error's "Post \"url\":" prefix, which would
// repeat the URL, secrets and all.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// retryableStatus says whether another attempt may get a better answer.
func retryableStatus(code int) bool {
	switch code {
	case http.StatusRequestTimeout, http.StatusTooEarly, http.StatusTooManyRequests:
		return true
	}
	return code >= 500
}

// statusError is the DeliveryError for an unwanted status.
func statusError(req *http.Request, resp *response, retry bool) *pipeline.DeliveryError {
	msg := fmt.Sprintf("%s %s: vendor answered %d %s", req.Method, redact.URL(req.URL), resp.status, http.StatusText(resp.status))
	if loc := resp.header.Get("Location"); resp.status >= 300 && resp.status < 400 && loc != "" {
		if u, err := req.URL.Parse(loc); err == nil {
			loc = redact.URL(u)
		}
		msg += " (redirect to " + loc + ": fix the sink's url)"
	} else if detail := vendorMessage(resp.body); detail != "" {
		msg += ": " + detail
	}
	return deliveryError(resp, retry, msg)
}

// deliveryError describes a vendor answer that was not a success: its
// status, whether to retry and after how long, and the start of it.
func deliveryError(resp *response, retry bool, msg string) *pipeline.DeliveryError {
	return &pipeline.DeliveryError{
		Status: resp.status,
		Retry:  retry,
		After:  parseRetryAfter(resp.header.Get("Retry-After"), time.Now()),
		Msg:    msg,
		Answer: answer(resp.body),
	}
}

// parseRetryAfter reads Retry-After as delay-seconds or an HTTP-date
// (RFC 9110 §10.2.3). Anything else, or a time in the past, is 0.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		if secs > int64(24*time.Hour/time.Second) { // nonsense; the policy caps it anyway
			secs = int64(24 * time.Hour / time.Second)
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}

// answer is the start of a vendor's answer, cut on a rune boundary.
// send reads at most answerLimit bytes, so an answer that long may have
// been cut inside a character: that character is dropped whole.
func answer(b []byte) string {
	if len(b) >= answerLimit {
		b = b[:answerLimit]
		i := len(b) - 1
		for i > 0 && len(b)-i < utf8.UTFMax && !utf8.RuneStart(b[i]) {
			i--
		}
		if !utf8.FullRune(b[i:]) {
			b = b[:i]
		}
	}
	return string(b)
}

// vendorMessage pulls a human message out of a JSON error answer (the
// usual "error", "message", "detail" fields), else the start of the text.
func vendorMessage(b []byte) string {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return ""
	}
	var obj map[string]any
	if json.Unmarshal(b, &obj) == nil {
		for _, k := range []string{"error", "message", "detail", "error_description"} {
			if s, ok := obj[k].(string); ok && s != "" {
				return strconv.Quote(clip(s, 300))
			}
		}
		if errs, ok := obj["errors"].([]any); ok && len(errs) > 0 {
			if e, ok := errs[0].(map[string]any); ok {
				if s, ok := e["message"].(string); ok {
					return strconv.Quote(clip(s, 300))
				}
			}
		}
	}
	return strconv.Quote(clip(string(b), 200))
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return cutValid(s[:n]) + "…"
}

// cutValid drops trailing bytes until s is valid UTF-8, so that a cut
// never ends inside a rune.
func cutValid(s string) string {
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// Redacted stands in for a secret in preview output and messages.
const Redacted = redact.Redacted

// redactHeaders copies h for display, with secrets replaced.
func redactHeaders(h http.Header) map[string]string {
	out := make(map[string]string, len(h))
	for k, vs := range h {
		v := strings.Join(vs, ", ")
		if redact.Sensitive(k) {
			v = Redacted
		}
		out[k] = v
	}
	return out
}

// describeBody is a request body for preview: the JSON itself when it is
// JSON, else the text.
func describeBody(b []byte) any {
	if json.Valid(b) {
		return json.RawMessage(b)
	}
	return string(b)
}

// validateURL checks a vendor URL: absolute http(s) with a host.
func validateURL(field, raw string) error {
	if raw == "" {
		return pipeline.FieldErr(field, "is required")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return pipeline.FieldErr(field, "not a URL: %v", unwrapURLError(err))
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return pipeline.FieldErr(field, "must be an absolute http:// or https:// URL")
	}
	if u.Host == "" {
		return pipeline.FieldErr(field, "has no host")
	}
	return nil
}

// validateHeaders checks header names and values.
func validateHeaders(field string, h map[string]string) []error {
	var errs []error
	for k, v := range h {
		if !httpguts.ValidHeaderFieldName(k) {
			errs = append(errs, pipeline.FieldErr(field+"."+k, "%q is not a valid header name", k))
		}
		if strings.ContainsAny(v, "\r\n\x00") {
			errs = append(errs, pipeline.FieldErr(field+"."+k, "value holds a line break or NUL"))
		}
	}
	return errs
}

// setHeaders applies the configured headers over the defaults every
// vendor request carries.
func setHeaders(req *http.Request, configured map[string]string) {
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "labelpipe")
	for k, v := range configured {
		req.Header.Set(k, v)
	}
}

// encodeJSON encodes v compactly without HTML escaping, so that URLs in a
// body (with & in their query) reach the vendor as written.
func encodeJSON(buf *bytes.Buffer, v any) error {
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return err
	}
	buf.Truncate(buf.Len() - 1) // Encode's newline
	return nil
}

// envRefEscaped is a ${VAR} left unset in a preview, as a URL escapes it.
var envRefEscaped = regexp.MustCompile(`\$%7B([A-Za-z_][A-Za-z0-9_]*)%7D`)

// describeURL is the URL a preview shows: redacted, with a ${VAR} the
// preview left unset shown as written rather than URL-escaped.
func describeURL(u *url.URL) string {
	return envRefEscaped.ReplaceAllString(redact.URL(u), "$${$1}")
}
