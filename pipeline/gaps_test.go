package pipeline_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/internal/vendortest"
	"github.com/labelpipe/labelpipe/pipeline"
)

// Tests for behaviour an audit could break without the rest of the suite
// noticing (issue 14). Each names, in its comment, the fault it catches.

// A 503 for a full export queue gives the dedupe key back: the caller's
// retry of the same body is accepted (not "duplicate") and delivered.
func TestQueueFullReleasesTheDedupeKey(t *testing.T) {
	ls := vendortest.NewLabelStudio(t, lsToken)
	ls.SetLatency(time.Hour) // held until the test lowers it
	cfg := strings.Replace(head(`  - {type: dedupe, store: memory, ttl: 1h}`), "broker: {type: memory}",
		"broker: {type: memory, max_pending: 1, queue_wait: 100ms}", 1)
	h := startHarness(t, cfg+labelStudioSink(ls, fastPolicy+"\n    queue: {max_requests: 1, on_full: backpressure}")+
		"  - {name: archive, type: file, path: out/archive.jsonl}\n")
	first, _ := samplePayload(t, "issue-frames.json")
	h.accept(first)
	waitFake(t, "the delivery to reach the vendor", func(ctx context.Context) error { return ls.WaitArrived(ctx, 1) })
	second, _ := samplePayload(t, "issue-frames.json")
	h.accept(second) // waits in the fan-out: max_pending is now spent

	retried, issue := samplePayload(t, "issue-crops.json")
	h.sendWaitsThenUnavailable(retried, 100*time.Millisecond, "queue is full")

	ls.SetLatency(0)
	h.eventually(5*time.Second, "the queued requests to finish", func() bool { return ls.Accepted() == 2 })
	if a := h.send(hookReq{secret: hookSecret, body: retried}); a.Code != http.StatusAccepted || a.Status != "accepted" {
		t.Fatalf("retry of the body refused with 503: %d %s, want 202 accepted (the 503 must give the dedupe key back)", a.Code, a.Raw)
	}
	waitFake(t, "the retried export delivered", func(ctx context.Context) error { return ls.WaitAccepted(ctx, 3) })
	found := false
	for _, r := range ls.Requests() {
		found = found || (r.Outcome == vendortest.Accepted && strings.Contains(string(r.Body), issue))
	}
	if !found {
		t.Errorf("label studio never accepted issue %s", issue)
	}
}

// An export no sink subscribes to is answered "ignored" and gives its
// dedupe key back: Aquarium's test payload sent twice is ignored twice,
// not taken for a duplicate the second time.
func TestIgnoredReleasesTheDedupeKey(t *testing.T) {
	h := startHarness(t, strings.Replace(head(`  - {type: dedupe, store: memory, ttl: 1h}`),
		"  - {type: schema, schema: issue-exported}\n", "", 1)+"  - {name: archive, type: file, path: out/archive.jsonl}\n")
	body := rawPayload(t, "test-payload.json")
	for i := range 2 {
		if a := h.send(hookReq{secret: hookSecret, body: body}); a.Code != http.StatusOK || a.Status != "ignored" {
			t.Fatalf("test payload, sending %d: %d %s, want 200 ignored", i+1, a.Code, a.Raw)
		}
	}
}

// heldVendor is a vendor whose answers the test controls: while held, a
// request waits until the client gives up; otherwise it gets 200. It
// counts the raw requests it got and how many were under way at once.
type heldVendor struct {
	*httptest.Server
	mu                  sync.Mutex
	held                bool
	got, inFlight, most int
	release             chan struct{} // closed to let held requests go
}

func newHeldVendor(t *testing.T, held bool) *heldVendor {
	v := &heldVendor{held: held, release: make(chan struct{})}
	v.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v.mu.Lock()
		v.got++
		v.inFlight++
		v.most = max(v.most, v.inFlight)
		held, release := v.held, v.release
		v.mu.Unlock()
		defer func() {
			v.mu.Lock()
			v.inFlight--
			v.mu.Unlock()
		}()
		if held {
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(v.Close)
	t.Cleanup(v.let)
	return v
}

// let stops holding: held requests and later ones get 200.
func (v *heldVendor) let() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.held {
		v.held = false
		close(v.release)
	}
}

