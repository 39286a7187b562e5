package sinks_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/sinks"
)

// answer is a canned vendor answer.
type answer struct {
	status int
	header map[string]string
	body   string
}

// vendor is a test server that answers with a fixed answer and records
// what it received.
type vendor struct {
	*httptest.Server
	mu      sync.Mutex
	answer  answer
	headers []http.Header
	bodies  []string
}

func newVendor(t *testing.T, a answer) *vendor {
	t.Helper()
	v := &vendor{answer: a}
	v.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		v.mu.Lock()
		v.headers = append(v.headers, r.Header.Clone())
		v.bodies = append(v.bodies, string(b))
		a := v.answer
		v.mu.Unlock()
		for k, val := range a.header {
			w.Header().Set(k, val)
		}
		w.WriteHeader(a.status)
		_, _ = io.WriteString(w, a.body)
	}))
	t.Cleanup(v.Close)
	return v
}

func (v *vendor) lastHeader() http.Header {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.headers[len(v.headers)-1]
}

func (v *vendor) received() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]string(nil), v.bodies...)
}

func newHTTPSink(t *testing.T, url string, mut func(*sinks.HTTPConfig)) *sinks.HTTP {
	t.Helper()
	c := sinks.HTTPDefaults()
	c.URL = url
	if mut != nil {
		mut(c)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	s, err := sinks.NewHTTP(c, pipeline.Env{Name: "vendor"})
	if err != nil {
		t.Fatalf("NewHTTP: %v", err)
	}
	return s
}

func request(body string) *pipeline.Request {
	return &pipeline.Request{Sink: "vendor", ExportID: "exp1", Chunk: 0, Chunks: 1, Body: []byte(body)}
}

func deliveryError(t *testing.T, err error) *pipeline.DeliveryError {
	t.Helper()
	var de *pipeline.DeliveryError
	if !errors.As(err, &de) {
		t.Fatalf("error %v (%T) is not a *pipeline.DeliveryError", err, err)
	}
	return de
}

func TestHTTPClassification(t *testing.T) {
	tests := []struct {
		status   int
		conflict bool // conflict_is_success
		success  []int
		wantErr  bool
		retry    bool
	}{
		{status: 200},
		{status: 201},
		{status: 204},
		{status: 400, wantErr: true},
		{status: 401, wantErr: true},
		{status: 403, wantErr: true},
		{status: 404, wantErr: true},
		{status: 409, wantErr: true},
		{status: 409, conflict: true},
		{status: 422, wantErr: true},
		{status: 408, wantErr: true, retry: true},
		{status: 425, wantErr: true, retry: true},
		{status: 429, wantErr: true, retry: true},
		{status: 500, wantErr: true, retry: true},
		{status: 502, wantErr: true, retry: true},
		{status: 503, wantErr: true, retry: true},
		{status: 200, success: []int{201}, wantErr: true},
		{status: 201, success: []int{201}},
		{status: 503, conflict: true, wantErr: true, retry: true},
		{status: 301, wantErr: true},
		{status: 308, wantErr: true},
	}
	for _, tt := range tests {
		name := http.StatusText(tt.status)
		if tt.conflict {
			name += " conflict_is_success"
		}
		if tt.success != nil {
			name += " success_status"
		}
		t.Run(name, func(t *testing.T) {
			v := newVendor(t, answer{status: tt.status, body: `{"error":"vendor says ` + http.StatusText(tt.status) + `"}`,
				header: map[string]string{"Location": "/moved"}})
			s := newHTTPSink(t, v.URL, func(c *sinks.HTTPConfig) {
				c.ConflictIsSuccess = tt.conflict
				c.SuccessStatus = tt.success
			})
			err := s.Send(t.Context(), request(`{"a":1}`))
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("Send = %v, want success", err)
				}
				return
			}
			de := deliveryError(t, err)
			if de.Status != tt.status || de.Retry != tt.retry {
				t.Fatalf("DeliveryError status %d retry %v, want %d retry %v", de.Status, de.Retry, tt.status, tt.retry)
			}
			if tt.status >= 300 && tt.status < 400 {
				if !strings.Contains(de.Msg, "/moved: fix the sink's url") {
					t.Fatalf("msg %q should say where the redirect points", de.Msg)
				}
				return
			}
			if !strings.Contains(de.Answer, "vendor says") || !strings.Contains(de.Msg, "vendor says") {
				t.Fatalf("msg %q / answer %q do not carry the vendor's message", de.Msg, de.Answer)
			}
		})
	}
}

