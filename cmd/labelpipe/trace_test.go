package main

import (
	"context"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/labelpipe/labelpipe/internal/jaegertest"
)

// `labelpipe trace`: help and usage errors like every command, and a
// trace read back from a real Jaeger, with colour only when asked for.
func TestTraceCommand(t *testing.T) {
	for _, args := range [][]string{{"trace", "-h"}, {"help", "trace"}} {
		cliCase{name: strings.Join(args, " "), args: args,
			wantStdout: []string{"\n  labelpipe trace ID [flags]\n", "Examples:\n  labelpipe trace", "--jaeger", "LABELPIPE_JAEGER_URL"}, emptyStderr: true}.check(t)
	}
	for _, tt := range []cliCase{
		{name: "no id", args: []string{"trace"}, wantStderr: []string{"trace takes one trace id or export id, got 0 arguments"}},
		{name: "two ids", args: []string{"trace", "a", "b"}, wantStderr: []string{"got 2 arguments"}},
		{name: "bad color", args: []string{"trace", "--color", "pink", "x"}, wantStderr: []string{`--color "pink": want auto, always or never`}},
		{name: "negative wait", args: []string{"trace", "--wait", "-1s", "x"}, wantStderr: []string{"--wait -1s: must be ≥ 0"}},
	} {
		tt.wantCode, tt.emptyStdout = 2, true
		t.Run(tt.name, tt.check)
	}

	j := jaegertest.Start(t)
	// One delivery with a failed and a good attempt, as labelpipe traces it.
	exp, err := otlptracehttp.New(t.Context(), otlptracehttp.WithEndpointURL(j.OTLPHTTP()+"/v1/traces"))
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", "labelpipe"))))
	tr := tp.Tracer("test")
	ctx, root := tr.Start(context.Background(), "POST /webhook", trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("labelpipe.export.id", "01JF3W7K8Q2Y5V9N6M4T1R0SBX")))
	dctx, deliver := tr.Start(ctx, "deliver scale")
	_, a1 := tr.Start(dctx, "attempt scale", trace.WithAttributes(attribute.Int("labelpipe.attempt", 1), attribute.Int("http.response.status_code", 503)))
	a1.SetStatus(codes.Error, "vendor answered 503")
	a1.End()
	_, a2 := tr.Start(dctx, "attempt scale", trace.WithAttributes(attribute.Int("labelpipe.attempt", 2)))
	a2.End()
	deliver.End()
	// A span whose parent never reaches Jaeger is flagged, not hidden.
	lctx, lost := tr.Start(ctx, "lost parent")
	_, orphan := tr.Start(lctx, "attempt studio", trace.WithAttributes(attribute.Int("labelpipe.attempt", 1)))
	orphan.End()
	_ = lost // never ended, never exported
	root.End()
	if err := tp.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	traceID := root.SpanContext().TraceID().String()
	if _, err := j.WaitTrace(t.Context(), traceID, func(tr jaegertest.Trace) bool { return len(tr.Spans) == 5 }); err != nil {
		t.Fatal(err)
	}

	cliCase{name: "plain", args: []string{"trace", "--jaeger", j.QueryURL(), traceID},
		wantStdout:  []string{"trace " + traceID + "  export 01JF3W7K8Q2Y5V9N6M4T1R0SBX", "POST /webhook [server]", "    attempt scale  #1", "ERROR 503", "error: vendor answered 503", "attempt scale  #2"},
		emptyStderr: true}.check(t)
	cliCase{name: "orphan", args: []string{"trace", "--jaeger", j.QueryURL(), traceID},
		wantStdout: []string{"1 span whose parent is not in Jaeger", "\nattempt studio (labelpipe) (parent " + lost.SpanContext().SpanID().String() + " missing)  #1"}}.check(t)
	code, stdout, _ := labelpipe(t, "trace", "--jaeger", j.QueryURL(), traceID)
	if code != 0 || strings.Contains(stdout, "\x1b[") {
		t.Errorf("not a terminal: exit %d, want no ANSI colour:\n%q", code, stdout)
	}
	t.Setenv(jaegerEnv, j.QueryURL())
	cliCase{name: "by export id, url from the environment, colour", args: []string{"trace", "--color", "always", "01JF3W7K8Q2Y5V9N6M4T1R0SBX"},
		wantStdout: []string{"trace " + traceID, "\x1b[31m    attempt scale  #1"}, emptyStderr: true}.check(t)
	cliCase{name: "unknown trace", args: []string{"trace", "--wait", "0", "0123456789abcdef0123456789abcdef"}, wantCode: 1,
		wantStderr: []string{"labelpipe trace: trace 0123456789abcdef0123456789abcdef: not found"}, emptyStdout: true}.check(t)
	cliCase{name: "no jaeger", args: []string{"trace", "--jaeger", "http://127.0.0.1:1", traceID}, wantCode: 1,
		wantStderr: []string{"connection refused", "go tool task jaeger"}, emptyStdout: true}.check(t)
}
