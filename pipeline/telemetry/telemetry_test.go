package telemetry_test

import (
	"bufio"
	"context"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/telemetry"
)

// receiver is a minimal OTLP trace receiver over HTTP or gRPC that keeps
// what it was sent.
type receiver struct {
	coltracepb.UnimplementedTraceServiceServer

	// hostPort is where it listens; url is http://hostPort.
	hostPort, url string

	mu      sync.Mutex
	spans   []*tracepb.Span
	res     map[string]string // resource attributes of the last request
	headers map[string]string // lower-case request headers of the last request
}

func (r *receiver) record(req *coltracepb.ExportTraceServiceRequest, headers map[string]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.headers = headers
	for _, rs := range req.GetResourceSpans() {
		r.res = map[string]string{}
		for _, kv := range rs.GetResource().GetAttributes() {
			r.res[kv.GetKey()] = kv.GetValue().GetStringValue()
		}
		for _, ss := range rs.GetScopeSpans() {
			r.spans = append(r.spans, ss.GetSpans()...)
		}
	}
}

func (r *receiver) Export(ctx context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	h := map[string]string{}
	for k, v := range md {
		h[k] = strings.Join(v, ",")
	}
	r.record(req, h)
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func startHTTPReceiver(t *testing.T) *receiver {
	t.Helper()
	r := &receiver{}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/traces", func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(req.Body)
		var msg coltracepb.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(body, &msg)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		h := map[string]string{}
		for k, v := range req.Header {
			h[strings.ToLower(k)] = strings.Join(v, ",")
		}
		r.record(&msg, h)
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	r.url = srv.URL
	r.hostPort = strings.TrimPrefix(srv.URL, "http://")
	return r
}

func startGRPCReceiver(t *testing.T) *receiver {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &receiver{hostPort: lis.Addr().String(), url: "http://" + lis.Addr().String()}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, r)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return r
}

func ptr[T any](v T) *T { return &v }

// clearOTELEnv unsets the OTEL_* variables these tests depend on, so a
// developer's or CI's own OTel settings cannot change their outcome.
func clearOTELEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "OTEL_") {
			t.Setenv(k, "") // restores the old value after the test
			_ = os.Unsetenv(k)
		}
	}
}

