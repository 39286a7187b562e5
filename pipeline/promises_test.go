package pipeline_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/internal/vendortest"
	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/telemetry"
)

// Promises the README makes that no other test held the code to.

// max_in_flight: 2 means at most 2 requests at the vendor at once, however
// many are queued. Six requests wait while the vendor holds the first.
func TestMaxInFlightBoundsConcurrentRequests(t *testing.T) {
	v := newHeldVendor(t, true)
	h := startHarness(t, head("")+`  - name: held
    type: http
    url: "`+v.URL+`"
    max_in_flight: 2
    body: '.issue.elements[]'
`+fastPolicy+"\n")
	for range 2 { // 3 elements each: 6 requests
		body, _ := samplePayload(t, "issue-frames.json")
		h.accept(body)
	}
	h.eventually(10*time.Second, "two requests at the vendor and the rest queued", func() bool {
		_, n, _ := v.counts()
		return n >= 2 && h.sink("held").QueueDepth >= 4
	})
	v.let()
	h.eventually(10*time.Second, "all 6 requests delivered", func() bool {
		got, _, _ := v.counts()
		return got >= 6 && h.sink("held").QueueDepth == 0
	})
	if _, _, most := v.counts(); most != 2 {
		t.Errorf("at most %d requests were at the vendor at once, want 2 (max_in_flight)", most)
	}
}

// admin: {addr: ""} disables the admin listener; the webhook listener
// still opens.
func TestEmptyAdminAddrDisablesTheAdminListener(t *testing.T) {
	cfg := strings.Replace(head(""), `server: {addr: ""`, `server: {addr: "127.0.0.1:0"`, 1) +
		"  - {name: archive, type: file, path: out/archive.jsonl}\n"
	h := startHarness(t, cfg)
	// Run logs "labelpipe running" after opening every listener.
	h.eventually(5*time.Second, "Run to have opened its listeners", func() bool {
		return strings.Contains(h.logs.String(), "labelpipe running")
	})
	logs := h.logs.String()
	if !strings.Contains(logs, "listener=webhook") {
		t.Fatalf("no webhook listener in the log; the test proves nothing:\n%s", logs)
	}
	if strings.Contains(logs, "listener=admin") {
		t.Errorf("an admin listener opened with admin.addr \"\":\n%s", logs)
	}
}

// onlyReader hides a body's length, so the client sends it chunked.
type onlyReader struct{ io.Reader }

// A chunked body (no Content-Length) over max_body_bytes gets 413 naming
// the setting.
func TestChunkedBodyOverTheLimitIs413(t *testing.T) {
	h := startHarness(t, head("")+"  - {name: archive, type: file, path: out/archive.jsonl}\n")
	body := append([]byte(`{"event":"issue-exported","pad":"`), bytes.Repeat([]byte("x"), 70000)...)
	body = append(body, `"}`...)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, h.webhook.URL+"/webhook", onlyReader{bytes.NewReader(body)})
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Aquarium-Secret", hookSecret)
	resp, err := h.webhook.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if req.ContentLength != -1 && req.ContentLength != 0 {
		t.Fatalf("request had Content-Length %d; the test needs a chunked body", req.ContentLength)
	}
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(raw), "max_body_bytes") {
		t.Errorf("chunked body over the limit: %d %s, want 413 naming max_body_bytes", resp.StatusCode, raw)
	}
}

// A filter or transform stage whose jq program fails at run time answers
// 422 with a message naming the stage.
func TestFailingJQStageIs422NamingTheStage(t *testing.T) {
	for _, tc := range []struct{ name, stage string }{
		{"filter", `  - {name: gate, type: filter, expr: '.x | error("boom")'}`},
		{"transform", `  - {name: reshape, type: transform, expr: '.x | error("boom")'}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startHarness(t, head(tc.stage)+"  - {name: archive, type: file, path: out/archive.jsonl}\n")
			body, _ := samplePayload(t, "issue-frames.json")
			a := h.send(hookReq{secret: hookSecret, body: body})
			stageName := tc.stage[strings.Index(tc.stage, "name: ")+6 : strings.Index(tc.stage, ",")]
			if a.Code != http.StatusUnprocessableEntity || !strings.Contains(a.Error, tc.name+" "+stageName) || !strings.Contains(a.Error, "boom") {
				t.Errorf("got %d %s, want 422 naming %s %s and its error", a.Code, a.Raw, tc.name, stageName)
			}
		})
	}
}

// The metrics the README's Tracing section promises are on /metrics
// after one export that needed a retry. The README names two outright and
// describes the rest; the names below are those descriptions' metrics.
func TestMetricsTheReadmePromises(t *testing.T) {
	prov, err := telemetry.New(t.Context(), pipeline.TracingConfig{}, telemetry.Info{Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = prov.Shutdown(context.Background()) })
	ls := vendortest.NewLabelStudio(t, lsToken)
	ls.FailNext(1, http.StatusServiceUnavailable, "")
	h := newHarnessWith(t, head("")+labelStudioSink(ls, fastPolicy), func(o *pipeline.Options) {
		o.MeterProvider, o.Metrics = prov.MeterProvider, prov.Metrics
	})
	h.run()
	body, _ := samplePayload(t, "issue-frames.json")
	h.accept(body)
	waitFake(t, "the export delivered", func(ctx context.Context) error { return ls.WaitAccepted(ctx, 1) })
	h.eventually(5*time.Second, "the queue to empty", func() bool { return h.sink("label_studio").QueueDepth == 0 })

	resp, err := h.admin.Client().Get(h.admin.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	for _, name := range []string{
		"labelpipe_webhook_requests_total",        // named
		"labelpipe_webhook_body_inflight_bytes",   // named
		"labelpipe_stage_duration_seconds",        // stage durations
		"labelpipe_sink_deliveries_total",         // deliveries by sink and outcome
		"labelpipe_sink_attempts_total",           // attempts
		"labelpipe_sink_retries_total",            // retries
		"labelpipe_sink_breaker_state",            // breaker state
		"labelpipe_sink_queue_depth",              // queue depth
		"labelpipe_sink_dlq_size",                 // DLQ size
		"labelpipe_sink_delivery_latency_seconds", // delivery latency
		"go_goroutines",                           // Go runtime
	} {
		if !bytes.Contains(raw, []byte("\n"+name)) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", raw)
	}
}
