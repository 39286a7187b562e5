package pipeline_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/internal/redistest"
)

// A request keeps its attempt count across a restart: the process that
// picks it up after the first one stopped makes only what is left of
// retry.max_attempts, then dead-letters it with every attempt counted.
func TestAttemptsSurviveARestart(t *testing.T) {
	srv := redistest.Start(t)
	var (
		mu       sync.Mutex
		phase    = 1
		requests = map[int]int{} // phase → requests the vendor got
		release  = make(chan struct{})
	)
	vendor := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		ph := phase
		requests[ph]++
		n := requests[ph]
		mu.Unlock()
		if ph == 1 && n > 2 {
			// The first process's third attempt hangs until it stops.
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(vendor.Close)
	t.Cleanup(func() { close(release) })
	seen := func(ph int) int {
		mu.Lock()
		defer mu.Unlock()
		return requests[ph]
	}

	cfg := strings.Replace(head(""), "broker: {type: memory}", "broker: {type: redis, claim_idle: 200ms}\nredis: {url: \""+srv.URL()+"\"}", 1)
	cfg = strings.Replace(cfg, "shutdown_timeout: 5s", "shutdown_timeout: 200ms", 1) +
		`  - {name: flaky, type: http, url: "` + vendor.URL + `", retry: {max_attempts: 3, initial_interval: 1ms, max_interval: 1ms}, breaker: {consecutive_failures: 1000}}
`
	first := startHarness(t, cfg)
	body, _ := samplePayload(t, "issue-frames.json")
	a := first.accept(body)
	first.eventually(10*time.Second, "two failed attempts and a third under way", func() bool { return seen(1) >= 3 })
	first.stop()
	if err := <-first.done; err != nil {
		t.Fatalf("first Run: %v", err)
	}
	first.stop = nil

	mu.Lock()
	phase = 2
	mu.Unlock()
	second := startHarness(t, cfg)
	ds := second.waitDeadLetters("flaky", 1)
	if ds[0].ExportID != a.ID || ds[0].Attempts != 3 {
		t.Fatalf("dead letter %+v, want export %s with 3 attempts in all", ds[0], a.ID)
	}
	if got := seen(2); got != 1 {
		t.Fatalf("the second process made %d attempts, want the 1 left of max_attempts 3", got)
	}
}
