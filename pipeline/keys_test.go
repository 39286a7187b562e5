package pipeline_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"
)

// The same export accepted twice (no dedupe stage here; with one, a
// caller's retry after a crash lapsed the hold) maps to the same vendor
// tasks: the idempotency keys derive from the content, not the arrival.
// Scale and Labelbox answer the second delivery "already done"; Label
// Studio has no idempotency key and imports it again, as documented.
func TestTheSameExportAcceptedTwiceMapsToTheSameVendorTasks(t *testing.T) {
	v := newVendors(t)
	h := startHarness(t, head("")+labelboxSink(v.lb, fastPolicy)+scaleSink(v.sc.TaskURL(), fastPolicy)+labelStudioSink(v.ls, fastPolicy))
	body, _ := samplePayload(t, "issue-frames.json")
	first := h.accept(body)
	second := h.accept(body)
	if first.ID == second.ID || first.Key != second.Key || len(first.Key) != 32 {
		t.Fatalf("ids %s, %s and keys %q, %q; want two ids and one 32-digit key", first.ID, second.ID, first.Key, second.Key)
	}
	waitFake(t, "scale", func(ctx context.Context) error { return v.sc.WaitRequests(ctx, 6) })
	waitFake(t, "labelbox", func(ctx context.Context) error { return v.lb.WaitRequests(ctx, 2) })
	waitFake(t, "label studio", func(ctx context.Context) error { return v.ls.WaitRequests(ctx, 2) })
	h.eventually(10*time.Second, "every queue to empty", func() bool {
		return h.sink("scale").QueueDepth+h.sink("labelbox").QueueDepth+h.sink("label_studio").QueueDepth == 0
	})
	if got, dup := len(v.sc.Tasks()), v.sc.Duplicates(); got != 3 || dup != 3 {
		t.Errorf("scale: %d tasks, %d repeats answered 409; want 3 and 3", got, dup)
	}
	if got, dup := len(v.lb.Batches(lbProject)), v.lb.Duplicates(); got != 1 || dup != 1 {
		t.Errorf("labelbox: %d batches, %d repeats; want 1 and 1", got, dup)
	}
	if got := v.ls.Duplicates(); got != 1 {
		t.Errorf("label studio: %d repeated imports, want 1 (it has no idempotency key)", got)
	}
	for _, sink := range []string{"scale", "labelbox"} {
		if ds := h.deadLetters(sink); len(ds) != 0 {
			t.Errorf("%s: %d dead letters; an \"already done\" answer is a success", sink, len(ds))
		}
	}
}

// A sender's webhook-id names the export when there is no dedupe key: its
// retry maps to the same key even if the body changed on the way; another
// webhook-id is another export.
func TestWebhookIDNamesTheExport(t *testing.T) {
	h := startHarness(t, head("")+"  - {name: archive, type: file, path: out/a.jsonl}\n")
	body, _ := samplePayload(t, "issue-frames.json")
	var doc map[string]any
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	doc["project"] = "renamed"
	changed, _ := json.Marshal(doc)
	send := func(b []byte, id string) webhookAnswer {
		a := h.send(hookReq{secret: hookSecret, body: b, header: map[string]string{"webhook-id": id}})
		if a.Code != http.StatusAccepted {
			t.Fatalf("want 202, got %d %s", a.Code, a.Raw)
		}
		return a
	}
	a, b, c := send(body, "msg_1"), send(changed, "msg_1"), send(body, "msg_2")
	if a.Key != b.Key || a.Key == c.Key {
		t.Fatalf("keys %s (msg_1), %s (msg_1, body changed), %s (msg_2); want the first two equal and the third apart", a.Key, b.Key, c.Key)
	}
	if plain := h.accept(body); plain.Key == a.Key || plain.Key == c.Key {
		t.Fatalf("key without webhook-id %s equals one with it", plain.Key)
	}
}
