package redis_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	goredis "github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/pipeline"
	redisb "github.com/labelpipe/labelpipe/pipeline/backend/redis"
)

// TestNoSetinfoErrorSpans: go-redis sends CLIENT SETINFO on every new
// connection, which Debian's Redis 7.0 (what deps:redis installs) answers
// with "ERR unknown subcommand 'setinfo'"; every Redis-mode trace showed
// it as an ERROR span (issue 12, observation 10). NewClient skips the
// identity call (and the maintenance-notifications one, which
// fails the same way), and a script's first EVALSHA (NOSCRIPT, then EVAL)
// is no error either, so a fresh client's first commands leave no error span.
func TestNoSetinfoErrorSpans(t *testing.T) {
	srv := redistest.Start(t)
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	c, err := redisb.NewClient(t.Context(), pipeline.RedisConfig{URL: srv.URL() + "?pool_size=4"}, tp, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	// Several connections, each with its own handshake.
	conns := make([]interface{ Close() error }, 0, 3)
	for i := range 3 {
		conn := c.(*goredis.Client).Conn()
		if err := conn.Set(t.Context(), fmt.Sprintf("k%d", i), "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
	}
	for _, conn := range conns {
		_ = conn.Close()
	}
	// A script the fresh server has not cached: EVALSHA answers NOSCRIPT
	// and go-redis sends EVAL; that is no error either.
	script := goredis.NewScript(`return redis.call("GET", KEYS[1])`)
	if err := script.Run(t.Context(), c, []string{"k0"}).Err(); err != nil {
		t.Fatal(err)
	}
	// A script that does fail still says so, the cached one too.
	bad := goredis.NewScript(`return redis.error_reply("boom")`)
	for range 2 {
		if err := bad.Run(t.Context(), c, nil).Err(); err == nil {
			t.Fatal("the failing script did not fail")
		}
	}
	ended := spans.Ended()
	noscript, failed := false, false
	for _, s := range ended {
		if s.Name() != "evalsha" {
			continue
		}
		for _, e := range s.Events() {
			if strings.Contains(e.Name, "not cached") {
				noscript = true
			}
		}
		if s.Status().Code == codes.Error && strings.Contains(s.Status().Description, "boom") {
			failed = true
		}
	}
	if !noscript {
		t.Error("no evalsha span notes the NOSCRIPT answer")
	}
	if !failed {
		t.Error("the failing script's evalsha span has no error status")
	}
	if len(ended) < 3 {
		t.Fatalf("%d spans, want at least the 3 SETs", len(ended))
	}
	for _, s := range ended {
		if s.Status().Code == codes.Error && !strings.Contains(s.Status().Description, "boom") {
			t.Errorf("span %q has error status %q (attributes %v)", s.Name(), s.Status().Description, s.Attributes())
		}
		if strings.Contains(strings.ToLower(s.Name()), "setinfo") {
			t.Errorf("span %q is a SETINFO", s.Name())
		}
	}
}

// TestSpansCarryNoArguments: every Redis span recorded its command's
// arguments as db.statement, and a fan-out's pipeline carries the export
// itself (its messages and its history body). So each trace held a copy
// of every export, a span as long as the export, and the string was built
// on every publish even when nothing sampled it. Spans now say which
// commands ran, and nothing of what they carried; a failing pipeline is
// still an error span, and a pipeline that only missed a key is not.
func TestSpansCarryNoArguments(t *testing.T) {
	srv := redistest.Start(t)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	c, err := redisb.NewClient(t.Context(), pipeline.RedisConfig{URL: srv.URL()}, tp, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	const secret = "export-body-with-https://images.example/secret.jpg"
	ctx := t.Context()
	if err := c.Set(ctx, "one", secret, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Pipelined(ctx, func(p goredis.Pipeliner) error {
		p.Set(ctx, "two", secret, 0)
		p.XAdd(ctx, &goredis.XAddArgs{Stream: "s", Values: map[string]any{"payload": secret}})
		p.Set(ctx, "three", secret, 0)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := goredis.NewScript(`return ARGV[1]`).Run(ctx, c, nil, secret).Err(); err != nil {
		t.Fatal(err)
	}
	// A pipeline that fails: SET's value read as a stream.
	if _, err := c.Pipelined(ctx, func(p goredis.Pipeliner) error {
		p.XLen(ctx, "one")
		return nil
	}); err == nil {
		t.Fatal("XLEN of a string did not fail")
	}
	// A pipeline whose only answer is nil (a missing key) did not fail.
	if _, err := c.Pipelined(ctx, func(p goredis.Pipeliner) error {
		p.Get(ctx, "missing")
		return nil
	}); err != goredis.Nil {
		t.Fatalf("GET of a missing key in a pipeline: %v, want redis.Nil", err)
	}

	status := map[string]codes.Code{}
	for _, s := range rec.Ended() {
		status[s.Name()] = s.Status().Code
		for _, a := range s.Attributes() {
			if strings.Contains(a.Value.Emit(), "secret.jpg") {
				t.Errorf("span %q carries an argument in %s", s.Name(), a.Key)
			}
		}
	}
	for name, want := range map[string]codes.Code{
		"set":                     codes.Unset,
		"redis.pipeline set xadd": codes.Unset,
		"evalsha":                 codes.Unset,
		"redis.pipeline xlen":     codes.Error,
		"redis.pipeline get":      codes.Unset,
	} {
		got, ok := status[name]
		if !ok {
			t.Errorf("no span %q; spans: %v", name, status)
			continue
		}
		if got != want {
			t.Errorf("span %q status %v, want %v", name, got, want)
		}
	}
}

const childEnv = "LABELPIPE_TEST_REDIS_LOG_CHILD"

// TestGoRedisLogsNoRawLines: with Redis down, `labelpipe dlq list` printed
// 7 raw go-redis lines before its own clear error, and the daemon logged a
// WARN "failed to dial" line for every retry (issue 12, observation 9).
// go-redis's process-wide logger writes to the stderr it saw at start, so
// this runs a child process and reads its real stderr: no raw go-redis
// line, with or without a logger; with one, the same messages at DEBUG.
func TestGoRedisLogsNoRawLines(t *testing.T) {
	if mode := os.Getenv(childEnv); mode != "" {
		redisDownChild(t, mode)
		return
	}
	for _, mode := range []string{"no-logger", "logger"} {
		t.Run(mode, func(t *testing.T) {
			cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestGoRedisLogsNoRawLines$", "-test.count=1")
			cmd.Env = append(os.Environ(), childEnv+"="+mode)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("child: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
			}
			if !strings.Contains(stdout.String(), "commands failed: 1") {
				t.Fatalf("the child did not run against a Redis that is down:\n%s", stdout.String())
			}
			if s := stderr.String(); strings.Contains(s, "redis:") || strings.Contains(s, "connection pool") {
				t.Errorf("raw go-redis lines on stderr:\n%s", s)
			}
			if mode == "logger" {
				var dial []string
				for _, l := range strings.Split(stdout.String(), "\n") {
					if strings.Contains(l, "failed to dial") {
						dial = append(dial, l)
					}
				}
				if len(dial) == 0 {
					t.Fatalf("go-redis's dial failures not bridged to slog:\n%s", stdout.String())
				}
				for _, l := range dial {
					if !strings.Contains(l, "level=DEBUG") || !strings.Contains(l, "component=go-redis") {
						t.Errorf("bridged line not at DEBUG with its component: %s", l)
					}
				}
			}
		})
	}
}

// redisDownChild makes a client for a Redis that is not there and runs a
// few commands, as `dlq list` does, logging to stdout.
func redisDownChild(t *testing.T, mode string) {
	var logger *slog.Logger
	if mode == "logger" {
		logger = slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	url := "unix://" + filepath.Join(t.TempDir(), "nobody.sock")
	c, err := redisb.NewClient(t.Context(), pipeline.RedisConfig{URL: url}, nil, nil, logger)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	failed := 0
	if err := c.Get(context.Background(), "k").Err(); err != nil {
		failed++
	}
	fmt.Printf("commands failed: %d\n", failed)
}
