package pipeline

import (
	"context"
	"log/slog"

	"github.com/ThreeDotsLabs/watermill"

	"go.opentelemetry.io/otel/trace"
)

// traceLogHandler adds trace_id and span_id to every record logged with a
// context that carries a span, so a log line leads to its trace.
type traceLogHandler struct{ slog.Handler }

func (h traceLogHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

func (h traceLogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return traceLogHandler{h.Handler.WithAttrs(as)}
}

func (h traceLogHandler) WithGroup(name string) slog.Handler {
	return traceLogHandler{h.Handler.WithGroup(name)}
}

// watermillLogger bridges watermill's logs to slog. It checks the level
// before watermill turns its fields into attributes: the router logs at
// trace level for every message, and that conversion alone would be a
// measurable share of the daemon's allocations.
type watermillLogger struct {
	log *slog.Logger
	wm  watermill.LoggerAdapter
}

func newWatermillLogger(l *slog.Logger) watermill.LoggerAdapter {
	return watermillLogger{log: l, wm: watermill.NewSlogLoggerWithLevelMapping(l,
		map[slog.Level]slog.Level{slog.LevelInfo: slog.LevelDebug})}
}

func (w watermillLogger) Error(msg string, err error, fields watermill.LogFields) {
	w.wm.Error(msg, err, fields)
}

func (w watermillLogger) Info(msg string, fields watermill.LogFields) {
	if w.log.Enabled(context.Background(), slog.LevelDebug) {
		w.wm.Info(msg, fields)
	}
}

func (w watermillLogger) Debug(msg string, fields watermill.LogFields) {
	if w.log.Enabled(context.Background(), slog.LevelDebug) {
		w.wm.Debug(msg, fields)
	}
}

func (w watermillLogger) Trace(msg string, fields watermill.LogFields) {
	if w.log.Enabled(context.Background(), watermill.LevelTrace) {
		w.wm.Trace(msg, fields)
	}
}

func (w watermillLogger) With(fields watermill.LogFields) watermill.LoggerAdapter {
	return watermillLogger{log: w.log, wm: w.wm.With(fields)}
}
