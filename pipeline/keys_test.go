package pipeline_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
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

// A sender's verified webhook-id names the export when there is no dedupe
// key: its retry maps to the same key even if the body changed on the
// way; another webhook-id is another export. An unsigned webhook-id
// header names nothing: anyone could send one.
func TestWebhookIDNamesTheExport(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	signed := strings.Replace(head(""), "  - {type: secret, header: X-Aquarium-Secret, secrets: [\""+hookOldSecret+"\", \""+hookSecret+"\"]}",
		"  - {type: secret, scheme: standard_webhooks, secrets: [\"whsec_"+base64.StdEncoding.EncodeToString(key)+"\"]}", 1)
	if signed == head("") {
		t.Fatal("secret stage not found in head; update the test")
	}
	body, _ := samplePayload(t, "issue-frames.json")
	var doc map[string]any
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	doc["project"] = "renamed"
	changed, _ := json.Marshal(doc)

	t.Run("signed", func(t *testing.T) {
		h := startHarness(t, signed+"  - {name: archive, type: file, path: out/a.jsonl}\n")
		send := func(b []byte, id string) webhookAnswer {
			ts := strconv.FormatInt(time.Now().Unix(), 10)
			a := h.send(hookReq{body: b, header: map[string]string{"webhook-id": id, "webhook-timestamp": ts,
				"webhook-signature": signStandard(key, id, ts, b)}})
			if a.Code != http.StatusAccepted {
				t.Fatalf("want 202, got %d %s", a.Code, a.Raw)
			}
			return a
		}
		a, b, c := send(body, "msg_1"), send(changed, "msg_1"), send(body, "msg_2")
		if a.Key != b.Key || a.Key == c.Key {
			t.Fatalf("keys %s (msg_1), %s (msg_1, body changed), %s (msg_2); want the first two equal and the third apart", a.Key, b.Key, c.Key)
		}
	})
	t.Run("unsigned header", func(t *testing.T) {
		h := startHarness(t, head("")+"  - {name: archive, type: file, path: out/a.jsonl}\n")
		a := h.send(hookReq{secret: hookSecret, body: body, header: map[string]string{"webhook-id": "msg_1"}})
		b := h.send(hookReq{secret: hookSecret, body: changed, header: map[string]string{"webhook-id": "msg_1"}})
		plain := h.accept(body)
		if a.Code != http.StatusAccepted || b.Code != http.StatusAccepted {
			t.Fatalf("want 202s, got %d %s and %d %s", a.Code, a.Raw, b.Code, b.Raw)
		}
		if a.Key != plain.Key || b.Key == a.Key {
			t.Fatalf("keys %s (msg_1), %s (msg_1, other content), %s (no header); want the content to decide", a.Key, b.Key, plain.Key)
		}
	})
}
