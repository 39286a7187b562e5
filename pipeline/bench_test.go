package pipeline_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/labelpipe/labelpipe/builtin"
	"github.com/labelpipe/labelpipe/pipeline"
)

// Benchmarks measure; they assert only that the path did its job. Run:
//
//	go test -run '^$' -bench . -benchmem ./pipeline/

// benchConfig is the quickstart's shape: secret, schema, dedupe, and three
// file sinks rendering what Labelbox, Scale and Label Studio would get.
func benchConfig() string { return benchConfigFilter("") }

// benchConfigFilter sets every sink's filter; "false" keeps the sinks from
// rendering or delivering anything, leaving the ingress alone.
func benchConfigFilter(filter string) string {
	f := ""
	if filter != "" {
		f = "\n    filter: '" + filter + "'"
	}
	return `server: {addr: "", max_body_bytes: 33554432, shutdown_timeout: 60s}
admin: {addr: ""}
broker: {type: memory}
stages:
  - {type: secret, header: X-Aquarium-Secret, secrets: ["` + hookSecret + `"]}
  - {type: schema, schema: issue-exported}
  - {type: dedupe, store: memory, ttl: 1h}
sinks:
  - name: labelbox
    type: file
    path: out/labelbox.jsonl` + f + `
    body: |
      {query: "` + lbMutation + `", variables: (
` + indent(lbVariables, 6) + `)}
  - name: scale
    type: file
    path: out/scale.jsonl` + f + `
    body: |
` + indent(scaleBody, 6) + `
  - name: label_studio
    type: file
    path: out/label_studio.jsonl` + f + `
    body: |
` + indent(lsBody, 6) + `
`
}

// lbMutation is lbQuery on one line, for a jq string literal.
const lbMutation = `mutation QueueIssue($projectId: ID!, $name: String!, $globalKeys: [ID!]) { project(where: {id: $projectId}) { createBatchV2(input: {name: $name, globalKeys: $globalKeys, priority: 5}) { batch { id } failedDataRowIds } } }`

// payloadTemplate splits a sample payload around its issue id, so that each
// iteration sends a distinct export (the dedupe stage would answer the
// second one "duplicate") at the cost of one append.
func payloadTemplate(b *testing.B, file string) (before, after []byte) {
	b.Helper()
	body, id := samplePayload(b, file)
	quoted := []byte(strconv.Quote(id))
	i := bytes.Index(body, quoted)
	if i < 0 {
		b.Fatalf("issue id %s not in the payload", id)
	}
	return body[:i+1], body[i+len(quoted)-1:]
}

