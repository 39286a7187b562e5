package jaegertest_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/labelpipe/labelpipe/internal/jaegertest"
)

func TestCacheDir(t *testing.T) {
	tests := []struct {
		name             string
		cache, xdg, home string
		want             string
	}{
		{name: "LABELPIPE_CACHE wins", cache: "/c", xdg: "/x", home: "/h", want: "/c"},
		{name: "XDG_CACHE_HOME", xdg: "/x", home: "/h", want: filepath.Join("/x", "labelpipe")},
		{name: "home", home: "/h", want: filepath.Join("/h", ".cache", "labelpipe")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("LABELPIPE_CACHE", tt.cache)
			t.Setenv("XDG_CACHE_HOME", tt.xdg)
			t.Setenv("HOME", tt.home)
			got, err := jaegertest.CacheDir()
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("CacheDir() = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestJaeger sends a two-span trace over each OTLP protocol to a real
// Jaeger and reads it back through the query API.
func TestJaeger(t *testing.T) {
	j := jaegertest.Start(t)
	if !strings.HasPrefix(j.OTLPHTTP(), "http://127.0.0.1:") || !strings.HasPrefix(j.QueryURL(), "http://127.0.0.1:") || !strings.HasPrefix(j.OTLPGRPC(), "127.0.0.1:") {
		t.Fatalf("addresses not on loopback: %s %s %s", j.OTLPGRPC(), j.OTLPHTTP(), j.QueryURL())
	}

	tests := []struct {
		name     string
		exporter func(ctx context.Context) (sdktrace.SpanExporter, error)
	}{
		{name: "grpc", exporter: func(ctx context.Context) (sdktrace.SpanExporter, error) {
			return otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(j.OTLPGRPC()), otlptracegrpc.WithInsecure())
		}},
		{name: "http", exporter: func(ctx context.Context) (sdktrace.SpanExporter, error) {
			return otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(j.OTLPHTTP()+"/v1/traces"))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			exp, err := tt.exporter(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			service := "jaegertest-" + tt.name
			tp := sdktrace.NewTracerProvider(
				sdktrace.WithBatcher(exp),
				sdktrace.WithResource(resource.NewSchemaless(
					attribute.String("service.name", service), attribute.String("service.version", "9.9.9"))),
			)
			tracer := tp.Tracer("jaegertest")
			ctx, parent := tracer.Start(t.Context(), "parent", trace.WithSpanKind(trace.SpanKindServer),
				trace.WithAttributes(attribute.String("s", "v"), attribute.Int64("n", 1<<40), attribute.Bool("b", true)))
			_, child := tracer.Start(ctx, "child", trace.WithSpanKind(trace.SpanKindClient))
			child.AddEvent("retry", trace.WithAttributes(attribute.Int("attempt", 2)))
			child.SetStatus(codes.Error, "vendor said no")
			child.End()
			parent.End()
			if err := tp.Shutdown(t.Context()); err != nil {
				t.Fatalf("flush spans: %v", err)
			}

			traceID := parent.SpanContext().TraceID().String()
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			tr, err := j.WaitTrace(ctx, traceID, func(tr jaegertest.Trace) bool { return len(tr.Spans) == 2 })
			if err != nil {
				t.Fatalf("%v\n%s", err, tr)
			}

			if tr.TraceID != traceID {
				t.Errorf("trace id %s, want %s", tr.TraceID, traceID)
			}
			ps, cs := tr.Find(service, "parent"), tr.Find(service, "child")
			if len(ps) != 1 || len(cs) != 1 {
				t.Fatalf("want one parent and one child span of %s:\n%s", service, tr)
			}
			p, c := ps[0], cs[0]
			if p.SpanID != parent.SpanContext().SpanID().String() || p.ParentSpanID != "" {
				t.Errorf("parent span %s (parent %q), want %s as a root", p.SpanID, p.ParentSpanID, parent.SpanContext().SpanID())
			}
			if c.ParentSpanID != p.SpanID {
				t.Errorf("child's parent %q, want %q", c.ParentSpanID, p.SpanID)
			}
			if kids := tr.Children(p.SpanID); len(kids) != 1 || kids[0].SpanID != c.SpanID {
				t.Errorf("Children(parent) = %v, want the child", kids)
			}
			if p.Kind != "server" || c.Kind != "client" {
				t.Errorf("kinds %q, %q, want server, client", p.Kind, c.Kind)
			}
			if p.Tags["s"] != "v" || p.Tags["n"] != int64(1<<40) || p.Tags["b"] != true {
				t.Errorf("parent tags %v, want s=v n=2^40 b=true", p.Tags)
			}
			if p.Process["service.version"] != "9.9.9" {
				t.Errorf("process tags %v, want service.version 9.9.9", p.Process)
			}
			if p.Error || !c.Error {
				t.Errorf("error flags parent %v child %v, want false, true", p.Error, c.Error)
			}
			if len(c.Events) != 1 || c.Events[0].Name != "retry" || c.Events[0].Fields["attempt"] != int64(2) {
				t.Errorf("child events %+v, want retry with attempt=2", c.Events)
			}
			if c.Start.Before(p.Start) || c.Duration > p.Duration {
				t.Errorf("child [%s +%s] not within parent [%s +%s]", c.Start, c.Duration, p.Start, p.Duration)
			}
			if !strings.Contains(tr.String(), "  "+service+": child [client] ERROR") {
				t.Errorf("String() does not draw the child under the parent:\n%s", tr)
			}
		})
	}

	t.Run("missing trace times out", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		_, err := j.WaitTrace(ctx, "0123456789abcdef0123456789abcdef", nil)
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "trace not found") {
			t.Errorf("WaitTrace on a missing trace: %v, want deadline exceeded, trace not found", err)
		}
	})
}
