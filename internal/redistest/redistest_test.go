package redistest_test

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/labelpipe/labelpipe/internal/redistest"
)

func TestServerAnswersOnSocketAndURL(t *testing.T) {
	srv := redistest.Start(t)
	ctx := t.Context()

	if !strings.HasSuffix(srv.Addr(), ".sock") {
		t.Fatalf("Addr() = %q, want a unix socket path", srv.Addr())
	}
	c := srv.Client(t)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}

	opt, err := redis.ParseURL(srv.URL())
	if err != nil {
		t.Fatalf("ParseURL(%q): %v", srv.URL(), err)
	}
	if opt.Network != "unix" || opt.Addr != srv.Addr() {
		t.Fatalf("ParseURL(%q) = %s %s, want unix %s", srv.URL(), opt.Network, opt.Addr, srv.Addr())
	}
	c2 := redis.NewClient(opt)
	defer c2.Close()
	if got, err := c2.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET via URL = %q, %v; want v", got, err)
	}
}

func TestRestart(t *testing.T) {
	tests := []struct {
		name     string
		opts     []redistest.Option
		stop     func(*redistest.Server)
		survives bool
	}{
		{"no persistence, stop", nil, (*redistest.Server).Stop, false},
		{"aof, stop", []redistest.Option{redistest.WithAOF()}, (*redistest.Server).Stop, true},
		{"aof, kill -9", []redistest.Option{redistest.WithAOF()}, (*redistest.Server).Kill, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := redistest.Start(t, tt.opts...)
			c := srv.Client(t)
			ctx := t.Context()
			if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
				t.Fatalf("SET: %v", err)
			}

			tt.stop(srv)
			if err := c.Ping(ctx).Err(); err == nil {
				t.Fatal("PING answered after the server was stopped")
			}

			srv.Restart()
			got, err := c.Get(ctx, "k").Result()
			switch {
			case tt.survives && (err != nil || got != "v"):
				t.Fatalf("after restart GET = %q, %v; want v", got, err)
			case !tt.survives && err != redis.Nil:
				t.Fatalf("after restart GET = %q, %v; want redis.Nil (no persistence)", got, err)
			}
		})
	}
}

func TestStopIsIdempotent(t *testing.T) {
	srv := redistest.Start(t)
	srv.Stop()
	srv.Stop()
	srv.Kill()
	if err := srv.Client(t).Ping(t.Context()).Err(); err == nil {
		t.Fatal("PING answered after Stop")
	}
}

// fatalTB records Fatal instead of failing the real test.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Fatal(args ...any) { f.msg = fmt.Sprint(args...); runtime.Goexit() }
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestMissingRedisServerFails(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	tb := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		redistest.Start(tb)
	}()
	<-done
	want := "redis-server not found: install the Debian package redis-server"
	if !strings.Contains(tb.msg, want) {
		t.Fatalf("Fatal message = %q, want it to contain %q", tb.msg, want)
	}
}
