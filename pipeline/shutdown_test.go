package pipeline_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// A vendor that is down opened its breaker: the drain does not wait for
// its hour-long deadline when nothing can be delivered, and the final log
// says which request was not delivered.
func TestDrainDoesNotWaitOnAnOpenBreaker(t *testing.T) {
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(down.Close)
	cfg := strings.Replace(head(""), "shutdown_timeout: 5s", "shutdown_timeout: 1h", 1) +
		`  - {name: down, type: http, url: "` + down.URL + `", retry: {max_attempts: 100}, breaker: {consecutive_failures: 1, open_timeout: 1h}}
`
	h := startHarness(t, cfg)
	body, _ := samplePayload(t, "issue-frames.json")
	a := h.accept(body)
	h.eventually(10*time.Second, "the breaker to open", func() bool { return h.sink("down").Breaker == "open" })

	h.stop()
	select {
	case err := <-h.done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		h.stop = nil // returned: the cleanup need not wait for it again
	case <-time.After(20 * time.Second):
		t.Fatal("Run still draining 20s after cancel, with every request behind an open breaker (deadline 1h)")
	}
	logs := h.logs.String()
	key := a.ID + ".down.0"
	for _, want := range []string{
		"every undelivered request waits behind an open circuit breaker",
		"requests undelivered at shutdown",
		key,
		"handed_back=1",
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
}