// counts returns the requests got, under way now, and most at once.
func (v *heldVendor) counts() (got, inFlight, most int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.got, v.inFlight, v.most
}

// redisHead is head on the Redis broker, with a short shutdown timeout
// and claim_idle, so that a restart picks up what the first run left.
func redisHead(srv *redistest.Server, stages string) string {
	cfg := strings.Replace(head(stages), "broker: {type: memory}",
		"broker: {type: redis, claim_idle: 200ms}\nredis: {url: \""+srv.URL()+"\"}", 1)
	return strings.Replace(cfg, "shutdown_timeout: 5s", "shutdown_timeout: 200ms", 1)
}

// stopRun cancels a harness's Run and requires it to return cleanly.
func stopRun(t *testing.T, h *harness) {
	t.Helper()
	h.stop()
	select {
	case err := <-h.done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return within 20s of cancel")
	}
	h.stop = nil
}

// counterValue sums an int64 counter's points whose attributes include
// every pair of want.
func counterValue(t *testing.T, r *sdkmetric.ManualReader, name string, want map[string]string) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(t.Context(), &rm); err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			s, ok := m.Data.(metricdata.Sum[int64])
			if m.Name != name || !ok {
				continue
			}
		points:
			for _, dp := range s.DataPoints {
				for k, v := range want {
					if got, ok := dp.Attributes.Value(attribute.Key(k)); !ok || got.AsString() != v {
						continue points
					}
				}
				n += dp.Value
			}
		}
	}
	return n
}

// A request redelivered after it was delivered is not sent again: the
// delivered record stops it. The redelivery is a real one: an export's
// fan-out queued the fast sink's request (delivered), then waited for room
// in the held sink's full queue (on_full: backpressure) when the process
// stopped, so the export was handed back and fanned out again after the
// restart, queueing the fast sink's request a second time.
func TestRedeliveryAfterDeliveryIsNotSentAgain(t *testing.T) {
	srv := redistest.Start(t)
	fast := newHeldVendor(t, false)
	slow := newHeldVendor(t, true)
	cfg := redisHead(srv, "") +
		`  - {name: fast, type: http, url: "` + fast.URL + `", retry: {max_attempts: 3, initial_interval: 1ms, max_interval: 1ms}}
  - {name: held, type: http, url: "` + slow.URL + `", max_in_flight: 1, queue: {max_requests: 1, on_full: backpressure}, retry: {max_attempts: 1000, initial_interval: 1ms, max_interval: 1ms}, breaker: {consecutive_failures: 1000}}
`
	first := startHarness(t, cfg)
	// Three: the first is under way at the held vendor (max_in_flight 1),
	// so of the other two one fills the held sink's queue and the other's
	// fan-out waits for room in it, having queued the fast sink's request.
	// Sent only once the first is under way: before that, the first could
	// still sit in the queue and a later one fit behind it unnoticed.
	const exports = 3
	for i := range exports {
		body, _ := samplePayload(t, "issue-frames.json")
		first.accept(body)
		if i == 0 {
			first.eventually(10*time.Second, "the first export to be under way at the held vendor", func() bool {
				_, n, _ := slow.counts()
				return n == 1
			})
		}
	}
	first.eventually(10*time.Second, "the held sink's queue to be full and the fast sink to have every export", func() bool {
		got, _, _ := fast.counts()
		return got == exports && strings.Contains(first.logs.String(), "sink queue is full")
	})
	stopRun(t, first)
	if !strings.Contains(first.logs.String(), "handed_back=") {
		t.Fatalf("first run's drain log has no handed_back count")
	}

	slow.let()
	reader := sdkmetric.NewManualReader()
	second := newHarnessWith(t, cfg, func(o *pipeline.Options) {
		o.MeterProvider = sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	})
	second.run()
	second.eventually(15*time.Second, "the fast sink's redelivered request to be skipped or sent", func() bool {
		got, _, _ := fast.counts()
		return got > exports || counterValue(t, reader, "labelpipe.sink.deliveries", map[string]string{"sink": "fast", "outcome": "skipped"}) > 0
	})
	second.eventually(15*time.Second, "the held sink to get every export", func() bool {
		got, _, _ := slow.counts()
		return got >= exports && second.sink("held").QueueDepth == 0
	})
	if got, _, _ := fast.counts(); got != exports {
		t.Errorf("the fast vendor got %d requests for %d exports; a redelivered request was sent again", got, exports)
	}
}

