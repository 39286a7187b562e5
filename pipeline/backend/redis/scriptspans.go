package redis

import (
	"context"
	"net"
	"strings"

	"github.com/redis/go-redis/extra/rediscmd/v9"
	goredis "github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// go-redis runs a script (Script.Run) as EVALSHA, and when the server
// does not have it cached yet (after a start, a restart or SCRIPT FLUSH)
// gets NOSCRIPT and sends it again with EVAL. redisotel records that
// NOSCRIPT as an ERROR span, so every first export after Redis started
// showed error spans for the dedupe, lease and trim scripts, though
// nothing failed. scriptSpans traces EVALSHA as redisotel would, with the
// NOSCRIPT answer as an event instead of an error; redisotel skips it
// (isEvalSha).
type scriptSpans struct {
	tracer trace.Tracer
	attrs  []attribute.KeyValue
}

func newScriptSpans(tp trace.TracerProvider, opt *goredis.Options) *scriptSpans {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	network := opt.Network
	if network == "" || network == "tcp" {
		network = "redis"
	}
	return &scriptSpans{
		tracer: tp.Tracer("github.com/labelpipe/labelpipe/pipeline/backend/redis"),
		attrs: []attribute.KeyValue{attribute.String("db.system", "redis"),
			attribute.String("db.connection_string", network+"://"+opt.Addr)},
	}
}

func isEvalSha(cmd goredis.Cmder) bool {
	name := strings.ToLower(cmd.Name())
	return name == "evalsha" || name == "evalsha_ro"
}

func (h *scriptSpans) DialHook(next goredis.DialHook) goredis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) { return next(ctx, network, addr) }
}

func (h *scriptSpans) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		if !isEvalSha(cmd) {
			return next(ctx, cmd)
		}
		ctx, span := h.tracer.Start(ctx, cmd.FullName(), trace.WithSpanKind(trace.SpanKindClient),
			trace.WithAttributes(h.attrs...), trace.WithAttributes(attribute.String("db.statement", rediscmd.CmdString(cmd))))
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

func (h *scriptSpans) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return next
}
