package pipeline_test

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// Runaway jq programs are stopped by their limits: on the webhook with a
// 422 naming the stage and the limit, in a sink with a DLQ entry naming
// the limit while the other sinks get the export.
func TestJQLimits(t *testing.T) {
	const limits = "jq: {timeout: 200ms, max_outputs: 50, max_output_bytes: 100000}\n"
	// Memory is checked with a time limit far off, so that the heap
	// bound, not the clock, stops the program (under -race it allocates
	// slowly).
	const memory = "jq: {timeout: 60s, max_memory: 33554432}\n"
	archive := `  - {name: archive, type: file, path: out/archive.jsonl}
`
	body, _ := samplePayload(t, "issue-frames.json")

	t.Run("webhook stages", func(t *testing.T) {
		for _, tt := range []struct {
			name, stage, want string
			limits            string // default limits
		}{
			{"filter that never ends", `  - {type: filter, name: forever, expr: 'last(range(1e12)) > 0'}`, "filter forever failed: jq: the program ran longer than 200ms (limit jq.timeout)", ""},
			// Stopped on memory long before the time limit: a 200ms run of
			// this reached hundreds of MiB.
			{"filter that grows without end", `  - {type: filter, name: hog, expr: '[range(1e12)] | length > 0'}`, "filter hog failed: jq: the program grew the heap by more than 32 MiB (limit jq.max_memory)", memory},
			{"transform that never ends", `  - {type: transform, name: spin, expr: 'last(range(1e12))'}`, "transform spin failed: jq: the program ran longer than 200ms (limit jq.timeout)", ""},
			{"dedupe key with too many values", `  - {type: dedupe, name: dd, key: 'range(1e6)'}`, "dedupe dd: key program failed: jq: the program yielded more than 50 values (limit jq.max_outputs)", ""},
		} {
			t.Run(tt.name, func(t *testing.T) {
				h := startHarness(t, cmpOr(tt.limits, limits)+head(tt.stage)+archive)
				a := h.send(hookReq{secret: hookSecret, body: body})
				if a.Code != http.StatusUnprocessableEntity || a.Error != tt.want {
					t.Fatalf("got %d %s, want 422 %q", a.Code, a.Raw, tt.want)
				}
			})
		}
	})

	t.Run("sinks", func(t *testing.T) {
		for _, tt := range []struct {
			name, body, want string
			limits           string // default limits
		}{
			{"body that never ends", `last(range(1e12))`, "jq.timeout", ""},
			{"body that grows without end", `[range(1e12)]`, "grew the heap by more than 32 MiB (limit jq.max_memory)", memory},
			{"too many requests", `range(1000) | {i: .}`, "the program yielded more than 50 values (limit jq.max_outputs)", ""},
			{"bodies too large", `"x" * 200000`, "the program yielded more than 100000 bytes of JSON (limit jq.max_output_bytes)", ""},
		} {
			t.Run(tt.name, func(t *testing.T) {
				h := startHarness(t, cmpOr(tt.limits, limits)+head("")+archive+`  - {name: runaway, type: file, path: out/runaway.jsonl, body: '`+tt.body+`'}
`)
				h.accept(body)
				// As long as the limits allow: under -race on a loaded
				// machine growing the heap by 32 MiB took over 10s.
				var ds []backend.DeadLetter
				h.eventually(60*time.Second, "the runaway sink's dead letter", func() bool {
					ds = h.deadLetters("runaway")
					return len(ds) >= 1
				})
				if !strings.Contains(ds[0].Error, tt.want) || ds[0].Chunk != -1 {
					t.Fatalf("dead letter %+v, want a render failure saying %q", ds[0], tt.want)
				}
				// The other sink got the export.
				path := filepath.Join(h.dir, "out", "archive.jsonl")
				h.eventually(10*time.Second, "the archive to get the export", func() bool {
					b, _ := os.ReadFile(path)
					return bytes.Count(b, []byte("\n")) == 1
				})
				if b, _ := os.ReadFile(filepath.Join(h.dir, "out", "runaway.jsonl")); len(b) != 0 {
					t.Fatalf("the runaway sink wrote %d bytes", len(b))
				}
			})
		}
	})
}