func TestHTTPNoAnswer(t *testing.T) {
	t.Run("connection refused", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		s := newHTTPSink(t, "http://"+addr+"/v1", nil)
		de := deliveryError(t, s.Send(t.Context(), request(`{}`)))
		if !de.Retry || de.Status != 0 {
			t.Fatalf("refused: %+v, want retryable without status", de)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		release := make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-release:
			}
		}))
		t.Cleanup(srv.Close)
		t.Cleanup(func() { close(release) })
		s := newHTTPSink(t, srv.URL, nil)
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		de := deliveryError(t, s.Send(ctx, request(`{}`)))
		if !de.Retry || de.Status != 0 || !strings.Contains(de.Msg, "deadline") {
			t.Fatalf("timeout: %+v, want retryable, no status, saying the deadline passed", de)
		}
	})
	t.Run("TLS handshake never answered", func(t *testing.T) {
		// The vendor takes the connection and never answers the
		// ClientHello. The client's own 10s handshake limit ends the
		// attempt, not the attempt's far later deadline (30s by default).
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() { _, _ = io.Copy(io.Discard, c); c.Close() }() // until the client hangs up
			}
		}()
		s := newHTTPSink(t, "https://"+l.Addr().String()+"/v1", nil)
		ctx, cancel := context.WithTimeout(t.Context(), 25*time.Second)
		defer cancel()
		de := deliveryError(t, s.Send(ctx, request(`{}`)))
		if !de.Retry || de.Status != 0 || !strings.Contains(de.Msg, "TLS handshake timeout") {
			t.Fatalf("hung handshake: %+v, want retryable, no status, saying the TLS handshake timed out", de)
		}
	})
}

func TestHTTPRetryAfter(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name     string
		header   string
		min, max time.Duration
	}{
		{"seconds", "3", 3 * time.Second, 3 * time.Second},
		{"http date", now.Add(10 * time.Second).UTC().Format(http.TimeFormat), 7 * time.Second, 10 * time.Second},
		{"date in the past", now.Add(-time.Minute).UTC().Format(http.TimeFormat), 0, 0},
		{"garbage", "soon", 0, 0},
		{"negative", "-5", 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newVendor(t, answer{status: 429, header: map[string]string{"Retry-After": tt.header}})
			s := newHTTPSink(t, v.URL, nil)
			de := deliveryError(t, s.Send(t.Context(), request(`{}`)))
			if de.After < tt.min || de.After > tt.max || de.RetryAfter() != de.After {
				t.Fatalf("After = %v, want within [%v, %v]", de.After, tt.min, tt.max)
			}
		})
	}
}

func TestHTTPRequestShape(t *testing.T) {
	v := newVendor(t, answer{status: 200})
	s := newHTTPSink(t, v.URL+"/v1/task/imageannotation", func(c *sinks.HTTPConfig) {
		c.Method = http.MethodPut
		c.BasicAuth = &sinks.BasicAuth{Username: "live_key"}
		c.Headers = map[string]string{"X-Custom": "yes"}
		c.IdempotencyHeader = "Idempotency-Key"
	})
	r := &pipeline.Request{Sink: "scale", ExportID: "e9", Chunk: 2, Chunks: 3, Body: []byte(`{"unique_id":"x"}`)}
	if err := s.Send(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	h := v.lastHeader()
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte("live_key:"))
	checks := map[string]string{
		"Authorization":   want,
		"Content-Type":    "application/json",
		"X-Custom":        "yes",
		"Idempotency-Key": "e9.scale.2",
	}
	for k, w := range checks {
		if got := h.Get(k); got != w {
			t.Errorf("header %s = %q, want %q", k, got, w)
		}
	}
	if got := v.received(); len(got) != 1 || got[0] != `{"unique_id":"x"}` {
		t.Errorf("vendor received %q", got)
	}
}