func TestTelemetryOTLP(t *testing.T) {
	tests := []struct {
		name  string
		grpc  bool
		cfg   func(r *receiver) pipeline.TracingConfig
		env   func(r *receiver) map[string]string
		spans []string          // exported span names, sorted
		res   map[string]string // resource attributes that must be present
		hdr   map[string]string // request headers that must be present
	}{
		{
			name: "http base url from config",
			cfg: func(r *receiver) pipeline.TracingConfig {
				return pipeline.TracingConfig{Exporter: "otlp", Protocol: "http", Endpoint: r.url, ServiceName: "from-config"}
			},
			env:   func(*receiver) map[string]string { return map[string]string{"OTEL_SERVICE_NAME": "from-env"} },
			spans: []string{"child", "root"},
			res: map[string]string{
				"service.name": "from-config", "service.version": "1.2.3", "service.instance.id": "replica-7",
				"telemetry.sdk.language": "go",
			},
		},
		{
			name: "http loopback host:port defaults to plain text",
			cfg: func(r *receiver) pipeline.TracingConfig {
				return pipeline.TracingConfig{Exporter: "otlp", Protocol: "http", Endpoint: r.hostPort}
			},
			spans: []string{"child", "root"},
			res:   map[string]string{"service.name": "labelpipe"},
		},
		{
			name: "http endpoint, protocol, headers and resource from OTEL env",
			cfg:  func(*receiver) pipeline.TracingConfig { return pipeline.TracingConfig{Exporter: "otlp"} },
			env: func(r *receiver) map[string]string {
				return map[string]string{
					"OTEL_EXPORTER_OTLP_ENDPOINT": r.url, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
					"OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=sekret", "OTEL_SERVICE_NAME": "from-env",
					"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test",
				}
			},
			spans: []string{"child", "root"},
			res:   map[string]string{"service.name": "from-env", "deployment.environment.name": "test"},
			hdr:   map[string]string{"x-api-key": "sekret"},
		},
		{
			name: "exporter chosen by OTEL_TRACES_EXPORTER",
			cfg:  func(*receiver) pipeline.TracingConfig { return pipeline.TracingConfig{} },
			env: func(r *receiver) map[string]string {
				return map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": r.url + "/v1/traces"}
			},
			spans: []string{"child", "root"},
		},
		{
			name: "grpc loopback host:port from config",
			grpc: true,
			cfg: func(r *receiver) pipeline.TracingConfig {
				return pipeline.TracingConfig{Exporter: "otlp", Protocol: "grpc", Endpoint: r.hostPort}
			},
			spans: []string{"child", "root"},
			res:   map[string]string{"service.name": "labelpipe", "service.instance.id": "replica-7"},
		},
		{
			name: "grpc is the default protocol, endpoint and headers from env",
			grpc: true,
			cfg:  func(*receiver) pipeline.TracingConfig { return pipeline.TracingConfig{Exporter: "otlp"} },
			env: func(r *receiver) map[string]string {
				return map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": r.url, "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=sekret"}
			},
			spans: []string{"child", "root"},
			hdr:   map[string]string{"x-api-key": "sekret"},
		},
		{
			name: "sample_ratio 0 records nothing",
			cfg: func(r *receiver) pipeline.TracingConfig {
				return pipeline.TracingConfig{Exporter: "otlp", Protocol: "http", Endpoint: r.url, SampleRatio: ptr(0.0)}
			},
		},
		{
			name: "OTEL_TRACES_SAMPLER applies when sample_ratio is unset",
			cfg: func(r *receiver) pipeline.TracingConfig {
				return pipeline.TracingConfig{Exporter: "otlp", Protocol: "http", Endpoint: r.url}
			},
			env: func(*receiver) map[string]string { return map[string]string{"OTEL_TRACES_SAMPLER": "always_off"} },
		},
		{
			name: "sample_ratio beats OTEL_TRACES_SAMPLER",
			cfg: func(r *receiver) pipeline.TracingConfig {
				return pipeline.TracingConfig{Exporter: "otlp", Protocol: "http", Endpoint: r.url, SampleRatio: ptr(1.0)}
			},
			env:   func(*receiver) map[string]string { return map[string]string{"OTEL_TRACES_SAMPLER": "always_off"} },
			spans: []string{"child", "root"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearOTELEnv(t)
			r := startHTTPReceiver(t)
			if tt.grpc {
				r = startGRPCReceiver(t)
			}
			// A schedule delay far beyond the test's run time: spans can only
			// arrive because Shutdown flushes them.
			t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
			if tt.env != nil {
				for k, v := range tt.env(r) {
					t.Setenv(k, v)
				}
			}
			tel, err := telemetry.New(t.Context(), tt.cfg(r), telemetry.Info{Version: "1.2.3", ReplicaID: "replica-7"})
			if err != nil {
				t.Fatal(err)
			}
			tracer := tel.TracerProvider.Tracer("test")
			ctx, root := tracer.Start(t.Context(), "root")
			_, child := tracer.Start(ctx, "child")
			child.End()
			root.End()
			if err := tel.Shutdown(t.Context()); err != nil {
				t.Fatalf("shutdown: %v", err)
			}
			if err := tel.Shutdown(t.Context()); err != nil {
				t.Fatalf("second shutdown: %v", err)
			}

			r.mu.Lock()
			defer r.mu.Unlock()
			var names []string
			byName := map[string]*tracepb.Span{}
			for _, s := range r.spans {
				names = append(names, s.GetName())
				byName[s.GetName()] = s
			}
			slices.Sort(names)
			if !slices.Equal(names, tt.spans) {
				t.Fatalf("exported spans %q, want %q", names, tt.spans)
			}
			if len(tt.spans) == 0 {
				return
			}
			if got, want := hex.EncodeToString(byName["child"].GetParentSpanId()), hex.EncodeToString(byName["root"].GetSpanId()); got != want {
				t.Errorf("child's parent %s, want root %s", got, want)
			}
			if _, ok := r.res["host.name"]; !ok {
				t.Errorf("resource has no host.name: %v", r.res)
			}
			for k, want := range tt.res {
				if got := r.res[k]; got != want {
					t.Errorf("resource %s = %q, want %q (all: %v)", k, got, want, r.res)
				}
			}
			for k, want := range tt.hdr {
				if got := r.headers[k]; got != want {
					t.Errorf("header %s = %q, want %q", k, got, want)
				}
			}
		})
	}
}

