package pipeline_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/internal/vendortest"
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
