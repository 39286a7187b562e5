package e2e_test

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
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/labelpipe/labelpipe/builtin"
	"github.com/labelpipe/labelpipe/configs"
	"github.com/labelpipe/labelpipe/internal/jaegertest"
	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/internal/testutil"
	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/backend"
	"github.com/labelpipe/labelpipe/pipeline/telemetry"
)

// payload has two elements: Scale gets two requests, Labelbox one.
const payload = "payloads/issue-crops.json"

const secret = "e2e-secret"

// TestJaegerTrace sends one export through labelpipe (in-process, exporting
// over OTLP/gRPC) to two instrumented fake vendors (exporting over
// OTLP/HTTP), all into one real Jaeger, and checks from Jaeger's query API
// that it is one trace with every span in its place: Aquarium's request,
// the webhook, each stage, the broker hops, the fan-out, each delivery and
// attempt, the client requests and the vendors' server spans.
func TestJaegerTrace(t *testing.T) {
	j := jaegertest.Start(t)
	tests := []struct {
		name string
		// backend is the broker and redis config for the case.
		backend func(t *testing.T) string
		// dedupeStore is the dedupe stage's store.
		dedupeStore string
	}{
		{name: "memory broker", dedupeStore: "memory", backend: func(*testing.T) string {
			return "broker: {type: memory}\n"
		}},
		{name: "redis broker", dedupeStore: "redis", backend: func(t *testing.T) string {
			return fmt.Sprintf("broker: {type: redis}\nredis: {url: %q}\n", redistest.Start(t).URL())
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { traceOneExport(t, j, tt.backend(t), tt.dedupeStore) })
	}
}

func traceOneExport(t *testing.T, j *jaegertest.Jaeger, backend, dedupeStore string) {
	ctx := t.Context()

	// Scale fails its first request with a 503, so one delivery is retried.
	var scaleCalls atomic.Int32
	scale := startVendor(t, j, "fake-scale", "POST /v1/task/imageannotation", func(w http.ResponseWriter, r *http.Request) {
		if scaleCalls.Add(1) == 1 {
			http.Error(w, `{"error":"try again"}`, http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"task_id":"t1","status":"pending"}`)
	})
	var labelboxCalls atomic.Int32
	labelbox := startVendor(t, j, "fake-labelbox", "POST /graphql", func(w http.ResponseWriter, r *http.Request) {
		labelboxCalls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"data":{"project":{"createBatchV2":{"batch":{"id":"b1"},"failedDataRowIds":[]}}}}`)
	})

	webhook, admin := freeAddr(t), freeAddr(t)
	cfg, err := pipeline.ParseConfig("e2e.yaml", []byte(fmt.Sprintf(`
server: {addr: %q, path: /webhook, shutdown_timeout: 10s}
admin: {addr: %q}
%s
tracing: {exporter: otlp, protocol: grpc, endpoint: %q, sample_ratio: 1, caller_context: parent}
stages:
  - {type: secret, header: X-Aquarium-Secret, secrets: [%q]}
  - {type: schema, schema: issue-exported}
  - {type: dedupe, store: %s, ttl: 1h}
sinks:
  - name: labelbox
    type: graphql
    url: %s/graphql
    query: "mutation Q($name: String!) { project(where: {id: \"p\"}) { createBatchV2(input: {name: $name}) { batch { id } } } }"
    variables: '{name: "aquarium-\($export.issue_id)"}'
  - name: scale
    type: http
    url: %s/v1/task/imageannotation
    body: '.issue.elements[] | {unique_id: .element_id, attachment: "x"}'
    retry: {max_attempts: 3, initial_interval: 10ms, max_interval: 20ms}
`, webhook, admin, backend, j.OTLPGRPC(), secret, dedupeStore, labelbox.URL, scale.URL)))
	if err != nil {
		t.Fatal(err)
	}

	// The daemon's wiring, as cmd/labelpipe does it.
	tel, err := telemetry.New(ctx, cfg.Tracing, telemetry.Info{Version: "e2e", ReplicaID: "replica-e2e"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	logs := &testutil.LockedBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("labelpipe log:\n%s", logs)
		}
	})
	p, err := pipeline.New(cfg, pipeline.Options{
		Registry:       builtin.Registry(),
		Logger:         slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		TracerProvider: tel.TracerProvider,
		MeterProvider:  tel.MeterProvider,
		Metrics:        tel.Metrics,
		ReplicaID:      "replica-e2e",
		Version:        "e2e",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(runCtx) }()
	waitReady(t, "http://"+admin+"/readyz", runErr)

	// Aquarium: its own span around the webhook request. A caller one runs
	// oneself (caller_context: parent above; the default only links it),
	// so the trace must continue the incoming traceparent.
	aquarium := newTracerProvider(t, j, "fake-aquarium")
	body, err := configs.Payloads.ReadFile(payload)
	if err != nil {
		t.Fatal(err)
	}
	sendCtx, root := aquarium.Tracer("e2e").Start(ctx, "export issue")
	req, err := http.NewRequestWithContext(sendCtx, http.MethodPost, "http://"+webhook+"/webhook", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Aquarium-Secret", secret)
	client := &http.Client{Transport: otelhttp.NewTransport(http.DefaultTransport,
		otelhttp.WithTracerProvider(aquarium), otelhttp.WithPropagators(propagation.TraceContext{}))}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var accepted struct {
		Status  string `json:"status"`
		ID      string `json:"id"`
		TraceID string `json:"trace_id"`
	}
	err = json.NewDecoder(resp.Body).Decode(&accepted)
	_ = resp.Body.Close()
	root.End()
	if err != nil || resp.StatusCode != http.StatusAccepted || accepted.ID == "" {
		t.Fatalf("webhook answered %d %+v (%v), want 202 with an id", resp.StatusCode, accepted, err)
	}
	if want := root.SpanContext().TraceID().String(); accepted.TraceID != want {
		t.Fatalf("202 trace_id %q, want Aquarium's %q: the incoming traceparent was not continued", accepted.TraceID, want)
	}

	// Every request reached its vendor; then drain labelpipe and flush all
	// span exporters so that Jaeger has everything.
	waitFor(t, "vendor requests", func() bool { return scaleCalls.Load() == 3 && labelboxCalls.Load() == 1 })
	stop()
	select {
	case err := <-runErr:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	for _, f := range []func(context.Context) error{tel.Shutdown, aquarium.Shutdown, scale.tp.Shutdown, labelbox.tp.Shutdown} {
		if err := f(ctx); err != nil {
			t.Fatalf("flush spans: %v", err)
		}
	}

	waitCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	tr, err := j.WaitTrace(waitCtx, accepted.TraceID, complete)
	if err != nil {
		t.Fatalf("%v\n%s", err, tr)
	}
	t.Logf("trace in Jaeger (%s/trace/%s):\n%s", j.QueryURL(), tr.TraceID, tr)
	checkTrace(t, tr, accepted.ID, dedupeStore == "redis")
}

// want counts the spans the trace must hold once everything is exported.
var want = []struct {
	service, op string
	n           int
}{
	{"fake-aquarium", "export issue", 1},
	{"fake-aquarium", "HTTP POST", 1},
	{"labelpipe", "POST /webhook", 1},
	{"labelpipe", "stage secret", 1},
	{"labelpipe", "stage schema", 1},
	{"labelpipe", "stage dedupe", 1},
	{"labelpipe", "publish exports", 1},
	{"labelpipe", "process exports", 1},
	{"labelpipe", "publish sink.labelbox", 1},
	{"labelpipe", "publish sink.scale", 1},
	{"labelpipe", "process sink.labelbox", 1},
	{"labelpipe", "process sink.scale", 2},
	{"labelpipe", "deliver labelbox", 1},
	{"labelpipe", "deliver scale", 2},
	{"labelpipe", "attempt labelbox", 1},
	{"labelpipe", "attempt scale", 3},
	{"labelpipe", "HTTP POST", 4},
	{"fake-labelbox", "POST /graphql", 1},
	{"fake-scale", "POST /v1/task/imageannotation", 3},
}

// complete reports whether Jaeger has every span want lists.
func complete(tr jaegertest.Trace) bool {
	for _, w := range want {
		if len(tr.Find(w.service, w.op)) < w.n {
			return false
		}
	}
	return true
}

// checkTrace asserts the span tree; onRedis adds the Redis command spans
// (redisotel) and the redis messaging system.
func checkTrace(t *testing.T, tr jaegertest.Trace, exportID string, onRedis bool) {
	t.Helper()
	for _, w := range want {
		if got := len(tr.Find(w.service, w.op)); got != w.n {
			t.Errorf("%d %s spans %q, want %d", got, w.service, w.op, w.n)
		}
	}
	if t.Failed() {
		return
	}
	one := func(service, op string) jaegertest.Span { return tr.Find(service, op)[0] }
	parentIs := func(s, parent jaegertest.Span) {
		t.Helper()
		if s.ParentSpanID != parent.SpanID {
			t.Errorf("%s %q (span %s) has parent %q, want %s %q (span %s)",
				s.ServiceName, s.OperationName, s.SpanID, s.ParentSpanID, parent.ServiceName, parent.OperationName, parent.SpanID)
		}
	}
	redisChild := func(s jaegertest.Span) {
		t.Helper()
		for _, c := range tr.Children(s.SpanID) {
			if c.Tags["db.system"] == "redis" && c.Kind == "client" {
				return
			}
		}
		if onRedis {
			t.Errorf("%s %q has no Redis command span under it", s.ServiceName, s.OperationName)
		}
	}
	kindIs := func(s jaegertest.Span, kind string) {
		t.Helper()
		if s.Kind != kind {
			t.Errorf("%s %q is kind %q, want %q", s.ServiceName, s.OperationName, s.Kind, kind)
		}
	}
	tag := func(s jaegertest.Span, key string, want any) {
		t.Helper()
		if got := s.Tags[key]; got != want {
			t.Errorf("%s %q: tag %s = %#v, want %#v", s.ServiceName, s.OperationName, key, got, want)
		}
	}

	// Aquarium's request, continued by the webhook server span.
	root, aqClient := one("fake-aquarium", "export issue"), one("fake-aquarium", "HTTP POST")
	if roots := tr.Roots(); len(roots) != 1 || roots[0].SpanID != root.SpanID {
		t.Errorf("trace roots %v, want only Aquarium's span", roots)
	}
	parentIs(aqClient, root)
	hook := one("labelpipe", "POST /webhook")
	parentIs(hook, aqClient)
	kindIs(hook, "server")
	tag(hook, "http.response.status_code", int64(http.StatusAccepted))
	tag(hook, "labelpipe.export.id", exportID)
	tag(hook, "labelpipe.answer", "accepted")
	if hook.Process["service.instance.id"] != "replica-e2e" || hook.Process["service.version"] != "e2e" {
		t.Errorf("labelpipe resource %v, want service.instance.id replica-e2e and service.version e2e", hook.Process)
	}

	// Ingress stages, in order, under the webhook span.
	var last time.Time
	for _, name := range []string{"secret", "schema", "dedupe"} {
		s := one("labelpipe", "stage "+name)
		parentIs(s, hook)
		tag(s, "labelpipe.stage.type", name)
		tag(s, "labelpipe.stage.name", name)
		tag(s, "labelpipe.stage.outcome", "passed")
		if name == "dedupe" {
			redisChild(s)
		}
		if s.Start.Before(last) {
			t.Errorf("stage %s started before the stage ahead of it", name)
		}
		last = s.Start
	}

	// The broker hop and the fan-out.
	pubExports := one("labelpipe", "publish exports")
	parentIs(pubExports, hook)
	kindIs(pubExports, "producer")
	tag(pubExports, "messaging.destination.name", backend.TopicExports)
	system := "gochannel"
	if onRedis {
		system = "redis"
	}
	tag(pubExports, "messaging.system", system)
	fanout := one("labelpipe", "process exports")
	parentIs(fanout, pubExports)
	kindIs(fanout, "consumer")

	// Per sink: publish, consume, deliver, attempts, client and vendor.
	vendors := map[string]string{"labelbox": "fake-labelbox", "scale": "fake-scale"}
	vendorOps := map[string]string{"labelbox": "POST /graphql", "scale": "POST /v1/task/imageannotation"}
	var retried int
	for sink, vendor := range vendors {
		pub := one("labelpipe", "publish sink."+sink)
		parentIs(pub, fanout)
		kindIs(pub, "producer")
		tag(pub, "messaging.destination.name", backend.TopicSink(sink))
		for _, consume := range tr.Find("labelpipe", "process sink."+sink) {
			parentIs(consume, pub)
			kindIs(consume, "consumer")
			redisChild(consume) // the delivered ledger
			deliveries := only(tr.Children(consume.SpanID), "deliver "+sink)
			if len(deliveries) != 1 {
				t.Errorf("consumer span %s has %d deliver spans, want 1", consume.SpanID, len(deliveries))
				continue
			}
			deliver := deliveries[0]
			tag(deliver, "labelpipe.sink", sink)
			if deliver.Error {
				t.Errorf("deliver %s ended in error", sink)
			}
			attempts := only(tr.Children(deliver.SpanID), "attempt "+sink)
			if len(attempts) > 1 {
				retried++
			}
			for i, a := range attempts {
				tag(a, "labelpipe.attempt", int64(i+1))
				tag(a, "labelpipe.breaker.state", "closed")
				// Jittered backoff may round to 0ms, so only the first
				// attempt's value is certain; a retry starts after the
				// attempt before it ended.
				if backoff, ok := a.Tags["labelpipe.backoff_ms"].(int64); !ok || (i == 0 && backoff != 0) {
					t.Errorf("attempt %d to %s: labelpipe.backoff_ms = %#v, want an int, 0 on the first", i+1, sink, a.Tags["labelpipe.backoff_ms"])
				}
				if i > 0 && a.Start.Before(attempts[i-1].Start.Add(attempts[i-1].Duration)) {
					t.Errorf("attempt %d to %s started before attempt %d ended", i+1, sink, i)
				}
				failed := i < len(attempts)-1
				if a.Error != failed {
					t.Errorf("attempt %d of %d to %s: error %v, want %v", i+1, len(attempts), sink, a.Error, failed)
				}
				clients := only(tr.Children(a.SpanID), "HTTP POST")
				if len(clients) != 1 {
					t.Errorf("attempt %d to %s has %d HTTP client spans, want 1", i+1, sink, len(clients))
					continue
				}
				kindIs(clients[0], "client")
				servers := tr.Children(clients[0].SpanID)
				if len(servers) != 1 || servers[0].ServiceName != vendor || servers[0].OperationName != vendorOps[sink] {
					t.Errorf("client span of attempt %d to %s has children %v, want one %s server span", i+1, sink, servers, vendor)
					continue
				}
				kindIs(servers[0], "server")
				wantStatus := int64(http.StatusOK)
				if failed {
					wantStatus = http.StatusServiceUnavailable
				}
				tag(servers[0], "http.response.status_code", wantStatus)
				tag(clients[0], "http.response.status_code", wantStatus)
			}
		}
	}
	if retried != 1 {
		t.Errorf("%d deliveries were retried, want 1 (Scale's first answer is 503)", retried)
	}
}

// only keeps the spans named op.
func only(spans []jaegertest.Span, op string) []jaegertest.Span {
	var out []jaegertest.Span
	for _, s := range spans {
		if s.OperationName == op {
			out = append(out, s)
		}
	}
	return out
}

// vendor is a fake vendor API, traced like a real service would be.
type vendor struct {
	URL string
	tp  *sdktrace.TracerProvider
}

// startVendor serves h under otelhttp with the vendor's own tracer
// provider, which exports to Jaeger as service.
func startVendor(t *testing.T, j *jaegertest.Jaeger, service, spanName string, h http.HandlerFunc) *vendor {
	t.Helper()
	tp := newTracerProvider(t, j, service)
	srv := httptest.NewServer(otelhttp.NewHandler(h, service,
		otelhttp.WithTracerProvider(tp),
		otelhttp.WithPropagators(propagation.TraceContext{}),
		otelhttp.WithSpanNameFormatter(func(string, *http.Request) string { return spanName })))
	t.Cleanup(srv.Close)
	return &vendor{URL: srv.URL, tp: tp}
}

func newTracerProvider(t *testing.T, j *jaegertest.Jaeger, service string) *sdktrace.TracerProvider {
	t.Helper()
	exp, err := otlptracehttp.New(t.Context(), otlptracehttp.WithEndpointURL(j.OTLPHTTP()+"/v1/traces"))
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", service))))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp
}

// freeAddr returns a loopback address nothing listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

// waitReady polls /readyz until it answers 200, Run fails, or 10s pass.
func waitReady(t *testing.T, url string, runErr <-chan error) {
	t.Helper()
	poll(t, 10*time.Second, 10*time.Millisecond, "labelpipe ready at "+url, func() bool {
		if resp, err := http.Get(url); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true
			}
		}
		select {
		case err := <-runErr:
			t.Fatalf("Run returned before ready: %v", err)
		default:
		}
		return false
	})
}

// waitFor polls cond until it holds or 20s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll(t, 20*time.Second, 10*time.Millisecond, what, cond)
}

// poll checks cond every interval until it holds, failing the test after
// within.
func poll(t *testing.T, within, every time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(within)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}