func TestHTTPInjectsTraceparent(t *testing.T) {
	v := newVendor(t, answer{status: 200})
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	c := sinks.HTTPDefaults()
	c.URL = v.URL
	s, err := sinks.NewHTTP(c, pipeline.Env{Name: "vendor", TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	ctx, span := tp.Tracer("test").Start(t.Context(), "deliver")
	defer span.End()
	if err := s.Send(ctx, request(`{}`)); err != nil {
		t.Fatal(err)
	}
	tpHeader := v.lastHeader().Get("Traceparent")
	if !strings.Contains(tpHeader, span.SpanContext().TraceID().String()) {
		t.Fatalf("traceparent %q does not carry trace %s", tpHeader, span.SpanContext().TraceID())
	}
}

func TestHTTPAnswerIsCut(t *testing.T) {
	v := newVendor(t, answer{status: 500, body: strings.Repeat("é", 3000)})
	s := newHTTPSink(t, v.URL, nil)
	de := deliveryError(t, s.Send(t.Context(), request(`{}`)))
	if len(de.Answer) > 2048 || len(de.Answer) < 2000 || !strings.HasPrefix(de.Answer, "éé") {
		t.Fatalf("answer of %d bytes, want the first 2 KiB", len(de.Answer))
	}
	if len(de.Msg) > 600 {
		t.Fatalf("message of %d bytes: it should quote only the start", len(de.Msg))
	}
}

func TestHTTPRenderChunks(t *testing.T) {
	s := newHTTPSink(t, "https://api.scale.com/v1/task/imageannotation", func(c *sinks.HTTPConfig) {
		c.Body = `.issue.elements[] | {unique_id: "\($export.issue_id).\(.element_id)", attachment: .url, sink: $export.sink}`
	})
	payload := map[string]any{"issue": map[string]any{"elements": []any{
		map[string]any{"element_id": "a", "url": "https://img/a.jpg?x=1&y=2"},
		map[string]any{"element_id": "b", "url": "https://img/b.jpg"},
		map[string]any{"element_id": "c", "url": "https://img/c.jpg"},
	}}}
	bodies, err := s.Render(t.Context(), payload, map[string]any{"issue_id": "i7", "sink": "scale"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`{"attachment":"https://img/a.jpg?x=1&y=2","sink":"scale","unique_id":"i7.a"}`,
		`{"attachment":"https://img/b.jpg","sink":"scale","unique_id":"i7.b"}`,
		`{"attachment":"https://img/c.jpg","sink":"scale","unique_id":"i7.c"}`,
	}
	if len(bodies) != len(want) {
		t.Fatalf("%d bodies, want %d", len(bodies), len(want))
	}
	for i := range want {
		if string(bodies[i]) != want[i] {
			t.Errorf("body %d = %s, want %s", i, bodies[i], want[i])
		}
	}
	none, err := s.Render(t.Context(), map[string]any{"issue": map[string]any{"elements": []any{}}}, nil)
	if err != nil || len(none) != 0 {
		t.Fatalf("no elements: %d bodies, %v; want none", len(none), err)
	}
	if _, err := s.Render(t.Context(), map[string]any{"issue": 3}, nil); err == nil {
		t.Fatal("a jq error must fail Render")
	}
}

func TestHTTPDescribeRedacts(t *testing.T) {
	s := newHTTPSink(t, "https://user:pw@api.example.com/import?token=abc&project=7", func(c *sinks.HTTPConfig) {
		c.Headers = map[string]string{
			"Authorization":  "Token sekrit",
			"X-Api-Key":      "sekrit",
			"X-Auth-Tenant":  "sekrit",
			"Client-Secret":  "sekrit",
			"X-Access-Token": "sekrit",
			"X-Team":         "vision",
		}
		c.IdempotencyHeader = "Idempotency-Key"
	})
	d := s.Describe(request(`{"a":1}`))
	headers := d["headers"].(map[string]string)
	for _, k := range []string{"Authorization", "X-Api-Key", "X-Auth-Tenant", "Client-Secret", "X-Access-Token"} {
		if headers[k] != "REDACTED" {
			t.Errorf("header %s = %q, want REDACTED", k, headers[k])
		}
	}
	if headers["X-Team"] != "vision" || headers["Content-Type"] != "application/json" || headers["Idempotency-Key"] != "exp1.vendor.0" {
		t.Errorf("headers %v: plain headers must show", headers)
	}
	if u := d["url"].(string); strings.Contains(u, "pw") || strings.Contains(u, "abc") || !strings.Contains(u, "project=7") {
		t.Errorf("url %q: credentials must be redacted, the rest kept", u)
	}
	if body, _ := d["body"].(json.RawMessage); d["method"] != "POST" || string(body) != `{"a":1}` {
		t.Errorf("describe = %v", d)
	}

	basic := newHTTPSink(t, "https://api.scale.com/v1/task", func(c *sinks.HTTPConfig) { c.BasicAuth = &sinks.BasicAuth{Username: "live_key"} })
	bh := basic.Describe(request(`{}`))["headers"].(map[string]string)
	if bh["Authorization"] != "REDACTED" {
		t.Errorf("basic auth shows as %q", bh["Authorization"])
	}
	for k, v := range bh {
		if strings.Contains(v, base64.StdEncoding.EncodeToString([]byte("live_key:"))) {
			t.Errorf("header %s leaks the key", k)
		}
	}
}

func TestHTTPValidate(t *testing.T) {
	tests := []struct {
		name  string
		mut   func(*sinks.HTTPConfig)
		field string
	}{
		{"missing url", func(c *sinks.HTTPConfig) { c.URL = "" }, "url"},
		{"relative url", func(c *sinks.HTTPConfig) { c.URL = "/v1/task" }, "url"},
		{"ftp url", func(c *sinks.HTTPConfig) { c.URL = "ftp://host/x" }, "url"},
		{"bad method", func(c *sinks.HTTPConfig) { c.Method = "FETCH" }, "method"},
		{"bad jq", func(c *sinks.HTTPConfig) { c.Body = ".a |" }, "body"},
		{"bad header name", func(c *sinks.HTTPConfig) { c.Headers = map[string]string{"Bad Header": "x"} }, "headers.Bad Header"},
		{"header value with newline", func(c *sinks.HTTPConfig) { c.Headers = map[string]string{"X": "a\r\nb"} }, "headers.X"},
		{"basic auth and authorization", func(c *sinks.HTTPConfig) {
			c.BasicAuth = &sinks.BasicAuth{Username: "k"}
			c.Headers = map[string]string{"authorization": "x"}
		}, "basic_auth"},
		{"bad idempotency header", func(c *sinks.HTTPConfig) { c.IdempotencyHeader = "a b" }, "idempotency_header"},
		{"bad success status", func(c *sinks.HTTPConfig) { c.SuccessStatus = []int{200, 99} }, "success_status[1]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := sinks.HTTPDefaults()
			c.URL = "https://api.example.com/x"
			tt.mut(c)
			var fe *pipeline.FieldError
			if err := c.Validate(); !errors.As(err, &fe) || fe.Field != tt.field {
				t.Fatalf("Validate = %v, want a field error on %s", err, tt.field)
			}
		})
	}
	ok := sinks.HTTPDefaults()
	ok.URL = "https://api.example.com/x"
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults with a url: %v", err)
	}
}
