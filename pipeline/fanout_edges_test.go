package pipeline_test

import (
	"net/url"
	"path/filepath"
	"testing"
	"time"
)

// A resend to one sink (the operator's "resend to Scale") renders and
// queues the export for that sink only: the other sink gets no second
// copy, and its requests in the history stay those of generation 0.
func TestResendToOneSinkLeavesTheOthersAlone(t *testing.T) {
	h := startHarness(t, head("")+`  - {name: chosen, type: file, path: out/chosen.jsonl}
  - {name: other, type: file, path: out/other.jsonl}
`)
	body, issue := samplePayload(t, "issue-frames.json")
	a := h.accept(body)
	chosen, other := filepath.Join(h.dir, "out/chosen.jsonl"), filepath.Join(h.dir, "out/other.jsonl")
	h.eventually(10*time.Second, "both sinks to deliver the export", func() bool {
		// Listed (not fetched by id): the entry may not be written yet.
		v := h.exports("issue_id=" + url.QueryEscape(issue))
		return len(v) == 1 && v[0].Sinks["chosen"] == "delivered" && v[0].Sinks["other"] == "delivered"
	})
	if code := h.resend(a.ID, `{"sink": "chosen"}`); code != 202 {
		t.Fatalf("resend = %d, want 202", code)
	}
	h.eventually(10*time.Second, "the resend to be delivered to chosen", func() bool {
		v := h.export(a.ID)
		return v.Generation == 1 && v.Sinks["chosen"] == "delivered" && len(fileLines(t, chosen)) == 2
	})
	resent := false
	for _, r := range h.export(a.ID).Requests {
		if r.Sink == "other" && r.Generation != 0 {
			t.Errorf("the resend to chosen rendered for other too: %+v", r)
		}
		resent = resent || (r.Sink == "chosen" && r.Generation == 1 && r.State == "delivered")
	}
	if !resent {
		t.Errorf("no delivered generation-1 request for chosen in %+v", h.export(a.ID).Requests)
	}
	if n := len(fileLines(t, other)); n != 1 {
		t.Errorf("other wrote %d lines, want 1 (the resend was for chosen only)", n)
	}
}
