package redis

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"

	goredis "github.com/redis/go-redis/v9"
)

// go-redis logs through one process-wide logger, which by default writes
// raw lines to stderr: with Redis down, a CLI command printed several of
// them before its own clear error, and the daemon a WARN line for every
// failed dial. NewClient replaces it with a bridge to slog at DEBUG: what
// go-redis says (mostly dial and pool trouble) is what the caller's own
// error, the readiness check and the one "redis is not reachable" warning
// already say once. A recovered panic inside go-redis is still an ERROR.
//
// The bridge writes to the logger of the latest NewClient that was given
// one; before that, nowhere.

var bridged atomic.Pointer[slog.Logger]

func init() {
	goredis.SetLogger(logBridge{})
}

// bridgeLogs sends go-redis's own log lines to logger from now on (nil
// leaves the current logger in place) and makes sure the bridge is the
// library's logger, in case something replaced it.
func bridgeLogs(logger *slog.Logger) {
	if logger != nil {
		bridged.Store(logger.With("component", "go-redis"))
	}
	goredis.SetLogger(logBridge{})
}

type logBridge struct{}

func (logBridge) Printf(ctx context.Context, format string, v ...any) {
	l := bridged.Load()
	if l == nil {
		return
	}
	msg := strings.TrimSpace(strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: "))
	level := slog.LevelDebug
	if strings.Contains(msg, "panic") {
		level = slog.LevelError
	}
	if ctx == nil {
		ctx = context.Background()
	}
	l.Log(ctx, level, msg)
}
