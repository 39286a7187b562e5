package pipeline_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/labelpipe/labelpipe/builtin"
	"github.com/labelpipe/labelpipe/configs"
	"github.com/labelpipe/labelpipe/pipeline"
)

// tagConfig configures the embedder's own "tag" stage type.
type tagConfig struct {
	// Field is the payload key the stage sets; default "source".
	Field string `yaml:"field"`
	// Value is what the key is set to. Required.
	Value string `yaml:"value"`
}

// Validate is pure; the loader points its errors at the line of the field.
func (c *tagConfig) Validate() error {
	if c.Value == "" {
		return pipeline.FieldErr("value", "is required")
	}
	return nil
}

// tagStage sets one field on every export's payload.
type tagStage struct{ cfg *tagConfig }

func (s tagStage) Process(_ context.Context, e *pipeline.Export) error {
	in, _ := e.Payload.(map[string]any)
	out := maps.Clone(in)
	out[s.cfg.Field] = s.cfg.Value
	// Replace the payload, never change it in place: an unchanged payload
	// is published as the raw body it came in.
	e.Payload = out
	return nil
}

// registerTag is all an embedder writes to add a stage type.
func registerTag(reg *pipeline.Registry) {
	reg.RegisterStage("tag", pipeline.NewStageType("sets one payload field on every export",
		func() *tagConfig { return &tagConfig{Field: "source"} },
		func(c *tagConfig, _ pipeline.Env) (pipeline.Stage, error) { return tagStage{c}, nil }))
}

// An embedder registers its own stage type next to the built-in ones and
// previews what a payload would turn into. Preview sends nothing.
func Example_customStage() {
	reg := builtin.Registry()
	registerTag(reg)

	cfg, err := pipeline.ParseConfig("embedded.yaml", []byte(`
server: {addr: ""}
admin: {addr: ""}
stages:
  - {type: schema, schema: issue-exported}
  - {type: tag, value: acme-embedded}
sinks:
  - name: crm
    type: http
    url: https://crm.example.com/hooks/relabel
    body: '{issue: .issue.id, frames: [.issue.elements[].frame_id], source}'
`), pipeline.ResolveWith(reg))
	if err != nil {
		fmt.Println(err)
		return
	}
	payload, _ := configs.Payloads.ReadFile("payloads/issue-frames.json")
	rep, err := pipeline.Preview(context.Background(), cfg, pipeline.Options{Registry: reg}, payload, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, s := range rep.Stages {
		fmt.Printf("stage %s: %s\n", s.Name, s.Verdict)
	}
	fmt.Println("answer:", rep.Answer.Status, rep.Answer.Body.Status)
	for _, s := range rep.Sinks {
		for _, r := range s.Requests {
			body, _ := json.Marshal(r["body"])
			fmt.Println(s.Name, r["method"], r["url"], string(body))
		}
	}
	// Output:
	// stage schema: passed
	// stage tag: passed
	// answer: 202 accepted
	// crm POST https://crm.example.com/hooks/relabel {"frames":["frame_000481","frame_000482","frame_000517"],"issue":"issue_7f3c2a9e","source":"acme-embedded"}
}

// An embedder mounts the webhook in its own server. Cancelling Run's
// context drains: the export is delivered before Run returns.
func ExamplePipeline_Handler() {
	dir, err := os.MkdirTemp("", "labelpipe-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	reg := builtin.Registry()
	registerTag(reg)
	cfg, err := pipeline.ParseConfig(filepath.Join(dir, "embedded.yaml"), []byte(`
server: {addr: ""}   # the host serves the handler
admin: {addr: ""}
stages:
  - {type: tag, field: tagged_by, value: host-app}
sinks:
  - name: audit
    type: file
    path: audit.jsonl
    body: '{issue: .issue.id, elements: (.issue.elements | length), tagged_by}'
`), pipeline.ResolveWith(reg))
	if err != nil {
		fmt.Println(err)
		return
	}
	p, err := pipeline.New(cfg, pipeline.Options{Registry: reg})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	for deadline := time.Now().Add(5 * time.Second); p.Ready(ctx) != nil && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond) // the handler answers 503 until the router runs
	}

	mux := http.NewServeMux()
	mux.Handle("POST /hooks/aquarium", p.Handler())
	payload, _ := configs.Payloads.ReadFile("payloads/issue-crops.json")
	req := httptest.NewRequest(http.MethodPost, "/hooks/aquarium", strings.NewReader(string(payload)))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, req)
	var answer struct{ Status string }
	_ = json.Unmarshal(rec.Body.Bytes(), &answer)
	fmt.Println(rec.Code, answer.Status)

	stop()
	if err := <-done; err != nil {
		fmt.Println(err)
	}
	out, _ := os.ReadFile(filepath.Join(dir, "audit.jsonl"))
	fmt.Print(string(out))
	// Output:
	// 202 accepted
	// {"elements":2,"issue":"issue_b51e0d44","tagged_by":"host-app"}
}