// At the shutdown deadline a delivery still under way is handed back to
// the broker, not dead-lettered: the next process delivers it.
func TestShutdownDeadlineHandsBackInFlightDeliveries(t *testing.T) {
	srv := redistest.Start(t)
	v := newHeldVendor(t, true)
	cfg := redisHead(srv, "") +
		`  - {name: hang, type: http, url: "` + v.URL + `", retry: {max_attempts: 3, initial_interval: 1ms, max_interval: 1ms}}
`
	first := startHarness(t, cfg)
	body, _ := samplePayload(t, "issue-frames.json")
	a := first.accept(body)
	first.eventually(10*time.Second, "the delivery to reach the vendor", func() bool { _, n, _ := v.counts(); return n == 1 })
	start := time.Now()
	stopRun(t, first)
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Fatalf("Run returned after %v, before shutdown_timeout (200ms): the deadline was not reached", took)
	}
	if ds := first.deadLetters("hang"); len(ds) != 0 {
		t.Fatalf("interrupted delivery dead-lettered at shutdown: %+v", ds[0])
	}
	if logs := first.logs.String(); !strings.Contains(logs, "handed_back=1") || !strings.Contains(logs, a.ID+".hang.0") {
		t.Errorf("drain log does not say the request %s.hang.0 was handed back", a.ID)
	}

	v.let()
	got, _, _ := v.counts()
	second := startHarness(t, cfg)
	second.eventually(15*time.Second, "the handed-back request to be delivered after the restart", func() bool {
		n, _, _ := v.counts()
		return n > got && second.sink("hang").QueueDepth == 0
	})
	if ds := second.deadLetters("hang"); len(ds) != 0 {
		t.Errorf("dead letters after the restart: %+v", ds[0])
	}
}

// fileLines reads a file sink's output; nil while it does not exist.
func fileLines(t *testing.T, path string) []string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	return strings.Split(strings.TrimSpace(string(raw)), "\n")
}

// A sink's filter decides whether it gets an export: the filtered sink
// gets only the export its filter matches, the other sink every export.
// The filtered sink takes one request at a time, in order, so once it has
// the second export it would already have had the first.
func TestSinkFilterSkipsExports(t *testing.T) {
	skipped, skippedIssue := samplePayload(t, "issue-frames.json")
	wanted, wantedIssue := samplePayload(t, "issue-frames.json")
	h := startHarness(t, head("")+
		`  - {name: picky, type: file, path: out/picky.jsonl, max_in_flight: 1, filter: '.issue.id == "`+wantedIssue+`"'}
  - {name: all, type: file, path: out/all.jsonl}
`)
	h.accept(skipped)
	h.accept(wanted)
	has := func(line, issue string) bool { return strings.Contains(line, `"id":"`+issue+`"`) }
	all, picky := filepath.Join(h.dir, "out/all.jsonl"), filepath.Join(h.dir, "out/picky.jsonl")
	h.eventually(10*time.Second, "both sinks to get what they want", func() bool {
		p := fileLines(t, picky)
		return len(fileLines(t, all)) == 2 && len(p) >= 1 && has(p[len(p)-1], wantedIssue)
	})
	got := fileLines(t, picky)
	if len(got) != 1 || !has(got[0], wantedIssue) || has(got[0], skippedIssue) {
		t.Errorf("the filtered sink wrote %d lines (first has the skipped issue %s: %v); want one, with issue %s",
			len(got), skippedIssue, has(got[0], skippedIssue), wantedIssue)
	}
}
