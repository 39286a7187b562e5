package sinks_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/sinks"
)

func newFileSink(t *testing.T, dir string, mut func(*sinks.FileConfig)) *sinks.File {
	t.Helper()
	c := sinks.FileDefaults()
	c.Path = "out/nested/requests.jsonl"
	if mut != nil {
		mut(c)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	s, err := sinks.NewFile(c, pipeline.Env{Name: "audit", ConfigDir: dir})
	if err != nil {
		t.Fatalf("NewFile: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

func TestFileSinkLines(t *testing.T) {
	tests := []struct {
		name     string
		envelope bool
		want     []string
	}{
		{"bare bodies", false, []string{`{"id":"a","n":1}`, `{"id":"b","n":2}`}},
		{"envelope", true, []string{
			`{"sink":"audit","export_id":"e1","chunk":0,"chunks":2,"body":{"id":"a","n":1}}`,
			`{"sink":"audit","export_id":"e1","chunk":1,"chunks":2,"body":{"id":"b","n":2}}`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := newFileSink(t, dir, func(c *sinks.FileConfig) {
				c.Envelope = tt.envelope
				c.Body = `.items[] | {id, n}`
			})
			if s.Path() != filepath.Join(dir, "out/nested/requests.jsonl") {
				t.Fatalf("path %s is not relative to the config dir", s.Path())
			}
			payload := map[string]any{"items": []any{
				map[string]any{"id": "a", "n": 1, "x": true},
				map[string]any{"id": "b", "n": 2},
			}}
			bodies, err := s.Render(t.Context(), payload, nil)
			if err != nil || len(bodies) != 2 {
				t.Fatalf("Render = %d bodies, %v", len(bodies), err)
			}
			for i, b := range bodies {
				// Indented bodies are written compact, one per line.
				var pretty json.RawMessage = b
				indented, _ := json.MarshalIndent(pretty, "", "  ")
				r := &pipeline.Request{Sink: "audit", ExportID: "e1", Chunk: i, Chunks: len(bodies), Body: indented}
				if err := s.Send(t.Context(), r); err != nil {
					t.Fatal(err)
				}
			}
			got := readLines(t, s.Path())
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("lines\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestFileSinkConcurrentSends(t *testing.T) {
	s := newFileSink(t, t.TempDir(), nil)
	const n = 200
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			body := fmt.Sprintf(`{"i":%d,"pad":"%0100d"}`, i, i)
			if err := s.Send(t.Context(), &pipeline.Request{Sink: "audit", ExportID: "e", Chunk: i, Chunks: n, Body: []byte(body)}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	lines := readLines(t, s.Path())
	seen := map[int]bool{}
	for _, l := range lines {
		var v struct{ I int }
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Fatalf("interleaved line %q: %v", l, err)
		}
		seen[v.I] = true
	}
	if len(lines) != n || len(seen) != n {
		t.Fatalf("%d lines, %d distinct; want %d", len(lines), len(seen), n)
	}
}

func TestFileSinkAppendsAndCloses(t *testing.T) {
	dir := t.TempDir()
	first := newFileSink(t, dir, nil)
	if err := first.Send(t.Context(), request(`{"run":1}`)); err != nil {
		t.Fatal(err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if err := first.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	de := deliveryError(t, first.Send(t.Context(), request(`{"run":1}`)))
	if !de.Retry {
		t.Fatalf("Send after Close: %+v, want a retryable error", de)
	}
	second := newFileSink(t, dir, nil) // a restart appends, never truncates
	if err := second.Send(t.Context(), request(`{"run":2}`)); err != nil {
		t.Fatal(err)
	}
	if got := readLines(t, second.Path()); len(got) != 2 || got[0] != `{"run":1}` || got[1] != `{"run":2}` {
		t.Fatalf("lines %q", got)
	}
	bad := deliveryError(t, second.Send(t.Context(), request(`{not json`)))
	if bad.Retry {
		t.Fatalf("a body that is not JSON cannot get better: %+v", bad)
	}
}

func TestFileSinkDescribeAndValidate(t *testing.T) {
	s := newFileSink(t, t.TempDir(), func(c *sinks.FileConfig) { c.Envelope = true })
	d := s.Describe(request(`{"a": 1}`))
	body, _ := d["body"].(json.RawMessage)
	if d["method"] != "APPEND" || string(body) != `{"sink":"vendor","export_id":"exp1","chunk":0,"chunks":1,"body":{"a":1}}` {
		t.Fatalf("describe = %v (body %s)", d, body)
	}
	c := sinks.FileDefaults()
	c.Body = "."
	var fe *pipeline.FieldError
	if err := c.Validate(); !errors.As(err, &fe) || fe.Field != "path" {
		t.Fatalf("Validate without path = %v", err)
	}
}
