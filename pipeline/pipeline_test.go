package pipeline_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/labelpipe/labelpipe/builtin"
	"github.com/labelpipe/labelpipe/configs"
	"github.com/labelpipe/labelpipe/internal/testutil"
	"github.com/labelpipe/labelpipe/internal/vendortest"
	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// This file drives a whole pipeline in process: the webhook handler and the
// admin API over httptest, the memory broker, and the sinks against the
// fake vendors of internal/vendortest. Timing assertions use the
// timestamps the fakes record, never sleeps.

const (
	hookSecret    = "s3cret"
	hookOldSecret = "old-s3cret" // still accepted: rotation
	lbKey         = "lb-key"
	scaleKey      = "scale-key"
	lsToken       = "ls-token"
	lsProject     = 7
	lbProject     = "proj-lb"
)

// harness is one pipeline under test.
type harness struct {
	t       *testing.T
	p       *pipeline.Pipeline
	dir     string
	webhook *httptest.Server
	admin   *httptest.Server
	logs    *testutil.LockedBuffer
	stop    context.CancelFunc
	done    chan error // Run's result; nil until run
	spans   *tracetest.SpanRecorder
}

// newHarness builds (but does not run) a pipeline from config text. The
// config lives in a temporary directory, so relative file sink paths land
// there.
func newHarness(t *testing.T, cfgText string) *harness {
	t.Helper()
	return newHarnessWith(t, cfgText, nil)
}

// newHarnessWith is newHarness with the pipeline's options adjusted by opt.
func newHarnessWith(t *testing.T, cfgText string, opt func(*pipeline.Options)) *harness {
	t.Helper()
	h := &harness{t: t, dir: t.TempDir(), logs: &testutil.LockedBuffer{}, spans: tracetest.NewSpanRecorder()}
	cfg, err := pipeline.ParseConfig(filepath.Join(h.dir, "labelpipe.yaml"), []byte(cfgText))
	if err != nil {
		t.Fatalf("config:\n%v\n--- config text ---\n%s", err, cfgText)
	}
	// A real SDK provider, so that answers and dead letters carry trace
	// ids, recording every span for the span-tree tests.
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(h.spans))
	opts := pipeline.Options{
		Registry:       builtin.Registry(),
		Logger:         slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		TracerProvider: tp,
		ReplicaID:      "test",
		Version:        "test",
	}
	if opt != nil {
		opt(&opts)
	}
	h.p, err = pipeline.New(cfg, opts)
	if err != nil {
		t.Fatalf("pipeline.New: %v", err)
	}
	h.webhook = httptest.NewServer(h.p.Handler())
	h.admin = httptest.NewServer(h.p.AdminHandler())
	t.Cleanup(func() {
		if h.stop != nil {
			h.stop()
			select {
			case err := <-h.done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("Run did not return within 30s of cancel")
			}
		}
		h.webhook.Close()
		h.admin.Close()
		if err := h.p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		_ = tp.Shutdown(context.Background())
		if t.Failed() {
			t.Logf("pipeline log:\n%s", h.logs.String())
		}
	})
	return h
}

// startHarness builds a pipeline, runs it and waits until it is ready.
func startHarness(t *testing.T, cfgText string) *harness {
	t.Helper()
	h := newHarness(t, cfgText)
	h.run()
	return h
}

// run starts Run and waits (bounded) for Ready.
func (h *harness) run() {
	h.t.Helper()
	ctx, cancel := context.WithCancel(h.t.Context())
	h.stop = cancel
	h.done = make(chan error, 1)
	go func() { h.done <- h.p.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		err := h.p.Ready(h.t.Context())
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("pipeline not ready after 10s: %v", err)
		}
		select {
		case err := <-h.done:
			h.done <- err
			h.t.Fatalf("Run returned before the pipeline was ready: %v", err)
		case <-tick.C:
		}
	}
}

// webhookAnswer is a decoded webhook response.
type webhookAnswer struct {
	Code       int
	Header     http.Header
	Raw        string
	Status     string               `json:"status"`
	ID         string               `json:"id"`
	Key        string               `json:"key"`
	TraceID    string               `json:"trace_id"`
	Reason     string               `json:"reason"`
	Error      string               `json:"error"`
	Violations []pipeline.Violation `json:"violations"`
}

// hookReq describes one webhook request.
type hookReq struct {
	method      string // default POST
	contentType string // default application/json; "-" for none
	secret      string // X-Aquarium-Secret; "" for none
	header      map[string]string
	body        []byte
}

func (h *harness) send(r hookReq) webhookAnswer {
	h.t.Helper()
	method := cmpOr(r.method, http.MethodPost)
	req, err := http.NewRequestWithContext(h.t.Context(), method, h.webhook.URL+"/webhook", bytes.NewReader(r.body))
	if err != nil {
		h.t.Fatal(err)
	}
	switch r.contentType {
	case "":
		req.Header.Set("Content-Type", "application/json")
	case "-":
	default:
		req.Header.Set("Content-Type", r.contentType)
	}
	if r.secret != "" {
		req.Header.Set("X-Aquarium-Secret", r.secret)
	}
	for k, v := range r.header {
		req.Header.Set(k, v)
	}
	resp, err := h.webhook.Client().Do(req)
	if err != nil {
		h.t.Fatalf("webhook request: %v", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatalf("read webhook answer: %v", err)
	}
	a := webhookAnswer{Code: resp.StatusCode, Header: resp.Header, Raw: string(raw)}
	if err := json.Unmarshal(raw, &a); err != nil {
		h.t.Fatalf("webhook answer is not JSON (%d): %q", resp.StatusCode, raw)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		h.t.Errorf("answer Content-Type = %q, want application/json", ct)
	}
	return a
}

// sendWaitsThenUnavailable posts an export that cannot get in and requires
// a 503 whose error mentions why, with a Retry-After, after the request
// waited queue_wait for room.
func (h *harness) sendWaitsThenUnavailable(body []byte, queueWait time.Duration, why string) {
	h.t.Helper()
	start := time.Now()
	a := h.send(hookReq{secret: hookSecret, body: body})
	if a.Code != http.StatusServiceUnavailable || !strings.Contains(a.Error, why) {
		h.t.Fatalf("got %d %s, want 503 saying %q", a.Code, a.Raw, why)
	}
	if waited := time.Since(start); waited < queueWait {
		h.t.Errorf("answered after %v, want it to wait queue_wait (%v) for room first", waited, queueWait)
	}
	if ra := a.Header.Get("Retry-After"); ra == "" || ra == "0" {
		h.t.Errorf("Retry-After = %q, want a positive number of seconds", ra)
	}
}

// accept posts an export with the right secret and requires a 202.
func (h *harness) accept(body []byte) webhookAnswer {
	h.t.Helper()
	a := h.send(hookReq{secret: hookSecret, body: body})
	if a.Code != http.StatusAccepted || a.Status != "accepted" || a.ID == "" {
		h.t.Fatalf("want 202 accepted with an id, got %d %s", a.Code, a.Raw)
	}
	return a
}

func (h *harness) adminDo(method, path string, body io.Reader, out any) int {
	h.t.Helper()
	req, err := http.NewRequestWithContext(h.t.Context(), method, h.admin.URL+path, body)
	if err != nil {
		h.t.Fatal(err)
	}
	resp, err := h.admin.Client().Do(req)
	if err != nil {
		h.t.Fatalf("admin %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			h.t.Fatalf("admin %s %s: answer is not JSON: %q", method, path, raw)
		}
	}
	return resp.StatusCode
}

// deadLetters lists a sink's DLQ through the admin API.
func (h *harness) deadLetters(sink string) []backend.DeadLetter {
	h.t.Helper()
	var out []backend.DeadLetter
	if code := h.adminDo(http.MethodGet, "/api/dlq?sink="+url.QueryEscape(sink), nil, &out); code != http.StatusOK {
		h.t.Fatalf("GET /api/dlq: %d", code)
	}
	return out
}

// waitDeadLetters polls the DLQ until it holds n entries.
func (h *harness) waitDeadLetters(sink string, n int) []backend.DeadLetter {
	h.t.Helper()
	var got []backend.DeadLetter
	h.eventually(10*time.Second, fmt.Sprintf("%d dead letters for %s", n, sink), func() bool {
		got = h.deadLetters(sink)
		return len(got) >= n
	})
	return got
}

// sinkInfo is one entry of GET /api/sinks.
type sinkInfo struct {
	Name       string  `json:"name"`
	Breaker    string  `json:"breaker"`
	QueueDepth int64   `json:"queue_depth"`
	DLQ        int64   `json:"dlq"`
	Paused     bool    `json:"paused"`
	PausedBy   string  `json:"paused_by"`
	Oldest     float64 `json:"oldest_pending_seconds"`
	Rate       int64   `json:"delivered_last_minute_here"`
	LastErr    string  `json:"last_error"`
}

func (h *harness) sink(name string) sinkInfo {
	h.t.Helper()
	var all []sinkInfo
	if code := h.adminDo(http.MethodGet, "/api/sinks", nil, &all); code != http.StatusOK {
		h.t.Fatalf("GET /api/sinks: %d", code)
	}
	for _, s := range all {
		if s.Name == name {
			return s
		}
	}
	h.t.Fatalf("no sink %q in /api/sinks", name)
	return sinkInfo{}
}

// eventually polls cond every few milliseconds until it holds, failing the
// test after within.
func (h *harness) eventually(within time.Duration, what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("gave up after %v waiting for %s", within, what)
		}
		select {
		case <-h.t.Context().Done():
			h.t.Fatalf("test ended waiting for %s", what)
		case <-tick.C:
		}
	}
}

