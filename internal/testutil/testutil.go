// Package testutil holds the small helpers several test suites share.
package testutil

import (
	"bytes"
	"os"
	"strings"
	"sync"
	"time"
)

// LockedBuffer is an io.Writer that a pipeline or a child process writes
// its log to while the test reads it; tests print it when they fail.
type LockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *LockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Signal sends sig to a child process unless it has already exited
// (done is closed), then waits up to wait for it to exit. It reports
// whether the process has exited.
func Signal(p *os.Process, done <-chan struct{}, sig os.Signal, wait time.Duration) bool {
	select {
	case <-done:
		return true
	default:
	}
	_ = p.Signal(sig)
	select {
	case <-done:
		return true
	case <-time.After(wait):
		return false
	}
}

// Stop is Signal followed, if the process has not exited within wait, by
// SIGKILL; it returns once the process has exited.
func Stop(p *os.Process, done <-chan struct{}, sig os.Signal, wait time.Duration) {
	if !Signal(p, done, sig, wait) {
		_ = p.Kill()
		<-done
	}
}

// Tail returns the last n lines of s, for showing a log in a failure
// message; surrounding blank space is dropped.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