// benchPipeline runs a pipeline for a benchmark and returns its webhook
// handler. At the end it drains: every accepted export is delivered before
// the benchmark returns, outside the timer.
func benchPipeline(b *testing.B, cfgText string, tp trace.TracerProvider) http.Handler {
	b.Helper()
	cfg, err := pipeline.ParseConfig(filepath.Join(b.TempDir(), "bench.yaml"), []byte(cfgText))
	if err != nil {
		b.Fatal(err)
	}
	p, err := pipeline.New(cfg, pipeline.Options{Registry: builtin.Registry(), TracerProvider: tp})
	if err != nil {
		b.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	b.Cleanup(func() {
		b.StopTimer()
		stop()
		if err := <-done; err != nil {
			b.Errorf("Run: %v", err)
		}
		if err := p.Close(); err != nil {
			b.Errorf("Close: %v", err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for p.Ready(ctx) != nil {
		if time.Now().After(deadline) {
			b.Fatal("pipeline not ready")
		}
		time.Sleep(time.Millisecond)
	}
	return p.Handler()
}

// BenchmarkIngress is the webhook's whole synchronous path for a
// 10-element export: secret, schema, dedupe, publish, answer. Deliveries
// to the three file sinks run in the background as they would in the
// daemon; the memory broker pushes back when they fall behind, so this is
// the sustained rate. delivery=none keeps the sinks idle (their filter is
// false) to price the ingress alone. The tracing variants price the spans:
// off (no-op provider), sampled out (ratio 0), and every span recorded.
func BenchmarkIngress(b *testing.B) {
	noTracing := func() (trace.TracerProvider, func()) { return nil, func() {} }
	variants := []struct {
		name      string
		filter    string
		tp        func() (trace.TracerProvider, func())
		noHistory bool
	}{
		{"delivery=none/tracing=off", "false", noTracing, false},
		{"tracing=off", "", noTracing, false},
		// The history's cost on the happy path: compare with tracing=off.
		{"tracing=off/history=off", "", noTracing, true},
		{"tracing=sample0", "", func() (trace.TracerProvider, func()) {
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0))))
			return tp, func() { _ = tp.Shutdown(context.Background()) }
		}, false},
		{"tracing=full", "", func() (trace.TracerProvider, func()) {
			exp := tracetest.NewInMemoryExporter()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithSyncer(exp))
			// Keep memory flat: forget exported spans now and then.
			stopReset := make(chan struct{})
			go func() {
				t := time.NewTicker(100 * time.Millisecond)
				defer t.Stop()
				for {
					select {
					case <-stopReset:
						return
					case <-t.C:
						exp.Reset()
					}
				}
			}()
			return tp, func() { close(stopReset); _ = tp.Shutdown(context.Background()) }
		}, false},
	}
	before, after := payloadTemplate(b, "issue-10-elements.json")
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			tp, shutdown := v.tp()
			b.Cleanup(shutdown)
			cfg := benchConfigFilter(v.filter)
			if v.noHistory {
				cfg = strings.Replace(cfg, "broker: {type: memory}\n", "broker: {type: memory}\nhistory: {enabled: false}\n", 1)
			}
			h := benchPipeline(b, cfg, tp)
			body := make([]byte, 0, len(before)+len(after)+32)
			b.SetBytes(int64(len(before) + len(after) + 8))
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				body = append(strconv.AppendInt(append(body[:0], before...), int64(i), 10), after...)
				req := httptest.NewRequest(http.MethodPost, "/webhook", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("X-Aquarium-Secret", hookSecret)
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != http.StatusAccepted {
					b.Fatalf("iteration %d: %d %s", i, rec.Code, rec.Body)
				}
			}
		})
	}
}

// BenchmarkRenderFanout renders one decoded 10-element export for the
// three sinks, as the fan-out does once per export: the Labelbox batch,
// ten Scale tasks and the Label Studio import.
func BenchmarkRenderFanout(b *testing.B) {
	reg := builtin.Registry()
	cfg, err := pipeline.ParseConfig(filepath.Join(b.TempDir(), "bench.yaml"), []byte(benchConfig()), pipeline.ResolveWith(reg))
	if err != nil {
		b.Fatal(err)
	}
	var built []pipeline.Sink
	for _, sc := range cfg.Sinks {
		t, _ := reg.Sink(sc.Type)
		s, err := t.Build(sc.Options, pipeline.Env{Name: sc.Name, ConfigDir: cfg.Dir()})
		if err != nil {
			b.Fatal(err)
		}
		if c, ok := s.(pipeline.Closer); ok {
			b.Cleanup(func() { _ = c.Close() })
		}
		built = append(built, s)
	}
	raw := rawPayload(b, "issue-10-elements.json")
	var payload any
	if err := json.Unmarshal(raw, &payload); err != nil {
		b.Fatal(err)
	}
	export := map[string]any{"id": "01J0000000000000000000BENCH", "received_at": time.Now().UTC().Format(time.RFC3339Nano),
		"event": "issue-exported", "project": "pedestrian_detection", "issue_id": "issue_10elements"}
	ctx := context.Background()
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	requests := 0
	for b.Loop() {
		requests = 0
		for i, s := range built {
			export["sink"] = cfg.Sinks[i].Name
			bodies, err := s.Render(ctx, payload, export)
			if err != nil {
				b.Fatal(err)
			}
			requests += len(bodies)
		}
	}
	if requests != 12 {
		b.Fatalf("rendered %d requests, want 12 (1 + 10 + 1)", requests)
	}
	b.ReportMetric(float64(requests), "requests/op")
}
