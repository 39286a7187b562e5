package redis

import (
	"context"
	"net"
	"slices"
	"strings"

	goredis "github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// spans traces what redisotel's tracing hook is told to skip: scripts
// and pipelines. Everything else is redisotel's.
//
//   - go-redis runs a script (Script.Run) as EVALSHA, and when the server
//     does not have it cached yet (after a start, a restart or SCRIPT
//     FLUSH) gets NOSCRIPT and sends it again with EVAL. redisotel records
//     that NOSCRIPT as an ERROR span, so every first export after Redis
//     started showed error spans for the dedupe, lease and trim scripts,
//     though nothing failed. Here NOSCRIPT is an event, not an error.
//   - redisotel renders every argument of every command of a pipeline to
//     a string for the span, even with WithDBStatement(false). A fan-out's
//     pipeline carries the export (its messages and its history body), so
//     that was a copy of each export per publish: about 10% of the
//     daemon's allocations on the Redis bench.
//
// Neither records a db.statement: arguments are export bodies, and a
// trace must not carry a copy of every export (nor a span megabytes
// long). The span's name says which commands ran.
type spans struct {
	tracer trace.Tracer
	attrs  []attribute.KeyValue
}

func newSpans(tp trace.TracerProvider, opt *goredis.Options) *spans {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	network := opt.Network
	if network == "" || network == "tcp" {
		network = "redis"
	}
	return &spans{
		tracer: tp.Tracer("github.com/labelpipe/labelpipe/pipeline/backend/redis"),
		attrs: []attribute.KeyValue{attribute.String("db.system", "redis"),
			attribute.String("db.connection_string", network+"://"+opt.Addr)},
	}
}

func isEvalSha(cmd goredis.Cmder) bool {
	name := strings.ToLower(cmd.Name())
	return name == "evalsha" || name == "evalsha_ro"
}

// anyPipeline is redisotel's pipeline filter: it skips them all.
func anyPipeline([]goredis.Cmder) bool { return true }

func (h *spans) DialHook(next goredis.DialHook) goredis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) { return next(ctx, network, addr) }
}

func (h *spans) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		if !isEvalSha(cmd) {
			return next(ctx, cmd)
		}
		ctx, span := h.tracer.Start(ctx, cmd.FullName(), trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(h.attrs...))
		defer span.End()
		err := next(ctx, cmd)
		switch {
		case err == nil, err == goredis.Nil:
		case goredis.HasErrorPrefix(err, "NOSCRIPT"):
			span.AddEvent("script not cached on the server; go-redis sends it with EVAL")
		default:
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		return err
	}
}

func (h *spans) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		ctx, span := h.tracer.Start(ctx, "redis.pipeline "+pipelineSummary(cmds), trace.WithSpanKind(trace.SpanKindClient),
			trace.WithAttributes(h.attrs...), trace.WithAttributes(attribute.Int("db.redis.num_cmd", len(cmds))))
		defer span.End()
		err := next(ctx, cmds)
		if err != nil && err != goredis.Nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		return err
	}
}

// pipelineSummary names a pipeline's distinct commands in order, at most
// ten, as redisotel's span name does ("hset pexpireat set zadd xadd").
func pipelineSummary(cmds []goredis.Cmder) string {
	const limit = 10
	names := make([]string, 0, min(len(cmds), limit))
	for _, cmd := range cmds {
		name := cmd.FullName()
		if !slices.Contains(names, name) {
			names = append(names, name)
			if len(names) == limit {
				break
			}
		}
	}
	return strings.Join(names, " ")
}
