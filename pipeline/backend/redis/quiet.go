package redis

import (
	"context"

	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/embedded"
)

// The daemon's own housekeeping commands (start-up checks, heartbeats,
// readiness pings, stream trims, claims) belong to no export. Traced, each
// was a one-command trace of its own, and Jaeger's list of labelpipe
// traces filled with them, burying the exports. A command in a context
// marked by quiet that carries no span is not traced; one made for an
// export (its context carries the export's span) always is.

type quietKey struct{}

// quiet marks ctx as housekeeping.
func quiet(ctx context.Context) context.Context {
	return context.WithValue(ctx, quietKey{}, true)
}

// quietTracerProvider hands out tracers that start no span for a quiet
// context without a span.
type quietTracerProvider struct {
	embedded.TracerProvider
	tp trace.TracerProvider
}

func (q quietTracerProvider) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	return quietTracer{t: q.tp.Tracer(name, opts...)}
}

type quietTracer struct {
	embedded.Tracer
	t trace.Tracer
}

func (q quietTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	if ctx.Value(quietKey{}) != nil && !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx, trace.SpanFromContext(ctx) // a no-op span
	}
	return q.t.Start(ctx, name, opts...)
}