func TestTelemetryNone(t *testing.T) {
	clearOTELEnv(t)
	tel, err := telemetry.New(t.Context(), pipeline.TracingConfig{Exporter: "none"}, telemetry.Info{})
	if err != nil {
		t.Fatal(err)
	}
	tracer := tel.TracerProvider.Tracer("test")

	ctx, root := tracer.Start(t.Context(), "root")
	_, child := tracer.Start(ctx, "child")
	if root.IsRecording() || child.IsRecording() {
		t.Error("exporter none records spans")
	}
	rsc, csc := root.SpanContext(), child.SpanContext()
	if !rsc.IsValid() || !csc.IsValid() {
		t.Errorf("span contexts not valid: %v %v; the 202 answer needs a trace_id", rsc, csc)
	}
	if rsc.TraceID() != csc.TraceID() || rsc.SpanID() == csc.SpanID() {
		t.Errorf("child %v does not continue root %v", csc, rsc)
	}
	if rsc.IsSampled() {
		t.Error("exporter none marks spans sampled")
	}
	child.End()
	root.End()

	// An incoming traceparent is continued even with tracing off.
	const incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	ctx = pipeline.Propagator().Extract(t.Context(), propagation.MapCarrier{"traceparent": incoming})
	_, span := tracer.Start(ctx, "continued")
	if got := span.SpanContext().TraceID().String(); got != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("trace id %s, want the incoming one", got)
	}
	span.End()

	for range 2 {
		if err := tel.Shutdown(t.Context()); err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	}
}

// TestTelemetryStdout runs itself as a child process: stdouttrace captures
// os.Stdout when its package initialises, so only a fresh process's real
// stdout shows what the exporter writes.
func TestTelemetryStdout(t *testing.T) {
	if os.Getenv("LABELPIPE_TEST_STDOUT_CHILD") == "1" {
		tel, err := telemetry.New(t.Context(), pipeline.TracingConfig{Exporter: "stdout"}, telemetry.Info{})
		if err != nil {
			t.Fatal(err)
		}
		_, span := tel.TracerProvider.Tracer("test").Start(t.Context(), "stdout-span")
		span.SetAttributes(attribute.String("long", strings.Repeat("x", 10000)))
		span.End()
		if err := tel.Shutdown(t.Context()); err != nil {
			t.Fatal(err)
		}
		return
	}
	clearOTELEnv(t)
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestTelemetryStdout$", "-test.count=1")
	cmd.Env = append(os.Environ(), "LABELPIPE_TEST_STDOUT_CHILD=1", "OTEL_BSP_SCHEDULE_DELAY=600000")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), `"Name": "stdout-span"`) {
		t.Errorf("stdout exporter wrote %q, want the span pretty-printed", out)
	}
	// A hostile-sized attribute is cut to 4 KiB.
	if !strings.Contains(string(out), strings.Repeat("x", 4096)+`"`) || strings.Contains(string(out), strings.Repeat("x", 4097)) {
		t.Errorf("a 10,000-character attribute was not cut to 4096")
	}
}