// waitFake waits for a fake vendor with a deadline.
func waitFake(t *testing.T, what string, wait func(context.Context) error) {
	t.Helper()
	waitFakeWithin(t, 15*time.Second, what, wait)
}

// waitFakeWithin is waitFake for a wait that is mostly throughput (thousands
// of requests), which a loaded machine with -race makes slow but not wrong.
func waitFakeWithin(t *testing.T, limit time.Duration, what string, wait func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), limit)
	defer cancel()
	if err := wait(ctx); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// issueSeq makes issue ids unique, so that the dedupe stage lets each
// export through.
var issueSeq atomic.Int64

// samplePayload returns a sample payload from configs/payloads with a fresh
// issue id, and that id.
func samplePayload(t testing.TB, file string) ([]byte, string) {
	t.Helper()
	var doc map[string]any
	raw, err := configs.Payloads.ReadFile("payloads/" + file)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("issue_t%d", issueSeq.Add(1))
	if issue, ok := doc["issue"].(map[string]any); ok {
		issue["id"] = id
	}
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return b, id
}

func rawPayload(t testing.TB, file string) []byte {
	t.Helper()
	b, err := configs.Payloads.ReadFile("payloads/" + file)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// indent prefixes every line of s with n spaces, for jq programs in YAML
// block scalars.
func indent(s string, n int) string {
	pad := strings.Repeat(" ", n)
	return pad + strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n"+pad)
}

// The vendor requests, as in configs/vendors.yaml.
const (
	lbQuery = `mutation QueueIssue($projectId: ID!, $name: String!, $globalKeys: [ID!]) {
  project(where: {id: $projectId}) {
    createBatchV2(input: {name: $name, globalKeys: $globalKeys, priority: 5}) { batch { id } failedDataRowIds }
  }
}`
	lbVariables = `[.issue.elements[].frame_id] | unique
| range(0; length; 100000) as $i
| {projectId: "` + lbProject + `",
   name: "aquarium-\($export.issue_id)-\($export.key)-\($i / 100000)",
   globalKeys: .[$i:$i + 100000]}`
	scaleBody = `.issue.elements[] as $el
| {project: "relabel", batch: "aquarium-\($export.issue_id)",
   attachment: $el.frame_data.sensor_data[0].data_urls.image_url,
   unique_id: "\($export.key)-\($el.element_id)",
   geometries: {box: {objects_to_annotate: ([$el.frame_data.label_data[]?.label] | unique)}},
   metadata: {issue_id: $export.issue_id, export_id: $export.id, element_id: $el.element_id}}`
	lsBody = `[.issue.elements[] | {
    data: {image: .frame_data.sensor_data[0].data_urls.image_url},
    meta: {issue_id: $export.issue_id, export_id: $export.id, element_id: .element_id}}]
| range(0; length; 1000) as $i | .[$i:$i + 1000]`
)

// fastPolicy retries quickly and opens the breaker only after many
// failures, so that it stays out of the way unless a test wants it.
const fastPolicy = `
    retry: {max_attempts: 5, initial_interval: 5ms, max_interval: 20ms, max_elapsed: 0s}
    breaker: {consecutive_failures: 50, open_timeout: 200ms}`

func head(stages string) string {
	return `server: {addr: "", path: /webhook, max_body_bytes: 65536, shutdown_timeout: 5s}
admin: {addr: ""}
broker: {type: memory}
stages:
  - {type: secret, header: X-Aquarium-Secret, secrets: ["` + hookOldSecret + `", "` + hookSecret + `"]}
  - {type: schema, schema: issue-exported}
` + stages + `
sinks:
`
}

func labelboxSink(lb *vendortest.Labelbox, extra string) string {
	return fmt.Sprintf(`  - name: labelbox
    type: graphql
    url: %q
    headers: {Authorization: "Bearer %s"}
    already_done: "already exists"
    query: |
%s
    variables: |
%s%s
`, lb.Endpoint(), lbKey, indent(lbQuery, 6), indent(lbVariables, 6), extra)
}

func scaleSink(url string, extra string) string {
	return fmt.Sprintf(`  - name: scale
    type: http
    url: %q
    basic_auth: {username: %q, password: ""}
    conflict_is_success: true
    idempotency_header: Idempotency-Key
    body: |
%s%s
`, url, scaleKey, indent(scaleBody, 6), extra)
}

func labelStudioSink(ls *vendortest.LabelStudio, extra string) string {
	return fmt.Sprintf(`  - name: label_studio
    type: http
    url: %q
    headers: {Authorization: "Token %s"}
    body: |
%s%s
`, ls.ImportURL(lsProject), lsToken, indent(lsBody, 6), extra)
}

// vendors are the three fakes.
type vendors struct {
	lb *vendortest.Labelbox
	sc *vendortest.Scale
	ls *vendortest.LabelStudio
}

func newVendors(t *testing.T) vendors {
	return vendors{
		lb: vendortest.NewLabelbox(t, lbKey),
		sc: vendortest.NewScale(t, scaleKey),
		ls: vendortest.NewLabelStudio(t, lsToken),
	}
}

// config is a pipeline with the quickstart stages and a sink per vendor,
// each with the given policy.
func (v vendors) config(policy string) string {
	return head(`  - {type: dedupe, store: memory, ttl: 1h}`) +
		labelboxSink(v.lb, policy) + scaleSink(v.sc.TaskURL(), policy) + labelStudioSink(v.ls, policy)
}

// ---------------------------------------------------------------------------
// Webhook answers

func TestWebhookAnswers(t *testing.T) {
	h := startHarness(t, head(`  - {type: filter, expr: '.project != "skip_me"'}
  - {type: dedupe, store: memory, ttl: 1h}`)+`  - {name: archive, type: file, path: out/archive.jsonl, envelope: true}
`)
	valid := func() []byte { b, _ := samplePayload(t, "issue-frames.json"); return b }
	skipped := func() []byte {
		b, _ := samplePayload(t, "issue-frames.json")
		return bytes.Replace(b, []byte(`"project":"pedestrian_detection"`), []byte(`"project":"skip_me"`), 1)
	}
	oversized := func() []byte {
		b, _ := samplePayload(t, "issue-frames.json")
		return append(b[:len(b)-1], []byte(`,"pad":"`+strings.Repeat("x", 70_000)+`"}`)...)
	}
	const callerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"

	tests := []struct {
		name       string
		req        hookReq
		wantCode   int
		wantStatus string // the body's "status"
		wantErr    string // part of the body's "error"
		check      func(t *testing.T, a webhookAnswer)
	}{
		{
			name: "accepted", req: hookReq{secret: hookSecret, body: valid()},
			wantCode: 202, wantStatus: "accepted",
			check: func(t *testing.T, a webhookAnswer) {
				if a.ID == "" || len(a.TraceID) != 32 {
					t.Errorf("want an id and a 32-hex trace_id, got %s", a.Raw)
				}
			},
		},
		{
			name: "accepted with the previous secret (rotation)", req: hookReq{secret: hookOldSecret, body: valid()},
			wantCode: 202, wantStatus: "accepted",
		},
		{
			name: "accepted with a charset", req: hookReq{secret: hookSecret, contentType: "application/json; charset=utf-8", body: valid()},
			wantCode: 202, wantStatus: "accepted",
		},
		{
			name: "accepted without a content type", req: hookReq{secret: hookSecret, contentType: "-", body: valid()},
			wantCode: 202, wantStatus: "accepted",
		},
		{
			name: "compressed body", req: hookReq{secret: hookSecret, body: valid(), header: map[string]string{"Content-Encoding": "gzip"}},
			wantCode: 415, wantErr: "Content-Encoding",
		},
		{
			name: "accepted starts its own trace, not the caller's",
			req: hookReq{secret: hookSecret, body: valid(),
				header: map[string]string{"Traceparent": "00-" + callerTrace + "-00f067aa0ba902b7-01"}},
			wantCode: 202, wantStatus: "accepted",
			check: func(t *testing.T, a webhookAnswer) {
				if a.TraceID == "" || a.TraceID == callerTrace {
					t.Errorf("trace_id = %q, want a new one (a caller must not choose labelpipe's trace ids)", a.TraceID)
				}
			},
		},
		{
			name: "filtered", req: hookReq{secret: hookSecret, body: skipped()},
			wantCode: 200, wantStatus: "filtered",
			check: func(t *testing.T, a webhookAnswer) {
				if !strings.Contains(a.Reason, "filter") {
					t.Errorf("reason = %q, want it to name the filter", a.Reason)
				}
			},
		},
		{
			name: "ignored: Aquarium's test payload", req: hookReq{secret: hookSecret, body: rawPayload(t, "test-payload.json")},
			wantCode: 200, wantStatus: "ignored",
			check: func(t *testing.T, a webhookAnswer) {
				if !strings.Contains(a.Reason, "dataset-complete") {
					t.Errorf("reason = %q, want it to name the event", a.Reason)
				}
			},
		},
		{
			name: "malformed JSON", req: hookReq{secret: hookSecret, body: []byte(`{"event": "issue-exported",`)},
			wantCode: 400, wantErr: "not valid JSON",
		},
		{
			name: "empty body", req: hookReq{secret: hookSecret},
			wantCode: 400, wantErr: "body is empty",
		},
		{
			name: "not an object", req: hookReq{secret: hookSecret, body: []byte(`[{"event": "issue-exported"}]`)},
			wantCode: 400, wantErr: "JSON object",
		},
		{
			name: "missing secret", req: hookReq{body: valid()},
			wantCode: 401, wantErr: "X-Aquarium-Secret",
		},
		{
			name: "wrong secret", req: hookReq{secret: "guess", body: valid()},
			wantCode: 401,
			check: func(t *testing.T, a webhookAnswer) {
				if strings.Contains(a.Raw, hookSecret) || strings.Contains(a.Raw, "guess") {
					t.Errorf("401 answer echoes a secret: %s", a.Raw)
				}
			},
		},
		{
			name: "secret is checked before the body is parsed", req: hookReq{secret: "guess", body: []byte(`{not json`)},
			wantCode: 401,
		},
		{
			name: "GET", req: hookReq{method: http.MethodGet, secret: hookSecret},
			wantCode: 405, wantErr: "POST",
			check: func(t *testing.T, a webhookAnswer) {
				if got := a.Header.Get("Allow"); got != http.MethodPost {
					t.Errorf("Allow = %q, want POST", got)
				}
			},
		},
		{
			name: "wrong content type", req: hookReq{secret: hookSecret, contentType: "text/plain", body: valid()},
			wantCode: 415, wantErr: "application/json",
		},
		{
			name: "body over max_body_bytes", req: hookReq{secret: hookSecret, body: oversized()},
			wantCode: 413, wantErr: "65536",
		},
		{
			name: "schema violations", req: hookReq{secret: hookSecret, body: rawPayload(t, "invalid-missing-issue.json")},
			wantCode: 422, wantErr: "schema",
			check: func(t *testing.T, a webhookAnswer) {
				want := pipeline.Violation{Pointer: "/issue", Message: "required property is missing"}
				if !slices.Contains(a.Violations, want) {
					t.Errorf("violations = %+v, want %+v among them", a.Violations, want)
				}
			},
		},
		{
			name:     "several violations at once",
			req:      hookReq{secret: hookSecret, body: []byte(`{"event":"issue-exported","project":7,"issue":{"id":"i","elements":"none"}}`)},
			wantCode: 422,
			check: func(t *testing.T, a webhookAnswer) {
				pointers := map[string]bool{}
				for _, v := range a.Violations {
					if v.Message == "" {
						t.Errorf("violation %q has no message", v.Pointer)
					}
					pointers[v.Pointer] = true
				}
				if !pointers["/project"] || !pointers["/issue/elements"] {
					t.Errorf("violations = %+v, want /project and /issue/elements", a.Violations)
				}
			},
		},
		{
			name: "no event", req: hookReq{secret: hookSecret, body: []byte(`{"project":"p"}`)},
			wantCode: 422,
			check: func(t *testing.T, a webhookAnswer) {
				if len(a.Violations) != 1 || a.Violations[0].Pointer != "/event" {
					t.Errorf("violations = %+v, want one at /event", a.Violations)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := h.send(tt.req)
			if a.Code != tt.wantCode {
				t.Fatalf("status = %d, want %d; body %s", a.Code, tt.wantCode, a.Raw)
			}
			if a.Status != tt.wantStatus {
				t.Errorf("body status = %q, want %q; body %s", a.Status, tt.wantStatus, a.Raw)
			}
			if tt.wantCode >= 400 {
				if a.Error == "" {
					t.Errorf("error answer without an error message: %s", a.Raw)
				}
				if !strings.Contains(a.Error, tt.wantErr) {
					t.Errorf("error = %q, want it to contain %q", a.Error, tt.wantErr)
				}
			} else if a.Error != "" {
				t.Errorf("success answer with an error: %s", a.Raw)
			}
			if tt.check != nil {
				tt.check(t, a)
			}
		})
	}

	// Every 202 above reached the sink; nothing else did.
	accepted := 0
	for _, tt := range tests {
		if tt.wantCode == http.StatusAccepted {
			accepted++
		}
	}
	path := filepath.Join(h.dir, "out", "archive.jsonl")
	h.eventually(10*time.Second, "the archive to hold every accepted export", func() bool {
		b, _ := os.ReadFile(path)
		return bytes.Count(b, []byte("\n")) >= accepted
	})
	b, _ := os.ReadFile(path)
	if n := bytes.Count(b, []byte("\n")); n != accepted {
		t.Errorf("archive has %d lines, want %d (one per accepted export)", n, accepted)
	}
}

func TestWebhookDuplicateAnswersTheOriginalID(t *testing.T) {
	h := startHarness(t, head(`  - {type: dedupe, store: memory, ttl: 1h}`)+`  - {name: archive, type: file, path: out/archive.jsonl}
`)
	body, _ := samplePayload(t, "issue-frames.json")
	first := h.accept(body)
	for range 2 {
		a := h.send(hookReq{secret: hookSecret, body: body})
		if a.Code != http.StatusOK || a.Status != "duplicate" || a.ID != first.ID {
			t.Errorf("repeat: got %d %s, want 200 duplicate with id %s", a.Code, a.Raw, first.ID)
		}
	}
	// The same elements in another order are the same export.
	var doc map[string]any
	_ = json.Unmarshal(body, &doc)
	els := doc["issue"].(map[string]any)["elements"].([]any)
	slices.Reverse(els)
	reordered, _ := json.Marshal(doc)
	if a := h.send(hookReq{secret: hookSecret, body: reordered}); a.Status != "duplicate" || a.ID != first.ID {
		t.Errorf("reordered elements: got %d %s, want duplicate of %s", a.Code, a.Raw, first.ID)
	}
	// Another issue is not.
	other, _ := samplePayload(t, "issue-frames.json")
	if a := h.accept(other); a.ID == first.ID {
		t.Errorf("a different export got the same id %s", a.ID)
	}
}

func TestWebhookUnavailableUntilRunning(t *testing.T) {
	h := newHarness(t, head("")+`  - {name: archive, type: file, path: out/archive.jsonl}
`)
	body, _ := samplePayload(t, "issue-frames.json")
	a := h.send(hookReq{secret: hookSecret, body: body})
	if a.Code != http.StatusServiceUnavailable || a.Header.Get("Retry-After") == "" || a.Error == "" {
		t.Fatalf("before Run: got %d Retry-After=%q %s, want 503 with Retry-After and an error", a.Code, a.Header.Get("Retry-After"), a.Raw)
	}
	if code := h.adminDo(http.MethodGet, "/readyz", nil, nil); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz before Run = %d, want 503", code)
	}
	h.run()
	h.accept(body)
	var ready struct {
		Status   string   `json:"status"`
		Warnings []string `json:"warnings"`
	}
	if code := h.adminDo(http.MethodGet, "/readyz", nil, &ready); code != http.StatusOK || ready.Status != "ready" {
		t.Errorf("/readyz while running = %d %+v, want 200 ready", code, ready)
	}
	// Ready, and plain about the risk: the memory broker loses what it
	// holds if the process dies.
	if len(ready.Warnings) != 1 || !strings.Contains(ready.Warnings[0], "lost if the process dies") {
		t.Errorf("/readyz warnings = %q, want the memory broker's", ready.Warnings)
	}
}

// Cancelling Run's context while a slow vendor holds a delivery: intake
// stops with 503 and Retry-After at once, and Run returns only after the
// held delivery finished.
func TestWebhookUnavailableWhileDraining(t *testing.T) {
	ls := vendortest.NewLabelStudio(t, lsToken)
	ls.SetLatency(time.Hour) // held until the test lowers it
	h := startHarness(t, head("")+labelStudioSink(ls, fastPolicy))
	body, _ := samplePayload(t, "issue-frames.json")
	h.accept(body)
	waitFake(t, "the delivery to reach the vendor", func(ctx context.Context) error { return ls.WaitArrived(ctx, 1) })

	h.stop()
	h.eventually(5*time.Second, "the pipeline to start draining", func() bool {
		err := h.p.Ready(t.Context())
		return err != nil && strings.Contains(err.Error(), "shutting down")
	})
	other, _ := samplePayload(t, "issue-crops.json")
	a := h.send(hookReq{secret: hookSecret, body: other})
	if a.Code != http.StatusServiceUnavailable {
		t.Fatalf("while draining: %d %s, want 503", a.Code, a.Raw)
	}
	if ra := a.Header.Get("Retry-After"); ra == "" || ra == "0" {
		t.Errorf("Retry-After = %q, want a positive number of seconds", ra)
	}
	if !strings.Contains(a.Error, "shutting down") {
		t.Errorf("error = %q, want it to say the daemon is shutting down", a.Error)
	}
	if code := h.adminDo(http.MethodGet, "/readyz", nil, nil); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz while draining = %d, want 503", code)
	}
	if code := h.adminDo(http.MethodGet, "/healthz", nil, nil); code != http.StatusOK {
		t.Errorf("/healthz while draining = %d, want 200 (the process is up)", code)
	}
	select {
	case err := <-h.done:
		h.done <- err
		t.Fatalf("Run returned (%v) while a delivery was still held by the vendor", err)
	default:
	}

	ls.SetLatency(0) // the vendor answers the held request
	select {
	case err := <-h.done:
		h.done <- err // for the cleanup
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the held delivery finished")
	}
	if got := ls.Accepted(); got != 1 {
		t.Errorf("vendor accepted %d imports when Run returned, want the held one (1)", got)
	}
	if got := len(ls.Tasks(lsProject)); got != 3 {
		t.Errorf("vendor has %d tasks, want 3", got)
	}
}

