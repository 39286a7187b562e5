// Package redistest runs a real redis-server for tests: on a unix socket in
// the test's temporary directory, never on a TCP port, so parallel tests and
// packages cannot collide and nothing listens on the network.
package redistest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/labelpipe/labelpipe/internal/testutil"
)

// startTimeout bounds how long Start and Restart wait for PING to answer.
const startTimeout = 10 * time.Second

// stopTimeout bounds how long Stop waits after SIGTERM before SIGKILL.
const stopTimeout = 10 * time.Second

// maxSocketPath keeps the socket path under the kernel's sun_path limit
// (108 bytes on Linux, 104 on the BSDs) with some margin.
const maxSocketPath = 100

// Option changes how the server runs.
type Option func(*options)

type options struct {
	aof bool
}

// WithAOF turns on the append-only file with fsync on every write, so that
// data written before Stop or Kill survives Restart.
func WithAOF() Option { return func(o *options) { o.aof = true } }

// Server is one redis-server process owned by a test.
type Server struct {
	t    testing.TB
	dir  string
	sock string
	opts options

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// Start runs redis-server from PATH and waits until it answers PING. The
// server is stopped when the test ends. A missing redis-server fails the
// test: Redis behaviour is never skipped.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redis-server not found: install the Debian package redis-server (the Taskfile's test task does this)")
	}
	s := &Server{t: t, dir: t.TempDir()}
	for _, o := range opts {
		o(&s.opts)
	}
	s.sock = filepath.Join(s.dir, "redis.sock")
	if len(s.sock) > maxSocketPath {
		// A long TMPDIR or test name would overflow sun_path; fall back to a
		// short directory of our own.
		dir, err := os.MkdirTemp("", "rt")
		if err != nil {
			t.Fatalf("redistest: %v", err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(dir) })
		s.dir, s.sock = dir, filepath.Join(dir, "redis.sock")
	}
	t.Cleanup(s.Stop)
	s.start()
	return s
}

// Addr is the server's unix socket path.
func (s *Server) Addr() string { return s.sock }

// URL is a unix:// URL for redis.ParseURL and labelpipe's redis.url.
func (s *Server) URL() string { return "unix://" + s.sock }

// Client returns a client for the server, closed when t ends. It gives up
// within a few tens of milliseconds while the server is down (go-redis's
// defaults take seconds), so outage tests stay fast; it reconnects by
// itself after Restart.
func (s *Server) Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{
		Network: "unix", Addr: s.sock,
		MaxRetries: 2, MinRetryBackoff: 5 * time.Millisecond, MaxRetryBackoff: 20 * time.Millisecond,
		DialerRetries: 2, DialerRetryTimeout: 10 * time.Millisecond,
	})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Stop sends SIGTERM and waits for the server to exit (SIGKILL after 10s).
// It is safe to call on a stopped server.
func (s *Server) Stop() {
	s.signal(syscall.SIGTERM, stopTimeout)
}

// Kill sends SIGKILL and waits for the process to be gone: a crash, with no
// chance to flush anything beyond what fsync already wrote.
func (s *Server) Kill() {
	s.signal(syscall.SIGKILL, stopTimeout)
}

// Restart stops the server if it runs and starts it again with the same
// directory, socket and options. With WithAOF the data survives.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
}

func (s *Server) args() []string {
	args := []string{
		"--port", "0",
		"--unixsocket", s.sock,
		"--unixsocketperm", "700",
		"--dir", s.dir,
		"--logfile", filepath.Join(s.dir, "redis.log"),
		"--save", "",
		"--daemonize", "no",
	}
	if s.opts.aof {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
	return args
}

func (s *Server) start() {
	s.t.Helper()
	cmd := exec.Command("redis-server", s.args()...)
	setSysProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("redistest: start redis-server: %v", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()

	if err := s.waitReady(done); err != nil {
		s.Kill()
		s.t.Fatalf("redistest: %v\n%s", err, s.log())
	}
}

// waitReady polls PING until it answers, the process dies, or the deadline
// passes.
func (s *Server) waitReady(done <-chan struct{}) error {
	c := redis.NewClient(&redis.Options{
		Network: "unix", Addr: s.sock,
		MaxRetries: -1, DialTimeout: 200 * time.Millisecond,
		ReadTimeout: time.Second, WriteTimeout: time.Second,
	})
	defer func() { _ = c.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if last = c.Ping(ctx).Err(); last == nil {
			return nil
		}
		select {
		case <-done:
			return errors.New("redis-server exited during start")
		case <-ctx.Done():
			return fmt.Errorf("redis-server did not answer PING within %s: %w", startTimeout, last)
		case <-tick.C:
		}
	}
}

func (s *Server) signal(sig syscall.Signal, timeout time.Duration) {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	testutil.Stop(cmd.Process, done, sig, timeout)
}

// log returns the tail of the server's log file, for failure messages.
func (s *Server) log() string {
	b, err := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	if err != nil {
		return ""
	}
	return "redis-server log:\n" + testutil.Tail(string(b), 20)
}