func TestTelemetryMetrics(t *testing.T) {
	clearOTELEnv(t)
	tel, err := telemetry.New(t.Context(), pipeline.TracingConfig{}, telemetry.Info{ReplicaID: "r1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })

	c, err := tel.MeterProvider.Meter("test").Int64Counter("labelpipe.test.widgets")
	if err != nil {
		t.Fatal(err)
	}
	c.Add(t.Context(), 2, metric.WithAttributes(attribute.String("sink", "scale")))
	c.Add(t.Context(), 1, metric.WithAttributes(attribute.String("sink", "scale")))

	rec := httptest.NewRecorder()
	tel.Metrics.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: %d", rec.Code)
	}
	var counter, goroutines, target bool
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "labelpipe_test_widgets_total{") && strings.Contains(line, `sink="scale"`):
			counter = strings.HasSuffix(line, " 3")
			if !counter {
				t.Errorf("counter line %q, want value 3", line)
			}
		case strings.HasPrefix(line, "go_goroutines "):
			goroutines = true
		case strings.HasPrefix(line, "target_info{"):
			target = strings.Contains(line, `service_instance_id="r1"`) && strings.Contains(line, `service_name="labelpipe"`)
		}
	}
	if !counter || !goroutines || !target {
		t.Errorf("metrics: counter %v, go runtime %v, target_info %v; body:\n%s", counter, goroutines, target, rec.Body)
	}

	// A second Telemetry has its own registry: nothing leaks between them.
	other, err := telemetry.New(t.Context(), pipeline.TracingConfig{}, telemetry.Info{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Shutdown(context.Background()) })
	rec = httptest.NewRecorder()
	other.Metrics.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if strings.Contains(rec.Body.String(), "labelpipe_test_widgets") {
		t.Error("metrics leaked into another Telemetry's registry")
	}
}

func TestTelemetryErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  pipeline.TracingConfig
		env  map[string]string
		want string
	}{
		{name: "unknown exporter", cfg: pipeline.TracingConfig{Exporter: "zipkin"}, want: `unknown exporter "zipkin"`},
		{name: "unknown exporter from env", env: map[string]string{"OTEL_TRACES_EXPORTER": "jaeger"}, want: `unknown exporter "jaeger"`},
		{name: "unsupported protocol from env", cfg: pipeline.TracingConfig{Exporter: "otlp"}, env: map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, want: `unsupported otlp protocol "http/json"`},
		// The endpoint may carry credentials; an error must not repeat them.
		{name: "unparseable endpoint with credentials", cfg: pipeline.TracingConfig{Exporter: "otlp", Protocol: "http/protobuf",
			Endpoint: "https://user:hunter2secret@collector.example:4318/%zz"}, want: "tracing.endpoint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearOTELEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			tel, err := telemetry.New(t.Context(), tt.cfg, telemetry.Info{})
			if err == nil {
				_ = tel.Shutdown(t.Context())
				t.Fatalf("no error, want %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "hunter2secret") {
				t.Errorf("error %q, want it to contain %q and no credentials", err, tt.want)
			}
		})
	}
}

func TestPropagator(t *testing.T) {
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled})
	member, _ := baggage.NewMember("tenant", "acme")
	bag, _ := baggage.New(member)
	ctx := baggage.ContextWithBaggage(trace.ContextWithSpanContext(t.Context(), sc), bag)

	carrier := propagation.MapCarrier{}
	pipeline.Propagator().Inject(ctx, carrier)
	if got, want := carrier["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"; got != want {
		t.Errorf("traceparent %q, want %q", got, want)
	}
	if got := carrier["baggage"]; got != "tenant=acme" {
		t.Errorf("baggage %q, want tenant=acme", got)
	}

	back := pipeline.Propagator().Extract(t.Context(), carrier)
	if got := trace.SpanContextFromContext(back); got.TraceID() != tid || got.SpanID() != sid || !got.IsRemote() {
		t.Errorf("extracted %v, want remote %v", got, sc)
	}
	if got := baggage.FromContext(back).Member("tenant").Value(); got != "acme" {
		t.Errorf("extracted baggage tenant=%q, want acme", got)
	}
}