// Past the rate_limit stage's rate the webhook answers 429 with Retry-After.
func TestWebhookRateLimited(t *testing.T) {
	h := startHarness(t, head(`  - {type: rate_limit, per_second: 0.5, burst: 1}`)+`  - {name: archive, type: file, path: out/archive.jsonl}
`)
	body, _ := samplePayload(t, "issue-frames.json")
	h.accept(body)
	other, _ := samplePayload(t, "issue-crops.json")
	a := h.send(hookReq{secret: hookSecret, body: other})
	if a.Code != http.StatusTooManyRequests || !strings.Contains(a.Error, "rate limited") {
		t.Fatalf("second webhook: %d %s, want 429 saying it is rate limited", a.Code, a.Raw)
	}
	if ra := a.Header.Get("Retry-After"); ra != "1" && ra != "2" {
		t.Errorf("Retry-After = %q, want the 1-2 s until the next token", ra)
	}
}

// A stage that rejects after dedupe reserved the key gives the key back,
// so the caller's retry is accepted, not taken for a duplicate.
func TestRejectAfterDedupeReleasesTheKey(t *testing.T) {
	h := startHarness(t, head(`  - {type: dedupe, store: memory, ttl: 1h}
  - {type: rate_limit, per_second: 20, burst: 1}`)+`  - {name: archive, type: file, path: out/archive.jsonl}
`)
	body, _ := samplePayload(t, "issue-frames.json")
	h.accept(body)
	other, _ := samplePayload(t, "issue-crops.json")
	if a := h.send(hookReq{secret: hookSecret, body: other}); a.Code != http.StatusTooManyRequests {
		t.Fatalf("second webhook at once: %d %s, want 429", a.Code, a.Raw)
	}
	var last webhookAnswer
	h.eventually(5*time.Second, "the retry to get past the rate limit", func() bool {
		last = h.send(hookReq{secret: hookSecret, body: other})
		return last.Code != http.StatusTooManyRequests
	})
	if last.Code != http.StatusAccepted {
		t.Fatalf("retry after the 429: %d %s, want 202 (the rejected attempt must not hold the dedupe key)", last.Code, last.Raw)
	}
}

