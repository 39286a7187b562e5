package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"github.com/redis/go-redis/extra/redisotel/v9"
	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/redact"
)

// startPingTimeout bounds the one PING NewClient makes to say in the
// log whether Redis is there at start.
const startPingTimeout = time.Second

// NewClient builds the Redis client every Redis-backed part shares
// (broker, dedupe, ledger, breaker store, DLQ) from cfg.URL:
// redis://[user:password@]host:port/db, rediss:// for TLS, or
// unix://[user:password@]/path?db=N. go-redis URL query options such as
// dial_timeout or pool_size are honoured.
//
// Commands are traced and measured with the given providers (nil means the
// global ones). The client connects lazily and reconnects by itself, so a
// Redis that is down at start is not an error: the daemon starts, reports
// not ready, and recovers when Redis comes back. The one PING made here is
// only logged; logger may be nil.
func NewClient(ctx context.Context, cfg pipeline.RedisConfig, tp trace.TracerProvider, mp metric.MeterProvider, logger *slog.Logger) (goredis.UniversalClient, error) {
	bridgeLogs(logger)
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if cfg.URL == "" {
		return nil, errors.New("redis.url: is empty")
	}
	opt, err := goredis.ParseURL(cfg.URL)
	if err != nil {
		// url.Parse errors quote the whole URL, password included.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, fmt.Errorf("redis.url %s: %w", redact.String(cfg.URL), err)
	}
	// Debian's Redis 7.0 answers CLIENT SETINFO with an error, which
	// became an ERROR span on every new connection of every trace; the
	// library name and version it would set are not worth that.
	opt.DisableIdentity = true
	// Likewise CLIENT MAINT_NOTIFICATIONS, which go-redis tries on every
	// connection unless told not to (a Redis Enterprise feature; older
	// servers answer it with an error span). A URL that sets it wins.
	if opt.MaintNotificationsConfig == nil {
		opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	}
	client := goredis.NewClient(opt)
	// EVALSHA and pipelines are traced by spans instead (see there);
	// housekeeping is not traced (quiet). No span records its command's
	// arguments (db.statement) nor the go-redis caller, which a stack
	// walk per command would find.
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	tp = quietTracerProvider{tp: tp}
	topts := []redisotel.TracingOption{redisotel.WithCommandFilter(isEvalSha), redisotel.WithCommandsFilter(anyPipeline),
		redisotel.WithDBStatement(false), redisotel.WithCallerEnabled(false), redisotel.WithTracerProvider(tp)}
	if err := redisotel.InstrumentTracing(client, topts...); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("redis tracing: %w", err)
	}
	client.AddHook(newSpans(tp, opt))
	var mopts []redisotel.MetricsOption
	if mp != nil {
		mopts = append(mopts, redisotel.WithMeterProvider(mp))
	}
	if err := redisotel.InstrumentMetrics(client, mopts...); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("redis metrics: %w", err)
	}

	pctx, cancel := context.WithTimeout(quiet(ctx), startPingTimeout)
	defer cancel()
	if err := client.Ping(pctx).Err(); err != nil {
		logger.Warn("redis is not reachable yet; not ready until it is", "redis", redact.String(cfg.URL), "err", err)
	} else {
		logger.Info("redis connected", "redis", redact.String(cfg.URL))
	}
	return client, nil
}
