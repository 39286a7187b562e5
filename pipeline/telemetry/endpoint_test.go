package telemetry_test

import (
	"context"
	"strings"
	"testing"

	"github.com/labelpipe/labelpipe/internal/jaegertest"
	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/telemetry"
)

// tracing.endpoint accepts a URL as well as host:port, for either
// protocol, and each form reaches a real Jaeger (issue 12: the README's
// example must be a valid URL, like OTEL_EXPORTER_OTLP_ENDPOINT).
func TestEndpointFormsReachJaeger(t *testing.T) {
	clearOTELEnv(t)
	j := jaegertest.Start(t)
	grpcHostPort := j.OTLPGRPC()
	httpURL := j.OTLPHTTP()
	for _, tc := range []struct{ name, protocol, endpoint string }{
		{"grpc URL", "grpc", "http://" + grpcHostPort},
		{"grpc URL with a slash", "", "http://" + grpcHostPort + "/"},
		{"grpc host:port", "grpc", grpcHostPort},
		{"http base URL", "http", httpURL},
		{"http URL with the traces path", "http", httpURL + "/v1/traces"},
		{"http host:port", "http", strings.TrimPrefix(httpURL, "http://")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := pipeline.TracingConfig{Exporter: "otlp", Protocol: tc.protocol, Endpoint: tc.endpoint, ServiceName: "endpoint-test"}
			if err := pipeline.CheckOTLPEndpoint(cfg.Endpoint, cfg.Protocol); err != nil {
				t.Fatalf("config check refuses %q: %v", tc.endpoint, err)
			}
			prov, err := telemetry.New(t.Context(), cfg, telemetry.Info{})
			if err != nil {
				t.Fatal(err)
			}
			_, span := prov.TracerProvider.Tracer("test").Start(context.Background(), "span via "+tc.name)
			traceID := span.SpanContext().TraceID().String()
			span.End()
			if err := prov.Shutdown(t.Context()); err != nil { // flushes
				t.Fatalf("export to %s: %v", tc.endpoint, err)
			}
			tr, err := j.WaitTrace(t.Context(), traceID, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := tr.Find("endpoint-test", "span via "+tc.name); len(got) != 1 {
				t.Fatalf("Jaeger has %d spans named %q:\n%s", len(got), "span via "+tc.name, tr)
			}
		})
	}
}