// A sink with queue.on_full: backpressure whose queue is full holds the
// fan-out; the exports then fill broker.max_pending, and the webhook waits
// for room, then answers 503, and accepts again once the vendor catches up.
func TestWebhookBackpressureWhenQueueIsFull(t *testing.T) {
	ls := vendortest.NewLabelStudio(t, lsToken)
	ls.SetLatency(time.Hour) // held until the test lowers it
	cfg := strings.Replace(head(""), "broker: {type: memory}", "broker: {type: memory, max_pending: 1, queue_wait: 100ms}", 1)
	// The archive keeps up: it is label_studio's own full queue, not an
	// overload of every sink, that holds intake here.
	h := startHarness(t, cfg+labelStudioSink(ls, fastPolicy+"\n    queue: {max_requests: 1, on_full: backpressure}")+
		"  - {name: archive, type: file, path: out/archive.jsonl}\n")
	body, _ := samplePayload(t, "issue-frames.json")
	h.accept(body)
	waitFake(t, "the delivery to reach the vendor", func(ctx context.Context) error { return ls.WaitArrived(ctx, 1) })
	second, _ := samplePayload(t, "issue-frames.json")
	h.accept(second) // waits in the fan-out for room in the sink's queue

	other, _ := samplePayload(t, "issue-crops.json")
	h.sendWaitsThenUnavailable(other, 100*time.Millisecond, "queue is full")

	ls.SetLatency(0) // the vendor catches up
	h.eventually(5*time.Second, "the queued requests to finish", func() bool { return ls.Accepted() == 2 })
	if a := h.send(hookReq{secret: hookSecret, body: other}); a.Code != http.StatusAccepted {
		t.Fatalf("after room was made: %d %s, want 202", a.Code, a.Raw)
	}
	waitFake(t, "every export delivered", func(ctx context.Context) error { return ls.WaitAccepted(ctx, 3) })
	if ds := h.deadLetters("label_studio"); len(ds) != 0 {
		t.Errorf("%d dead letters with on_full: backpressure, want none", len(ds))
	}
}

