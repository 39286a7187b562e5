// Package telemetry is the daemon's telemetry wiring: a TracerProvider
// built from the `tracing:` config and the standard OTEL_* environment
// variables, a MeterProvider whose Prometheus exporter writes to a private
// registry that the admin listener serves at /metrics, and Go's profiles.
// Nothing here touches the otel globals: embedders inject their own
// providers through pipeline.New, and the daemon passes these. It lives
// outside the core so that a plugin author does not pull in the OTLP
// exporters, grpc or the Prometheus client.
package telemetry

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/credentials"

	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/redact"
)

// defaultServiceName is service.name when neither tracing.service_name nor
// OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES) says
// otherwise.
const defaultServiceName = "labelpipe"

// Info describes this process for the OTel resource.
type Info struct {
	// Version becomes service.version.
	Version string
	// ReplicaID becomes service.instance.id; empty leaves it out.
	ReplicaID string
}

// Providers holds the providers the daemon builds from config. Shut it down
// last, after the router has drained, so the final spans are exported.
type Providers struct {
	// TracerProvider is never nil. With exporter none it still hands out
	// valid trace and span IDs (so the 202 answer and log lines carry a
	// trace_id to continue from), but records and exports nothing.
	TracerProvider trace.TracerProvider
	// MeterProvider is an SDK meter provider with a Prometheus exporter on
	// a private registry (never the prometheus default registry).
	MeterProvider metric.MeterProvider
	// Metrics serves that registry in the Prometheus text format; the
	// admin listener mounts it at /metrics.
	Metrics http.Handler

	tp       *sdktrace.TracerProvider
	mp       *sdkmetric.MeterProvider
	shutdown sync.Once
	err      error
}

// maxAttributeLength bounds a span attribute's value unless
// OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT says otherwise.
const maxAttributeLength = 4096

// New builds the tracer and meter providers.
//
// Precedence for every setting is config, then the standard OTEL_*
// variable, then labelpipe's default:
//   - exporter: tracing.exporter, OTEL_TRACES_EXPORTER (otlp, console, none), none;
//   - protocol: tracing.protocol, OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
//     OTEL_EXPORTER_OTLP_PROTOCOL, grpc;
//   - endpoint: tracing.endpoint, then the exporter's own handling of
//     OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT; headers, timeout, compression and
//     certificates come from OTEL_EXPORTER_OTLP_* as with any OTel SDK;
//   - sampler: tracing.sample_ratio as ParentBased(TraceIDRatioBased), then
//     OTEL_TRACES_SAMPLER(_ARG), then ParentBased(AlwaysOn);
//   - service.name: tracing.service_name, OTEL_SERVICE_NAME or
//     OTEL_RESOURCE_ATTRIBUTES, "labelpipe".
//
// Without TLS settings, OTLP goes in plain text when the endpoint is on the
// loopback interface (the SDK default localhost:4317/4318 included).
func New(ctx context.Context, cfg pipeline.TracingConfig, info Info) (*Providers, error) {
	res, err := newResource(ctx, cfg, info)
	if err != nil {
		return nil, err
	}
	exp, err := newSpanExporter(ctx, cfg)
	if err != nil {
		return nil, err
	}
	tpOpts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	// Span attributes carry what callers and vendors sent (error texts,
	// user agents, vendor answers): unbounded, one hostile value would be
	// held in every batch. OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT overrides.
	limits := sdktrace.NewSpanLimits()
	if limits.AttributeValueLengthLimit < 0 {
		limits.AttributeValueLengthLimit = maxAttributeLength
	}
	tpOpts = append(tpOpts, sdktrace.WithRawSpanLimits(limits))
	switch {
	case exp == nil:
		// Not sampled, so nothing is recorded; the SDK still mints IDs.
		tpOpts = append(tpOpts, sdktrace.WithSampler(sdktrace.NeverSample()))
	case cfg.SampleRatio != nil || os.Getenv("OTEL_TRACES_SAMPLER") == "":
		// Without WithSampler the SDK applies OTEL_TRACES_SAMPLER itself.
		ratio := 1.0
		if cfg.SampleRatio != nil {
			ratio = *cfg.SampleRatio
		}
		tpOpts = append(tpOpts, sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))))
	}
	if exp != nil {
		tpOpts = append(tpOpts, sdktrace.WithBatcher(exp))
	}
	tp := sdktrace.NewTracerProvider(tpOpts...)

	mp, metrics, err := newMetrics(res)
	if err != nil {
		return nil, errors.Join(err, tp.Shutdown(ctx))
	}
	return &Providers{TracerProvider: tp, MeterProvider: mp, Metrics: metrics, tp: tp, mp: mp}, nil
}

// Shutdown flushes pending spans and stops both providers. Later calls
// return the first call's result.
func (t *Providers) Shutdown(ctx context.Context) error {
	t.shutdown.Do(func() {
		t.err = errors.Join(t.tp.Shutdown(ctx), t.mp.Shutdown(ctx))
		if t.err != nil {
			t.err = fmt.Errorf("shut down telemetry: %w", t.err)
		}
	})
	return t.err
}

