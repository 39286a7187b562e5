package sinks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/labelpipe/labelpipe/pipeline"
)

// FileConfig configures the file sink. It appends one line per request to
// a file: the compact JSON body a vendor would receive. It is for trying a
// pipeline out, for tests, and for tools that tail a JSON-lines file.
//
//   - name: audit
//     type: file
//     path: out/requests.jsonl   # relative to the config file
//     envelope: true
type FileConfig struct {
	// Path is the file to append to, relative to the config file's
	// directory; missing parent directories are created. Required.
	Path string `yaml:"path"`
	// Body is a jq program; each value it yields is one line. Default `.`.
	Body string `yaml:"body"`
	// Envelope writes {"sink","export_id","chunk","chunks","body"} per line
	// instead of the bare body, so lines can be traced to their export.
	// Default false.
	Envelope bool `yaml:"envelope"`
}

// FileDefaults returns the file sink's defaults.
func FileDefaults() *FileConfig {
	return &FileConfig{Body: "."}
}

// Validate reports every invalid option.
func (c *FileConfig) Validate() error {
	var errs []error
	if c.Path == "" {
		errs = append(errs, pipeline.FieldErr("path", "is required"))
	}
	if _, err := pipeline.CompileJQ(c.Body); err != nil {
		errs = append(errs, pipeline.FieldErr("body", "%v", err))
	}
	return errors.Join(errs...)
}

// File is a built file sink.
type File struct {
	cfg  FileConfig
	path string
	body *pipeline.JQ

	mu sync.Mutex
	f  *os.File // nil once closed
}

// NewFile opens (creating) the file for appending.
func NewFile(c *FileConfig, env pipeline.Env) (*File, error) {
	body, err := pipeline.CompileJQ(c.Body)
	if err != nil {
		return nil, fmt.Errorf("body: %w", err)
	}
	path := env.Path(c.Path)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("file sink: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("file sink: %w", err)
	}
	return &File{cfg: *c, path: path, body: body, f: f}, nil
}

// Path is the file the sink appends to.
func (s *File) Path() string { return s.path }

// Render runs the body program: one line per value.
func (s *File) Render(ctx context.Context, payload any, export map[string]any) ([][]byte, error) {
	return s.body.JSON(ctx, payload, export)
}

// Send appends r as one line. A line is written with one write call on an
// O_APPEND file, so concurrent senders never interleave.
func (s *File) Send(ctx context.Context, r *pipeline.Request) error {
	if err := ctx.Err(); err != nil {
		return &pipeline.DeliveryError{Retry: true, Msg: fmt.Sprintf("append to %s: %v", s.path, err)}
	}
	line, err := s.line(r)
	if err != nil {
		return &pipeline.DeliveryError{Msg: fmt.Sprintf("append to %s: %v", s.path, err)}
	}
	line = append(line, '\n')
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return &pipeline.DeliveryError{Retry: true, Msg: fmt.Sprintf("append to %s: sink is closed", s.path)}
	}
	if _, err := s.f.Write(line); err != nil {
		return &pipeline.DeliveryError{Retry: true, Msg: fmt.Sprintf("append to %s: %v", s.path, err)}
	}
	return nil
}

// line is what Send writes for r, without the newline.
func (s *File) line(r *pipeline.Request) ([]byte, error) {
	var body bytes.Buffer
	if err := json.Compact(&body, r.Body); err != nil {
		return nil, fmt.Errorf("body is not JSON: %w", err)
	}
	if !s.cfg.Envelope {
		return body.Bytes(), nil
	}
	var buf bytes.Buffer
	err := encodeJSON(&buf, struct {
		Sink     string          `json:"sink"`
		ExportID string          `json:"export_id"`
		Chunk    int             `json:"chunk"`
		Chunks   int             `json:"chunks"`
		Body     json.RawMessage `json:"body"`
	}{r.Sink, r.ExportID, r.Chunk, r.Chunks, body.Bytes()})
	return buf.Bytes(), err
}

// Describe says what Send would append.
func (s *File) Describe(r *pipeline.Request) map[string]any {
	line, err := s.line(r)
	if err != nil {
		return map[string]any{"error": err.Error()}
	}
	return map[string]any{
		"method":  "APPEND",
		"url":     "file://" + filepath.ToSlash(s.path),
		"headers": map[string]string{},
		"body":    describeBody(line),
	}
}

// Close flushes and closes the file. It is safe to call twice.
func (s *File) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	f := s.f
	s.f = nil
	return errors.Join(f.Sync(), f.Close())
}

var (
	_ pipeline.Sink      = (*File)(nil)
	_ pipeline.Describer = (*File)(nil)
	_ pipeline.Closer    = (*File)(nil)
)