// Bodies share server.max_inflight_bytes: while one large body is being
// read, another that would not fit waits queue_wait, then gets 503; a body
// that says it is over max_body_bytes is refused before it is read.
func TestWebhookBodiesShareAMemoryBudget(t *testing.T) {
	body, _ := samplePayload(t, "issue-frames.json")
	limit := len(body) + 100
	cfg := strings.Replace(head(""), "max_body_bytes: 65536",
		fmt.Sprintf("max_body_bytes: %d, max_inflight_bytes: %d", limit, limit), 1)
	cfg = strings.Replace(cfg, "broker: {type: memory}", "broker: {type: memory, queue_wait: 150ms}", 1)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	h := newHarnessWith(t, cfg+`  - {name: archive, type: file, path: out/archive.jsonl}
`, func(o *pipeline.Options) { o.MeterProvider = mp })
	h.run()

	// A slow caller: its Content-Length takes the whole budget, and it has
	// sent only part of the body.
	pr, pw := io.Pipe()
	slow, err := http.NewRequestWithContext(t.Context(), http.MethodPost, h.webhook.URL+"/webhook", pr)
	if err != nil {
		t.Fatal(err)
	}
	slow.ContentLength = int64(limit)
	slow.Header.Set("Content-Type", "application/json")
	slow.Header.Set("X-Aquarium-Secret", hookSecret)
	slowDone := make(chan int, 1)
	go func() {
		resp, err := h.webhook.Client().Do(slow)
		if err != nil {
			slowDone <- 0
			return
		}
		resp.Body.Close()
		slowDone <- resp.StatusCode
	}()
	if _, err := pw.Write(body[:10]); err != nil {
		t.Fatal(err)
	}
	// Write returns once the client's transport has the bytes, not once
	// the server has reserved the body's share: the gauge says when.
	h.eventually(10*time.Second, "the slow body to hold the budget", func() bool {
		return gaugeValue(t, reader, "labelpipe.webhook.body.inflight", "pool", "verified") == int64(limit)
	})

	h.sendWaitsThenUnavailable(body, 150*time.Millisecond, "max_inflight_bytes")

	// The slow body arrives in full (padded to its Content-Length with
	// whitespace); its share comes back and the next export is accepted.
	rest := append(append([]byte(nil), body[10:]...), bytes.Repeat([]byte(" "), limit-len(body))...)
	if _, err := pw.Write(rest); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if code := <-slowDone; code != http.StatusAccepted {
		t.Errorf("slow body answered %d, want 202", code)
	}
	h.accept(body)

	big := h.send(hookReq{secret: hookSecret, body: bytes.Repeat([]byte(" "), limit+1)})
	if big.Code != http.StatusRequestEntityTooLarge || !strings.Contains(big.Error, "max_body_bytes") {
		t.Errorf("oversized body: %d %s, want 413 naming max_body_bytes", big.Code, big.Raw)
	}
}

// ---------------------------------------------------------------------------
// Delivery

