package pipeline_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/builtin"
	"github.com/labelpipe/labelpipe/configs"
	"github.com/labelpipe/labelpipe/internal/testutil"
	"github.com/labelpipe/labelpipe/pipeline"
)

// FuzzParseConfig loads arbitrary YAML, resolving the stage and sink
// options against the built-in registry as `labelpipe run` does. It never
// panics; it returns a config or an error, never both or neither; and an
// error is a non-empty ConfigErrors whose every entry names the file and
// says what is wrong (a position too, wherever the YAML has one).
func FuzzParseConfig(f *testing.F) {
	seeds, _ := filepath.Glob("../configs/*.yaml")
	more, _ := filepath.Glob("testdata/config/*.yaml")
	seeds = append(seeds, more...)
	if len(seeds) == 0 {
		f.Fatal("no seed configs")
	}
	for _, name := range seeds {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, false)
		f.Add(b, true)
	}
	for _, s := range []string{
		"", "---", "[]", "null", "sinks: 1", "stages: [{}]", "server: {max_body_bytes: -1}",
		"sinks:\n  - {name: a, type: file, path: a.jsonl}\n",
		"sinks:\n  - {name: a, type: file, path: ${UNSET_FUZZ_VAR}}\n",
		"a: &x [*x]", "{? [] : x}", "\t", "%YAML 1.1\n---\n", "x: !!binary ^^",
	} {
		f.Add([]byte(s), false)
	}
	reg := builtin.Registry()
	f.Fuzz(func(t *testing.T, data []byte, allowUnset bool) {
		opts := []pipeline.LoadOption{pipeline.ResolveWith(reg)}
		if allowUnset {
			opts = append(opts, pipeline.AllowUnsetEnv())
		}
		cfg, err := pipeline.ParseConfig("fuzz.yaml", data, opts...)
		if (cfg == nil) == (err == nil) {
			t.Fatalf("ParseConfig = %v, %v: want a config or an error", cfg, err)
		}
		if err == nil {
			return
		}
		var errs pipeline.ConfigErrors
		if !errors.As(err, &errs) || len(errs) == 0 {
			t.Fatalf("error %v (%T) is not a non-empty ConfigErrors", err, err)
		}
		for _, e := range errs {
			if e == nil || e.File != "fuzz.yaml" || strings.TrimSpace(e.Msg) == "" || e.Line < 0 || e.Col < 0 {
				t.Fatalf("config error %#v does not say where and what", e)
			}
		}
	})
}

// FuzzWebhook sends arbitrary bodies, content types and encodings, with
// the right secret, a wrong one or none, to the real webhook handler of a
// running pipeline (secret, schema, filter and dedupe stages, memory
// broker, a file sink). It never panics, never answers 5xx other than 503,
// and always answers a JSON object with a non-empty "error" or "status".
//
// The dedupe stage keeps what earlier inputs stored, so the same input may
// be accepted once and a duplicate later; every invariant holds for both.
func FuzzWebhook(f *testing.F) {
	for _, b := range testutil.SamplePayloads(f) {
		f.Add(b, "application/json", uint8(0), false, "")
		f.Add(b, "", uint8(0), true, "identity")
	}
	frames, err := configs.Payloads.ReadFile("payloads/issue-frames.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(frames, "text/json; charset=utf-8", uint8(1), false, "")
	f.Add(frames, "application/json", uint8(2), false, "")
	f.Add(frames, "application/json", uint8(0), false, "gzip")
	f.Add(frames, "application/json; charset", uint8(0), false, "")
	f.Add(frames, "text/plain", uint8(0), false, "")
	f.Add([]byte(`{"event":"issue-exported","project":"p\ud800","issue":{"id":"\udfff","elements":[]}}`), "application/json", uint8(0), false, "")
	f.Add([]byte("{\"event\":\"\xff\"}"), "application/json", uint8(0), false, "")
	f.Add([]byte(`{"event":"issue-exported",`), "application/json", uint8(0), true, "")
	f.Add([]byte(`[]`), "application/json", uint8(0), false, "")
	f.Add(bytes.Repeat([]byte("["), 70_000), "application/json", uint8(0), false, "")

	handler := startFuzzPipeline(f)
	f.Fuzz(func(t *testing.T, body []byte, contentType string, secret uint8, chunked bool, encoding string) {
		r := httptest.NewRequest(http.MethodPost, "/webhook", bytes.NewReader(body))
		if chunked {
			r.ContentLength = -1 // length unknown, as a chunked request
		}
		if contentType != "" {
			r.Header.Set("Content-Type", contentType)
		}
		if encoding != "" {
			r.Header.Set("Content-Encoding", encoding)
		}
		switch secret % 3 {
		case 0:
			r.Header.Set("X-Aquarium-Secret", hookSecret)
		case 1:
			r.Header.Set("X-Aquarium-Secret", "guess")
		}
		w := httptest.NewRecorder()
		handler.ServeHTTP(w, r)

		if w.Code >= 500 && w.Code != http.StatusServiceUnavailable {
			t.Fatalf("answered %d %s", w.Code, w.Body)
		}
		if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Fatalf("answered %d with Content-Type %q: %s", w.Code, ct, w.Body)
		}
		var a struct {
			Status string `json:"status"`
			Error  string `json:"error"`
		}
		if err := json.Unmarshal(w.Body.Bytes(), &a); err != nil {
			t.Fatalf("answered %d with a body that is not a JSON object (%v): %q", w.Code, err, w.Body)
		}
		if a.Status == "" && a.Error == "" {
			t.Fatalf("answered %d with neither status nor error: %s", w.Code, w.Body)
		}
	})
}

// startFuzzPipeline runs a pipeline for FuzzWebhook and returns its
// webhook handler; the pipeline stops when the fuzz target ends.
func startFuzzPipeline(f *testing.F) http.Handler {
	f.Helper()
	dir := f.TempDir()
	cfg, err := pipeline.ParseConfig(filepath.Join(dir, "labelpipe.yaml"), []byte(`
server: {addr: "", path: /webhook, max_body_bytes: 65536, shutdown_timeout: 5s}
admin: {addr: ""}
broker: {type: memory}
stages:
  - {type: secret, header: X-Aquarium-Secret, secrets: ["`+hookSecret+`"]}
  - {type: schema, schema: issue-exported}
  - {type: filter, expr: '.project != "skip_me"'}
  - {type: dedupe, store: memory, ttl: 1h}
sinks:
  - {name: archive, type: file, path: out/archive.jsonl, envelope: true}
`))
	if err != nil {
		f.Fatal(err)
	}
	p, err := pipeline.New(cfg, pipeline.Options{
		Registry: builtin.Registry(),
		Logger:   slog.New(slog.DiscardHandler),
	})
	if err != nil {
		f.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	f.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				f.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			f.Errorf("Run did not return within 30s of cancel")
		}
		if err := p.Close(); err != nil {
			f.Errorf("Close: %v", err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for p.Ready(ctx) != nil {
		if time.Now().After(deadline) {
			f.Fatal("pipeline not ready after 10s")
		}
		time.Sleep(2 * time.Millisecond)
	}
	return p.Handler()
}
