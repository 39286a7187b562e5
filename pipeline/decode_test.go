package pipeline_test

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A string with a lone surrogate escape or an invalid UTF-8 byte is
// accepted, as encoding/json would take it, with U+FFFD in its place; it
// is not refused as malformed JSON.
func TestWebhookAcceptsInvalidUTF8AsReplacementCharacters(t *testing.T) {
	h := startHarness(t, head(``)+`  - {name: archive, type: file, path: out/archive.jsonl, envelope: true}
`)
	for _, note := range []string{`\ud800`, `x\udfffy`, "\xff"} {
		b, _ := samplePayload(t, "issue-frames.json")
		b = append(b[:len(b)-1], []byte(`,"note":"`+note+`"}`)...)
		if a := h.send(hookReq{secret: hookSecret, body: b}); a.Code != http.StatusAccepted {
			t.Fatalf("note %q: got %d %s, want 202", note, a.Code, a.Raw)
		}
	}
	path := filepath.Join(h.dir, "out", "archive.jsonl")
	h.eventually(10*time.Second, "the archive to hold the three exports", func() bool {
		b, _ := os.ReadFile(path)
		return bytes.Count(b, []byte("\n")) >= 3
	})
	b, _ := os.ReadFile(path)
	for _, want := range []string{"\"note\":\"\ufffd\"", "\"note\":\"x\ufffdy\""} {
		if n := bytes.Count(b, []byte(want)); n == 0 {
			t.Errorf("archive has no %s", want)
		}
	}
}
