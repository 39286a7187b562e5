package pipeline_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/internal/vendortest"
	"github.com/labelpipe/labelpipe/pipeline"
)

// isolationHead is head with a small export queue: a webhook that had to
// wait on one sink's backlog would wait for as long as that sink is sick
// (the whole test), and get 503 after queue_wait. max_pending is 16 and
// queue_wait 2s, not 2 and 100ms: under -race on a loaded 2-core machine
// the healthy sinks alone were sometimes 2 requests behind for 100ms,
// which is the every-sink-behind gate, not the fault under test.
func isolationHead(maxBody int) string {
	return isolationHeadWith(maxBody, "max_pending: 16, queue_wait: 2s")
}

func isolationHeadWith(maxBody int, broker string) string {
	cfg := strings.Replace(head(`  - {type: dedupe, store: memory, ttl: 1h}`), "broker: {type: memory}",
		"broker: {type: memory, "+broker+"}", 1)
	return strings.Replace(cfg, "max_body_bytes: 65536", fmt.Sprintf("max_body_bytes: %d", maxBody), 1)
}

// post sends an export from a goroutine other than the test's, and
// returns the answer's status and body instead of failing the test.
func (h *harness) post(body []byte) (int, string, error) {
	req, err := http.NewRequestWithContext(h.t.Context(), http.MethodPost, h.webhook.URL+"/webhook", bytes.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Aquarium-Secret", hookSecret)
	resp, err := h.webhook.Client().Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(raw), err
}

// sendAll posts n fresh exports from senders goroutines at once and fails
// the test for every answer that is not 202. It returns the issue ids.
func (h *harness) sendAll(n, senders int) []string {
	h.t.Helper()
	bodies := make([][]byte, n)
	issues := make([]string, n)
	for i := range n {
		bodies[i], issues[i] = samplePayload(h.t, "issue-frames.json")
	}
	work := make(chan []byte)
	var (
		mu       sync.Mutex
		refused  = map[string]int{}
		wg       sync.WaitGroup
		firstBad string
	)
	for range senders {
		wg.Go(func() {
			for b := range work {
				code, raw, err := h.post(b)
				if code == http.StatusAccepted && err == nil {
					continue
				}
				mu.Lock()
				refused[fmt.Sprintf("%d %v", code, err)]++
				if firstBad == "" {
					firstBad = raw
				}
				mu.Unlock()
			}
		})
	}
	for _, b := range bodies {
		work <- b
	}
	close(work)
	wg.Wait()
	if len(refused) > 0 {
		h.t.Fatalf("of %d exports, answers other than 202: %v; first: %s", n, refused, firstBad)
	}
	return issues
}

// One vendor down, hanging or slow holds up neither intake nor the other
// vendors: 8 callers post as fast as they can while it misbehaves; every
// export gets 202, and the healthy vendors get every one before the sick
// one recovers. Then it recovers and gets every request, once.
func TestOneSinksFaultHoldsUpNeitherIntakeNorTheOthers(t *testing.T) {
	const exports = 150
	cases := []struct {
		name   string
		policy string // scale's
		fault  func(*vendortest.Scale)
		heal   func(*vendortest.Scale)
	}{
		{"down", `
    retry: {max_attempts: 1000, initial_interval: 5ms, max_interval: 50ms, max_elapsed: 0s}
    breaker: {consecutive_failures: 3, open_timeout: 100ms}`,
			func(s *vendortest.Scale) { s.SetDown(http.StatusServiceUnavailable) }, func(s *vendortest.Scale) { s.SetUp() }},
		{"hanging", fastPolicy,
			func(s *vendortest.Scale) { s.SetLatency(time.Hour) }, func(s *vendortest.Scale) { s.SetLatency(0) }},
		{"slow", fastPolicy,
			func(s *vendortest.Scale) { s.SetLatency(200 * time.Millisecond) }, func(s *vendortest.Scale) { s.SetLatency(0) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := newVendors(t)
			h := startHarness(t, isolationHead(65536)+labelboxSink(v.lb, fastPolicy)+
				scaleSink(v.sc.TaskURL(), tc.policy)+labelStudioSink(v.ls, fastPolicy))
			tc.fault(v.sc)
			h.sendAll(exports, 8)
			waitFake(t, "labelbox", func(ctx context.Context) error { return v.lb.WaitAccepted(ctx, exports) })
			waitFake(t, "label studio", func(ctx context.Context) error { return v.ls.WaitAccepted(ctx, exports) })
			behind := h.sink("scale").QueueDepth
			if behind == 0 {
				t.Fatalf("scale's queue is empty while it is %s: the test proves nothing", tc.name)
			}
			t.Logf("scale %s: the others got all %d exports while %d scale requests waited", tc.name, exports, behind)

			tc.heal(v.sc)
			waitFake(t, "scale after it recovered", func(ctx context.Context) error { return v.sc.WaitAccepted(ctx, 3*exports) })
			h.eventually(10*time.Second, "scale's queue to empty", func() bool { return h.sink("scale").QueueDepth == 0 })
			if got := len(v.sc.Tasks()); got != 3*exports {
				t.Errorf("scale has %d tasks, want %d", got, 3*exports)
			}
			if ds := h.deadLetters("scale"); len(ds) != 0 {
				t.Errorf("scale has %d dead letters, want none: %+v", len(ds), ds[0])
			}
		})
	}
}

// largePayload is issue-frames.json with its elements repeated up to n,
// each with its own id.
func largePayload(t *testing.T, n int) ([]byte, string) {
	t.Helper()
	raw, issue := samplePayload(t, "issue-frames.json")
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	iss := doc["issue"].(map[string]any)
	orig := iss["elements"].([]any)
	els := make([]any, n)
	for i := range els {
		var el map[string]any
		b, _ := json.Marshal(orig[i%len(orig)])
		_ = json.Unmarshal(b, &el)
		el["element_id"] = fmt.Sprintf("frame_%06d", i)
		els[i] = el
	}
	iss["elements"] = els
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return b, issue
}

// A 3,000-element export is one unit of admission: while Scale works
// through its 3,000 tasks, other webhooks get in at once and reach the
// other vendors.
func TestALargeExportDoesNotMakeOthersWait(t *testing.T) {
	const elements = 3000
	v := newVendors(t)
	big, _ := largePayload(t, elements)
	h := startHarness(t, isolationHead(len(big)+1024)+labelboxSink(v.lb, fastPolicy)+
		scaleSink(v.sc.TaskURL(), fastPolicy)+labelStudioSink(v.ls, fastPolicy))
	v.sc.SetLatency(time.Hour) // held until the small exports are through
	h.accept(big)
	waitFake(t, "scale to get the first tasks of the large export", func(ctx context.Context) error { return v.sc.WaitArrived(ctx, 1) })

	const small = 20
	h.sendAll(small, 4)
	waitFake(t, "labelbox", func(ctx context.Context) error { return v.lb.WaitAccepted(ctx, 1+small) })
	waitFake(t, "label studio", func(ctx context.Context) error { return v.ls.WaitAccepted(ctx, 3+small) })
	if d := h.sink("scale").QueueDepth; d < elements {
		t.Fatalf("scale's queue holds %d requests, want the large export's %d still waiting", d, elements)
	}

	v.sc.SetLatency(0)
	waitFakeWithin(t, time.Minute, "scale", func(ctx context.Context) error { return v.sc.WaitAccepted(ctx, elements+3*small) })
}

// queuePolicy is a policy with a small queue for scale.
func queuePolicy(queue string) string { return fastPolicy + "\n    queue: " + queue }

// A full queue with on_full: dead_letter (the default) sends that sink's
// new requests to its DLQ with an error that says so, loudly; intake and
// the others carry on, and a replay delivers them once the vendor is back.
func TestAFullQueueDeadLettersItsNewRequests(t *testing.T) {
	const exports = 10
	v := newVendors(t)
	h := startHarness(t, isolationHead(65536)+labelboxSink(v.lb, fastPolicy)+
		scaleSink(v.sc.TaskURL(), queuePolicy("{max_requests: 6}"))+labelStudioSink(v.ls, fastPolicy))
	v.sc.SetLatency(time.Hour)
	for range exports {
		body, _ := samplePayload(t, "issue-frames.json")
		h.accept(body)
	}
	waitFake(t, "labelbox", func(ctx context.Context) error { return v.lb.WaitAccepted(ctx, exports) })
	// Two exports (3 tasks each) fill scale's queue of 6; the rest are
	// dead-lettered.
	want := 3 * (exports - 2)
	ds := h.waitDeadLetters("scale", want)
	if len(ds) != want {
		t.Fatalf("scale has %d dead letters, want %d", len(ds), want)
	}
	for _, d := range ds {
		if !strings.Contains(d.Error, "sink queue full") || !strings.Contains(d.Error, "max_requests 6") || d.Attempts != 0 {
			t.Fatalf("dead letter %+v: want 0 attempts and an error naming the full queue and its limit", d)
		}
	}
	if !strings.Contains(h.logs.String(), "sink queue is full") {
		t.Error("no warning in the log that scale's queue is full")
	}
	var ready struct {
		Status   string   `json:"status"`
		Degraded []string `json:"degraded"`
	}
	if code := h.adminDo(http.MethodGet, "/readyz", nil, &ready); code != http.StatusOK || ready.Status != "degraded" ||
		len(ready.Degraded) != 1 || !strings.Contains(ready.Degraded[0], "sink scale: queue full") {
		t.Fatalf("/readyz: %d %+v; want 200, degraded, naming scale's full queue", code, ready)
	}

	v.sc.SetLatency(0)
	waitFake(t, "scale's queued tasks", func(ctx context.Context) error { return v.sc.WaitAccepted(ctx, 6) })
	h.eventually(10*time.Second, "scale's queue to empty", func() bool { return h.sink("scale").QueueDepth == 0 })
	if code := h.adminDo(http.MethodGet, "/readyz", nil, &ready); code != http.StatusOK || ready.Status != "ready" {
		t.Fatalf("/readyz after the queue emptied: %d %+v; want ready", code, ready)
	}
	var replayed struct{ Replayed int }
	if code := h.adminDo(http.MethodPost, "/api/dlq/scale/replay", nil, &replayed); code != http.StatusOK || replayed.Replayed != want {
		t.Fatalf("replay: %d %+v, want %d replayed", code, replayed, want)
	}
	waitFake(t, "scale after the replay", func(ctx context.Context) error { return v.sc.WaitAccepted(ctx, 3*exports) })
	if got := len(v.sc.Tasks()); got != 3*exports {
		t.Errorf("scale has %d tasks, want %d", got, 3*exports)
	}
}

// The queue settings are checked when the config is loaded.
func TestQueueConfigIsValidated(t *testing.T) {
	for _, tc := range []struct{ queue, want string }{
		{"{max_requests: 0}", "queue.max_requests: must be ≥ 1"},
		{"{max_bytes: -1}", "queue.max_bytes: must be ≥ 1"},
		{"{on_full: drop}", `queue.on_full: unknown action "drop" (want dead_letter or backpressure)`},
		{"{max_request: 5}", "max_request"},
	} {
		cfg := head("") + "  - {name: s, type: file, dir: out, queue: " + tc.queue + "}\n"
		_, err := pipeline.ParseConfig("labelpipe.yaml", []byte(cfg))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("queue %s: error %v, want one containing %q", tc.queue, err, tc.want)
		}
	}
}

