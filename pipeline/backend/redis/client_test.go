package redis_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/pipeline"
	redisb "github.com/labelpipe/labelpipe/pipeline/backend/redis"
)

func TestNewClientURLs(t *testing.T) {
	for _, tc := range []struct {
		name    string
		url     string
		check   func(t *testing.T, o *goredis.Options)
		wantErr string
	}{
		{name: "tcp with user, password and db", url: "redis://alice:s3cret@127.0.0.1:1/3", check: func(t *testing.T, o *goredis.Options) {
			if o.Addr != "127.0.0.1:1" || o.Username != "alice" || o.Password != "s3cret" || o.DB != 3 || o.TLSConfig != nil {
				t.Fatalf("options %+v", o)
			}
		}},
		{name: "tls", url: "rediss://:pw@127.0.0.1:1", check: func(t *testing.T, o *goredis.Options) {
			if o.TLSConfig == nil || o.TLSConfig.ServerName != "127.0.0.1" || o.Password != "pw" {
				t.Fatalf("rediss without tls: %+v", o.TLSConfig)
			}
		}},
		{name: "unix with db", url: "unix:///tmp/none.sock?db=2", check: func(t *testing.T, o *goredis.Options) {
			if o.Network != "unix" || o.Addr != "/tmp/none.sock" || o.DB != 2 {
				t.Fatalf("options %+v", o)
			}
		}},
		{name: "empty", url: "", wantErr: "empty"},
		{name: "bad scheme", url: "http://x:6379", wantErr: "invalid URL scheme"},
		{name: "password stays secret", url: "redis://u:hunter2@host:port:bad", wantErr: "redis.url"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Nothing listens at these addresses; keep the start PING short.
			ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
			defer cancel()
			c, err := redisb.NewClient(ctx, pipeline.RedisConfig{URL: tc.url}, nil, nil, nil)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				t.Logf("error: %v", err)
				if strings.Contains(err.Error(), "hunter2") {
					t.Fatalf("password in error: %v", err)
				}
				return
			}
			// Nothing listens there: the client is built anyway.
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = c.Close() }()
			tc.check(t, c.(*goredis.Client).Options())
		})
	}
}

func TestNewClientStartsWithoutRedisAndRecovers(t *testing.T) {
	srv := redistest.Start(t)
	srv.Stop()
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	c, err := redisb.NewClient(t.Context(), pipeline.RedisConfig{URL: srv.URL()}, nil, nil, logger)
	if err != nil {
		t.Fatalf("redis down at start must not fail: %v", err)
	}
	defer func() { _ = c.Close() }()
	if !strings.Contains(logs.String(), "not reachable") {
		t.Fatalf("no warning logged: %s", logs.String())
	}
	srv.Restart()
	if err := c.Ping(t.Context()).Err(); err != nil {
		t.Fatalf("same client after redis came back: %v", err)
	}
}

func TestNewClientAuthAndTelemetry(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	if err := admin.Do(t.Context(), "ACL", "SETUSER", "alice", "on", ">s3cret", "~*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))

	for _, tc := range []struct {
		name string
		url  string
		ok   bool
	}{
		{"right password", "unix://alice:s3cret@" + srv.Addr(), true},
		{"wrong password", "unix://alice:wrong@" + srv.Addr(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := redisb.NewClient(t.Context(), pipeline.RedisConfig{URL: tc.url}, tp, mp, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = c.Close() }()
			err = c.Set(t.Context(), "k", "v", 0).Err()
			if tc.ok != (err == nil) {
				t.Fatalf("set: %v", err)
			}
		})
	}
	found := false
	for _, s := range spans.Ended() {
		if strings.EqualFold(s.Name(), "set") {
			found = true
		}
	}
	if !found {
		t.Fatal("no span for SET")
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(t.Context(), &rm); err != nil {
		t.Fatal(err)
	}
	if len(rm.ScopeMetrics) == 0 {
		t.Fatal("no redis metrics recorded")
	}
}