// newResource describes this process. Later detectors win, which gives the
// documented precedence for service.name.
func newResource(ctx context.Context, cfg pipeline.TracingConfig, info Info) (*resource.Resource, error) {
	base := []attribute.KeyValue{attribute.String("service.name", defaultServiceName)}
	if info.Version != "" {
		base = append(base, attribute.String("service.version", info.Version))
	}
	if info.ReplicaID != "" {
		base = append(base, attribute.String("service.instance.id", info.ReplicaID))
	}
	opts := []resource.Option{
		resource.WithAttributes(base...),
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithProcessPID(),
		resource.WithFromEnv(),
	}
	if cfg.ServiceName != "" {
		opts = append(opts, resource.WithAttributes(attribute.String("service.name", cfg.ServiceName)))
	}
	res, err := resource.New(ctx, opts...)
	// A detector that found nothing (no hostname, say) is no reason to run
	// without telemetry; the partial resource is still right.
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("tracing resource: %w", err)
	}
	return res, nil
}

// newSpanExporter returns nil for exporter none.
func newSpanExporter(ctx context.Context, cfg pipeline.TracingConfig) (sdktrace.SpanExporter, error) {
	exporter := cfg.Exporter
	if exporter == "" {
		exporter = os.Getenv("OTEL_TRACES_EXPORTER")
	}
	switch exporter {
	case "", "none":
		return nil, nil
	case "stdout", "console":
		exp, err := stdouttrace.New(stdouttrace.WithPrettyPrint())
		if err != nil {
			return nil, fmt.Errorf("tracing stdout exporter: %w", err)
		}
		return exp, nil
	case "otlp":
		return newOTLPExporter(ctx, cfg)
	default:
		return nil, fmt.Errorf("tracing: unknown exporter %q (want none, otlp or stdout)", exporter)
	}
}

func newOTLPExporter(ctx context.Context, cfg pipeline.TracingConfig) (sdktrace.SpanExporter, error) {
	protocol := firstNonEmpty(cfg.Protocol, os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"), os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL"), "grpc")
	endpoint := strings.TrimSpace(cfg.Endpoint)
	plain := plaintext(cfg, endpoint)
	switch protocol {
	case "grpc":
		var opts []otlptracegrpc.Option
		switch {
		case strings.Contains(endpoint, "://"):
			opts = append(opts, otlptracegrpc.WithEndpointURL(endpoint))
		case endpoint != "":
			opts = append(opts, otlptracegrpc.WithEndpoint(endpoint))
		}
		if plain != nil {
			if *plain {
				opts = append(opts, otlptracegrpc.WithInsecure())
			} else {
				opts = append(opts, otlptracegrpc.WithTLSCredentials(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})))
			}
		}
		exp, err := otlptracegrpc.New(ctx, opts...)
		if err != nil {
			return nil, fmt.Errorf("tracing otlp grpc exporter: %w", err)
		}
		return exp, nil
	case "http", "http/protobuf":
		var opts []otlptracehttp.Option
		switch {
		case strings.Contains(endpoint, "://"):
			u, err := url.Parse(endpoint)
			if err != nil {
				return nil, fmt.Errorf("tracing.endpoint: %w", redact.Error(err)) // it may hold credentials
			}
			// A bare base URL means the collector's standard traces path,
			// as OTEL_EXPORTER_OTLP_ENDPOINT does; the SDK would post to /.
			if u.Path == "" || u.Path == "/" {
				u.Path = "/v1/traces"
			}
			opts = append(opts, otlptracehttp.WithEndpointURL(u.String()))
		case endpoint != "":
			opts = append(opts, otlptracehttp.WithEndpoint(endpoint))
		}
		if plain != nil {
			if *plain {
				opts = append(opts, otlptracehttp.WithInsecure())
			} else {
				opts = append(opts, otlptracehttp.WithTLSClientConfig(&tls.Config{MinVersion: tls.VersionTLS12}))
			}
		}
		exp, err := otlptracehttp.New(ctx, opts...)
		if err != nil {
			return nil, fmt.Errorf("tracing otlp http exporter: %w", err)
		}
		return exp, nil
	default:
		return nil, fmt.Errorf("tracing: unsupported otlp protocol %q (want grpc or http/protobuf)", protocol)
	}
}

// plaintext decides TLS for OTLP: tracing.insecure when set; otherwise nil
// (leave it to the SDK: URL scheme, OTEL_EXPORTER_OTLP_*INSECURE) unless the
// endpoint is a scheme-less loopback address, which gets plain text because
// a local collector or Jaeger almost never has a certificate.
func plaintext(cfg pipeline.TracingConfig, endpoint string) *bool {
	if cfg.Insecure != nil {
		return cfg.Insecure
	}
	if endpoint == "" {
		if os.Getenv("OTEL_EXPORTER_OTLP_TRACES_INSECURE") != "" || os.Getenv("OTEL_EXPORTER_OTLP_INSECURE") != "" {
			return nil
		}
		endpoint = firstNonEmpty(os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT"), "localhost")
	}
	if strings.Contains(endpoint, "://") {
		return nil
	}
	host := endpoint
	if h, _, err := net.SplitHostPort(endpoint); err == nil {
		host = h
	}
	if !isLoopback(host) {
		return nil
	}
	yes := true
	return &yes
}

func isLoopback(host string) bool {
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// newMetrics builds the meter provider on a private registry, together with
// the Go runtime and process collectors, which cost nothing until scraped.
func newMetrics(res *resource.Resource) (*sdkmetric.MeterProvider, http.Handler, error) {
	reg := prometheus.NewRegistry()
	if err := reg.Register(collectors.NewGoCollector()); err != nil {
		return nil, nil, fmt.Errorf("metrics: %w", err)
	}
	if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, nil, fmt.Errorf("metrics: %w", err)
	}
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, nil, fmt.Errorf("metrics prometheus exporter: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp), sdkmetric.WithResource(res))
	return mp, promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}), nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v = strings.TrimSpace(v); v != "" {
			return v
		}
	}
	return ""
}