// When every vendor is behind (an overload, not one slow vendor), intake
// slows the callers down: once each sink has broker.max_pending requests
// waiting, the webhook waits queue_wait, then answers 503, and accepts
// again as soon as a vendor catches up.
func TestEveryVendorBehindSlowsIntake(t *testing.T) {
	v := newVendors(t)
	h := startHarness(t, isolationHeadWith(65536, "max_pending: 2, queue_wait: 100ms")+labelboxSink(v.lb, fastPolicy)+
		scaleSink(v.sc.TaskURL(), fastPolicy)+labelStudioSink(v.ls, fastPolicy))
	for _, s := range []*vendortest.Server{v.lb.Server, v.sc.Server, v.ls.Server} {
		s.SetLatency(time.Hour)
	}
	// max_pending 2: two exports put 2 requests in labelbox's and label
	// studio's queues (scale gets 3 per export).
	for range 2 {
		body, _ := samplePayload(t, "issue-frames.json")
		h.accept(body)
	}
	h.eventually(10*time.Second, "every sink's queue to hold 2 requests", func() bool {
		return h.sink("labelbox").QueueDepth == 2 && h.sink("label_studio").QueueDepth == 2
	})
	third, _ := samplePayload(t, "issue-frames.json")
	h.sendWaitsThenUnavailable(third, 100*time.Millisecond, "queue is full")

	v.lb.SetLatency(0) // one vendor catches up: no longer every sink behind
	waitFake(t, "labelbox", func(ctx context.Context) error { return v.lb.WaitAccepted(ctx, 2) })
	h.accept(third)
	for _, s := range []*vendortest.Server{v.sc.Server, v.ls.Server} {
		s.SetLatency(0)
	}
	waitFake(t, "scale", func(ctx context.Context) error { return v.sc.WaitAccepted(ctx, 9) })
	waitFake(t, "label studio", func(ctx context.Context) error { return v.ls.WaitAccepted(ctx, 3) })
}