func TestDeliveryReachesEveryVendor(t *testing.T) {
	v := newVendors(t)
	h := startHarness(t, v.config(fastPolicy)+`  - {name: archive, type: file, path: out/archive.jsonl, envelope: true}
`)
	body, issueID := samplePayload(t, "issue-frames.json")
	a := h.accept(body)

	waitFake(t, "labelbox", func(ctx context.Context) error { return v.lb.WaitAccepted(ctx, 1) })
	waitFake(t, "scale", func(ctx context.Context) error { return v.sc.WaitAccepted(ctx, 3) })
	waitFake(t, "label studio", func(ctx context.Context) error { return v.ls.WaitAccepted(ctx, 1) })

	batches := v.lb.Batches(lbProject)
	if len(batches) != 1 || !slices.Equal(batches[0].GlobalKeys, []string{"frame_000481", "frame_000482", "frame_000517"}) {
		t.Errorf("labelbox batches = %+v, want one with the three frames", batches)
	} else if want := "aquarium-" + issueID + "-" + a.Key + "-0"; batches[0].Name != want {
		t.Errorf("labelbox batch name = %q, want %q", batches[0].Name, want)
	}
	tasks := v.sc.Tasks()
	if len(tasks) != 3 {
		t.Fatalf("scale tasks = %d, want 3 (one per element)", len(tasks))
	}
	for _, tk := range tasks {
		if !strings.HasPrefix(tk.UniqueID, a.Key+"-") || tk.Metadata["issue_id"] != issueID || tk.Metadata["export_id"] != a.ID {
			t.Errorf("scale task %+v does not carry export key %s, issue %s and export %s", tk, a.Key, issueID, a.ID)
		}
	}
	if got := v.ls.Tasks(lsProject); len(got) != 3 || got[0].Meta["export_id"] != a.ID {
		t.Errorf("label studio tasks = %+v, want 3 carrying export %s", got, a.ID)
	}

	// One trace from the webhook to every vendor request.
	for name, reqs := range map[string][]vendortest.Request{
		"labelbox": v.lb.Requests(), "scale": v.sc.Requests(), "label_studio": v.ls.Requests(),
	} {
		for _, r := range reqs {
			if tp := r.Traceparent(); !strings.Contains(tp, "-"+a.TraceID+"-") {
				t.Errorf("%s request traceparent = %q, want trace %s", name, tp, a.TraceID)
			}
		}
	}
	// Scale got each task's idempotency key: export key, sink, chunk.
	if len(a.Key) != 32 || a.Key == a.ID {
		t.Errorf("202 answer key %q, want 32 hex digits naming the content, not the export id %s", a.Key, a.ID)
	}
	keys := map[string]bool{}
	for _, r := range v.sc.Requests() {
		keys[r.Header.Get("Idempotency-Key")] = true
	}
	for i := range 3 {
		if k := fmt.Sprintf("%s.scale.%d", a.Key, i); !keys[k] {
			t.Errorf("no scale request with Idempotency-Key %s (got %v)", k, keys)
		}
	}

	path := filepath.Join(h.dir, "out", "archive.jsonl")
	h.eventually(5*time.Second, "the archive line", func() bool {
		b, _ := os.ReadFile(path)
		return bytes.Contains(b, []byte(a.ID))
	})
	if v.lb.Duplicates()+v.sc.Duplicates()+v.ls.Duplicates() != 0 {
		t.Errorf("duplicate deliveries: labelbox %d, scale %d, label studio %d", v.lb.Duplicates(), v.sc.Duplicates(), v.ls.Duplicates())
	}
}

// GraphQL servers answer errors with HTTP 200 and errors[]: the code decides
// between a retry and the dead-letter queue.
func TestGraphQLErrorsIn200(t *testing.T) {
	tests := []struct {
		name         string
		inject       func(lb *vendortest.Labelbox)
		wantRequests int
		wantAccepted int
		// wantDLQ, when set, is part of the dead letter's error.
		wantDLQ      string
		wantAttempts int
	}{
		{
			name:         "permanent code is dead-lettered at once",
			inject:       func(lb *vendortest.Labelbox) { lb.FailNextGraphQL(1, "BAD_USER_INPUT", "Global key is malformed") },
			wantRequests: 1, wantDLQ: "graphql error BAD_USER_INPUT", wantAttempts: 1,
		},
		{
			name:         "error without a code is permanent",
			inject:       func(lb *vendortest.Labelbox) { lb.FailNextGraphQL(1, "", "something broke") },
			wantRequests: 1, wantDLQ: "something broke", wantAttempts: 1,
		},
		{
			name:         "retryable code is retried until it succeeds",
			inject:       func(lb *vendortest.Labelbox) { lb.FailNextGraphQL(2, "INTERNAL_SERVER_ERROR", "try again") },
			wantRequests: 3, wantAccepted: 1,
		},
		{
			name:         "rate limit message is retried",
			inject:       func(lb *vendortest.Labelbox) { lb.RateLimitNext(1) },
			wantRequests: 2, wantAccepted: 1,
		},
		{
			name:         "retryable code until attempts run out",
			inject:       func(lb *vendortest.Labelbox) { lb.FailNextGraphQL(10, "INTERNAL_SERVER_ERROR", "down") },
			wantRequests: 5, wantDLQ: "retries exhausted", wantAttempts: 5,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lb := vendortest.NewLabelbox(t, lbKey)
			h := startHarness(t, head("")+labelboxSink(lb, fastPolicy))
			tt.inject(lb)
			body, _ := samplePayload(t, "issue-frames.json")
			a := h.accept(body)
			if tt.wantDLQ == "" {
				waitFake(t, "labelbox", func(ctx context.Context) error { return lb.WaitAccepted(ctx, 1) })
			} else {
				ds := h.waitDeadLetters("labelbox", 1)
				d := ds[0]
				if len(ds) != 1 || d.ExportID != a.ID || d.Sink != "labelbox" || d.Chunk != 0 {
					t.Errorf("dead letters = %+v, want one for export %s chunk 0", ds, a.ID)
				}
				if !strings.Contains(d.Error, tt.wantDLQ) {
					t.Errorf("dead letter error = %q, want it to contain %q", d.Error, tt.wantDLQ)
				}
				if d.Status != http.StatusOK || d.Attempts != tt.wantAttempts || d.TraceID != a.TraceID || d.FailedAt == "" {
					t.Errorf("dead letter = status %d attempts %d trace %q failed_at %q; want 200, %d, %s and a time",
						d.Status, d.Attempts, d.TraceID, d.FailedAt, tt.wantAttempts, a.TraceID)
				}
				if !strings.Contains(d.Answer, `"errors"`) {
					t.Errorf("dead letter answer = %q, want the vendor's errors[]", d.Answer)
				}
			}
			h.eventually(5*time.Second, "the queue to empty", func() bool { return h.sink("labelbox").QueueDepth == 0 })
			if got := lb.RequestCount(); got != tt.wantRequests {
				t.Errorf("vendor requests = %d, want %d", got, tt.wantRequests)
			}
			if got := lb.Accepted(); got != tt.wantAccepted {
				t.Errorf("vendor accepted %d, want %d", got, tt.wantAccepted)
			}
			if tt.wantDLQ == "" {
				if ds := h.deadLetters("labelbox"); len(ds) != 0 {
					t.Errorf("dead letters = %+v, want none", ds)
				}
			}
		})
	}
}

// retryStatusCases is the contract for how a vendor's status is treated.
var retryStatusCases = []struct {
	status    int
	retryable bool
}{
	{408, true}, {425, true}, {429, true}, {500, true}, {502, true}, {503, true}, {504, true},
	{400, false}, {401, false}, {403, false}, {404, false}, {409, false}, {422, false},
}

func TestRetryClassification(t *testing.T) {
	ls := vendortest.NewLabelStudio(t, lsToken)
	h := startHarness(t, head("")+labelStudioSink(ls, fastPolicy+`
    max_in_flight: 1`))
	for _, tt := range retryStatusCases {
		t.Run(fmt.Sprint(tt.status), func(t *testing.T) {
			reqs0, acc0, dlq0 := ls.RequestCount(), ls.Accepted(), len(h.deadLetters("label_studio"))
			ls.FailNext(1, tt.status, "")
			body, _ := samplePayload(t, "issue-frames.json")
			a := h.accept(body)
			if tt.retryable {
				waitFake(t, "the retry", func(ctx context.Context) error { return ls.WaitAccepted(ctx, acc0+1) })
				if got := ls.RequestCount() - reqs0; got != 2 {
					t.Errorf("%d: %d requests, want 2 (a failure, then a retry that succeeds)", tt.status, got)
				}
				return
			}
			ds := h.waitDeadLetters("label_studio", dlq0+1)
			d := ds[len(ds)-1]
			if d.ExportID != a.ID || d.Status != tt.status || d.Attempts != 1 {
				t.Errorf("%d: dead letter %+v, want export %s, status %d, 1 attempt", tt.status, d, a.ID, tt.status)
			}
			if got := ls.RequestCount() - reqs0; got != 1 {
				t.Errorf("%d: %d requests, want 1 (no retry)", tt.status, got)
			}
			if ls.Accepted() != acc0 {
				t.Errorf("%d: the vendor accepted it anyway", tt.status)
			}
		})
	}
}

// Timeouts and connection errors are retried until the attempts run out.
func TestRetryTimeoutsAndConnectionErrors(t *testing.T) {
	ls := vendortest.NewLabelStudio(t, lsToken)
	ls.SetLatency(300 * time.Millisecond)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedURL := "http://" + ln.Addr().String() + "/api/projects/1/import"
	ln.Close()

	tests := []struct {
		name, url, wantErr string
	}{
		{"vendor slower than the sink timeout", ls.ImportURL(lsProject), "no answer before the attempt ended"},
		{"connection refused", closedURL, "connect"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startHarness(t, head("")+fmt.Sprintf(`  - name: vendor
    type: http
    url: %q
    headers: {Authorization: "Token %s"}
    timeout: 50ms
    retry: {max_attempts: 3, initial_interval: 5ms, max_interval: 10ms}
    breaker: {consecutive_failures: 50, open_timeout: 200ms}
`, tt.url, lsToken))
			body, _ := samplePayload(t, "issue-frames.json")
			a := h.accept(body)
			d := h.waitDeadLetters("vendor", 1)[0]
			if d.ExportID != a.ID || d.Attempts != 3 || d.Status != 0 {
				t.Errorf("dead letter = %+v, want export %s after 3 attempts without a status", d, a.ID)
			}
			if !strings.Contains(d.Error, tt.wantErr) || !strings.Contains(d.Error, "retries exhausted") {
				t.Errorf("dead letter error = %q, want %q and retries exhausted", d.Error, tt.wantErr)
			}
		})
	}
}

// A jq program yielding N values sends N requests, each delivered and
// retried on its own: only the failed chunk is sent again.
func TestChunksAreRetriedOnTheirOwn(t *testing.T) {
	sc := vendortest.NewScale(t, scaleKey)
	target, _ := url.Parse(sc.URL)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var mu sync.Mutex
	attempts := map[string]int{} // by Idempotency-Key
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("Idempotency-Key")
		mu.Lock()
		attempts[key]++
		n := attempts[key]
		mu.Unlock()
		if strings.HasSuffix(key, ".scale.2") && n == 1 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"status_code":503,"error":"chunk 2 is unlucky"}`)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)

	h := startHarness(t, head("")+scaleSink(front.URL+"/v1/task/imageannotation", fastPolicy))
	body, _ := samplePayload(t, "issue-10-elements.json")
	a := h.accept(body)
	waitFake(t, "scale", func(ctx context.Context) error { return sc.WaitAccepted(ctx, 10) })
	h.eventually(5*time.Second, "the queue to empty", func() bool { return h.sink("scale").QueueDepth == 0 })

	mu.Lock()
	defer mu.Unlock()
	if len(attempts) != 10 {
		t.Errorf("got %d distinct chunks, want 10: %v", len(attempts), attempts)
	}
	for i := range 10 {
		key := fmt.Sprintf("%s.scale.%d", a.Key, i)
		want := 1
		if i == 2 {
			want = 2
		}
		if attempts[key] != want {
			t.Errorf("chunk %d: %d attempts, want %d", i, attempts[key], want)
		}
	}
	if sc.RequestCount() != 10 || sc.Accepted() != 10 || sc.Duplicates() != 0 {
		t.Errorf("scale: %d requests, %d accepted, %d duplicates; want 10, 10, 0", sc.RequestCount(), sc.Accepted(), sc.Duplicates())
	}
	if ds := h.deadLetters("scale"); len(ds) != 0 {
		t.Errorf("dead letters = %+v, want none", ds)
	}
}

func TestRetryAfterIsHonoured(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		retryAfter string
		minGap     time.Duration
		maxGap     time.Duration
	}{
		{"429 with Retry-After: 1", 429, "1", time.Second, 5 * time.Second},
		{"503 with Retry-After: 1", 503, "1", time.Second, 5 * time.Second},
		{"429 without Retry-After backs off briefly", 429, "", 0, 500 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ls := vendortest.NewLabelStudio(t, lsToken)
			h := startHarness(t, head("")+labelStudioSink(ls, `
    retry: {max_attempts: 3, initial_interval: 5ms, max_interval: 2s}
    breaker: {consecutive_failures: 50, open_timeout: 200ms}`))
			ls.FailNext(1, tt.status, tt.retryAfter)
			body, _ := samplePayload(t, "issue-frames.json")
			h.accept(body)
			waitFake(t, "the retry", func(ctx context.Context) error { return ls.WaitAccepted(ctx, 1) })
			reqs := ls.Requests()
			if len(reqs) != 2 || reqs[0].Status != tt.status {
				t.Fatalf("requests = %d (first status %d), want 2 with a %d first", len(reqs), reqs[0].Status, tt.status)
			}
			gap := reqs[1].At.Sub(reqs[0].At)
			if gap < tt.minGap || gap > tt.maxGap {
				t.Errorf("retry came %v after the failure, want between %v and %v", gap, tt.minGap, tt.maxGap)
			}
		})
	}
}

// The breaker opens after consecutive_failures; while open the sink makes
// no requests; after open_timeout a half-open probe decides.
func TestBreakerOpensAndRecovers(t *testing.T) {
	const openTimeout = 300 * time.Millisecond
	ls := vendortest.NewLabelStudio(t, lsToken)
	h := startHarness(t, head("")+labelStudioSink(ls, fmt.Sprintf(`
    retry: {max_attempts: 20, initial_interval: 5ms, max_interval: 10ms}
    breaker: {consecutive_failures: 3, open_timeout: %s}`, openTimeout)))
	ls.SetDown(http.StatusServiceUnavailable)
	body, _ := samplePayload(t, "issue-frames.json")
	h.accept(body)

	waitFake(t, "three failures", func(ctx context.Context) error { return ls.WaitRequests(ctx, 3) })
	h.eventually(5*time.Second, "the breaker to open", func() bool { return h.sink("label_studio").Breaker == "open" })
	// The 4th request is the first half-open probe; it fails and the breaker
	// opens again. The vendor comes back before the next probe.
	waitFake(t, "the first probe", func(ctx context.Context) error { return ls.WaitRequests(ctx, 4) })
	ls.SetUp()
	waitFake(t, "the delivery", func(ctx context.Context) error { return ls.WaitAccepted(ctx, 1) })
	h.eventually(5*time.Second, "the breaker to close", func() bool { return h.sink("label_studio").Breaker == "closed" })

	reqs := ls.Requests()
	if len(reqs) != 5 {
		t.Fatalf("vendor got %d requests, want 5 (3 failures, a failed probe, a good probe)", len(reqs))
	}
	for i := 1; i < 3; i++ {
		if gap := reqs[i].At.Sub(reqs[i-1].At); gap >= openTimeout {
			t.Errorf("request %d came %v after the previous; the breaker was not open yet, want a short backoff", i+1, gap)
		}
	}
	for i := 3; i < 5; i++ {
		if gap := reqs[i].At.Sub(reqs[i-1].At); gap < openTimeout {
			t.Errorf("request %d came %v after the previous, while the breaker was open (open_timeout %v)", i+1, gap, openTimeout)
		}
	}
	if ds := h.deadLetters("label_studio"); len(ds) != 0 {
		t.Errorf("dead letters = %+v, want none: waiting on the breaker spends no attempts", ds)
	}
}

// One vendor answering 503 for 10 s does not delay the other sinks'
// deliveries, and none of its own are lost.
func TestSinkIsolation(t *testing.T) {
	const outage = 10 * time.Second
	v := newVendors(t)
	// Scale is down with a quick breaker; the others get the default policy.
	cfg := head(`  - {type: dedupe, store: memory, ttl: 1h}`) +
		labelboxSink(v.lb, fastPolicy) +
		scaleSink(v.sc.TaskURL(), `
    retry: {max_attempts: 1000, initial_interval: 5ms, max_interval: 50ms, max_elapsed: 0s}
    breaker: {consecutive_failures: 3, open_timeout: 200ms}`) +
		labelStudioSink(v.ls, fastPolicy)
	h := startHarness(t, cfg)
	v.sc.SetDown(http.StatusServiceUnavailable)
	start := time.Now()

	type sent struct {
		issue string
		at    time.Time
	}
	var exports []sent
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for time.Since(start) < outage {
		body, issue := samplePayload(t, "issue-frames.json")
		at := time.Now()
		h.accept(body)
		exports = append(exports, sent{issue, at})
		<-tick.C
	}
	waitFake(t, "labelbox", func(ctx context.Context) error { return v.lb.WaitAccepted(ctx, len(exports)) })
	waitFake(t, "label studio", func(ctx context.Context) error { return v.ls.WaitAccepted(ctx, len(exports)) })
	if got := v.sc.Accepted(); got != 0 {
		t.Fatalf("scale accepted %d tasks during its outage", got)
	}
	scaleTried := v.sc.RequestCount()
	v.sc.SetUp()

	// When did each export reach Labelbox and Label Studio?
	delivered := map[string]map[string]time.Time{"labelbox": {}, "label_studio": {}}
	for _, r := range v.lb.Requests() {
		var b struct {
			Variables struct{ Name string } `json:"variables"`
		}
		_ = json.Unmarshal(r.Body, &b)
		if r.Outcome == vendortest.Accepted {
			delivered["labelbox"][b.Variables.Name] = r.At
		}
	}
	for _, r := range v.ls.Requests() {
		var b []struct {
			Meta struct {
				IssueID string `json:"issue_id"`
			} `json:"meta"`
		}
		_ = json.Unmarshal(r.Body, &b)
		if r.Outcome == vendortest.Accepted && len(b) > 0 {
			delivered["label_studio"][b[0].Meta.IssueID] = r.At
		}
	}
	var worst time.Duration
	for _, e := range exports {
		for sink, byKey := range delivered {
			var at time.Time
			for k, when := range byKey {
				if k == e.issue || strings.HasPrefix(k, "aquarium-"+e.issue+"-") {
					at = when
				}
			}
			if at.IsZero() {
				t.Errorf("%s never got issue %s", sink, e.issue)
				continue
			}
			lat := at.Sub(e.at)
			worst = max(worst, lat)
			if lat > time.Second {
				t.Errorf("%s got issue %s %v after it was sent, during scale's outage; want well under a second", sink, e.issue, lat)
			}
		}
	}
	t.Logf("%d exports during a %v outage of scale (%d scale attempts); slowest delivery to the others: %v",
		len(exports), outage, scaleTried, worst)

	// Nothing was lost: scale gets every task once it is back.
	waitFake(t, "scale after the outage", func(ctx context.Context) error { return v.sc.WaitAccepted(ctx, 3*len(exports)) })
	h.eventually(10*time.Second, "scale's queue to empty", func() bool { return h.sink("scale").QueueDepth == 0 })
	if v.sc.Duplicates() != 0 || len(v.sc.Tasks()) != 3*len(exports) {
		t.Errorf("scale has %d tasks and %d duplicates, want %d and 0", len(v.sc.Tasks()), v.sc.Duplicates(), 3*len(exports))
	}
	if ds := h.deadLetters("scale"); len(ds) != 0 {
		t.Errorf("scale dead letters = %d, want none", len(ds))
	}
}

// Cancelling Run with deliveries in flight: Run returns after they finish,
// and every accepted export is delivered.
func TestDrainFinishesInFlightDeliveries(t *testing.T) {
	v := newVendors(t)
	for _, s := range []*vendortest.Server{v.lb.Server, v.sc.Server, v.ls.Server} {
		s.SetLatency(300 * time.Millisecond)
	}
	h := startHarness(t, v.config(fastPolicy))
	const n = 3
	for range n {
		body, _ := samplePayload(t, "issue-frames.json")
		h.accept(body)
	}
	// Every vendor is in the middle of a request, and Scale has more queued.
	waitFake(t, "labelbox", func(ctx context.Context) error { return v.lb.WaitArrived(ctx, 1) })
	waitFake(t, "scale", func(ctx context.Context) error { return v.sc.WaitArrived(ctx, 1) })
	waitFake(t, "label studio", func(ctx context.Context) error { return v.ls.WaitArrived(ctx, 1) })
	if got := v.sc.Accepted(); got == 3*n {
		t.Fatal("scale had everything before the drain began; latency too short for this machine")
	}
	h.stop()
	select {
	case err := <-h.done:
		h.done <- err
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return")
	}
	// No waiting here: Run returned, so everything must be there.
	if got := v.lb.Accepted(); got != n {
		t.Errorf("labelbox accepted %d batches when Run returned, want %d", got, n)
	}
	if got := v.sc.Accepted(); got != 3*n {
		t.Errorf("scale accepted %d tasks when Run returned, want %d", got, 3*n)
	}
	if got := v.ls.Accepted(); got != n {
		t.Errorf("label studio accepted %d imports when Run returned, want %d", got, n)
	}
}

// Close without Run (an embedder that gave up, or preview) returns at once
// and cleanly, and a second Close is harmless.
func TestCloseWithoutRun(t *testing.T) {
	cfg, err := pipeline.ParseConfig(filepath.Join(t.TempDir(), "c.yaml"), []byte(`
server: {addr: "", shutdown_timeout: 2s}
admin: {addr: ""}
sinks:
  - {name: archive, type: file, path: out/archive.jsonl}
`))
	if err != nil {
		t.Fatal(err)
	}
	p, err := pipeline.New(cfg, pipeline.Options{Registry: builtin.Registry()})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := p.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("Close without Run took %v; it has nothing to wait for", took)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// gaugeValue reads an int64 gauge's point whose attribute k is v; -1 when
// there is none.
func gaugeValue(t *testing.T, r *sdkmetric.ManualReader, name, k, v string) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(t.Context(), &rm); err != nil {
		t.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			g, ok := m.Data.(metricdata.Gauge[int64])
			if m.Name != name || !ok {
				continue
			}
			for _, dp := range g.DataPoints {
				if got, ok := dp.Attributes.Value(attribute.Key(k)); ok && got.AsString() == v {
					return dp.Value
				}
			}
		}
	}
	return -1
}
