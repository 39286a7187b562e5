package sinks

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/redact"
)

// LabelStudioConfig configures the label_studio preset. It imports an
// export's elements as tasks of a Label Studio project: one import per
// chunk of up to 1,000 tasks, each {data: {image}, meta: {Aquarium ids}}.
//
//   - name: label_studio
//     type: label_studio
//     url: https://label-studio.example.com   # required (self-hosted or cloud)
//     api_key: ${LABEL_STUDIO_TOKEN}          # Authorization: Token
//     project_id: 7
//
// Label Studio has no idempotency key: a retry after an attempt that
// timed out but did import creates the tasks again. The Aquarium ids in
// meta tell such copies apart. The 201's task_count is checked against
// the tasks sent. An element without an image is not sent; it is logged
// and counted.
type LabelStudioConfig struct {
	// PresetConfig holds url (required: no default host; the preset adds
	// /api/projects/<id>/import), api_key and api_key_file.
	PresetConfig `yaml:",inline"`
	// ProjectID is the Label Studio project's numeric id. Required.
	ProjectID string `yaml:"project_id"`
}

// LabelStudioDefaults returns the label_studio preset's defaults.
func LabelStudioDefaults() *LabelStudioConfig { return &LabelStudioConfig{} }

// Validate reports every invalid option.
func (c *LabelStudioConfig) Validate() error {
	errs := []error{c.PresetConfig.Validate()}
	errs = append(errs, numericProjectID(c.ProjectID))
	return errors.Join(errs...)
}

// Label Studio import limits: 250,000 tasks or 200 MB per request. The
// preset stays well below both, so that a retried import is small.
const (
	LabelStudioChunkTasks = 1000
	labelStudioChunkBytes = 32 << 20
)

// LabelStudio is a built label_studio preset.
type LabelStudio struct {
	*preset
	cfg LabelStudioConfig
}

// NewLabelStudio builds a label_studio preset from a validated config.
func NewLabelStudio(c *LabelStudioConfig, env pipeline.Env) (*LabelStudio, error) {
	p, err := newPreset("label_studio", &c.PresetConfig, env)
	if err != nil {
		return nil, err
	}
	return &LabelStudio{preset: p, cfg: *c}, nil
}

// Render is one import per chunk of tasks.
func (s *LabelStudio) Render(ctx context.Context, payload any, export map[string]any) ([][]byte, error) {
	iss, err := ReadIssue(payload)
	if err != nil {
		return nil, err
	}
	sk := s.skips(iss.ID)
	defer sk.flush(ctx)
	exportKey := cmp.Or(str(export["key"]), str(export["id"]))
	var out [][]byte
	var buf bytes.Buffer
	n := 0
	flush := func() {
		if n > 0 {
			buf.WriteByte(']')
			out = append(out, bytes.Clone(buf.Bytes()))
		}
		buf.Reset()
		n = 0
	}
	for i := range iss.Elements {
		el := &iss.Elements[i]
		if el.Image == "" {
			sk.add(el, SkipNoImage)
			continue
		}
		var task bytes.Buffer
		if err := encodeJSON(&task, map[string]any{
			"data": map[string]any{"image": el.Image},
			"meta": map[string]any{"aquarium_project": iss.Project, "issue_id": iss.ID, "export_id": str(export["id"]), "export_key": exportKey,
				"dataset": el.Dataset, "frame_id": el.FrameID, "element_id": el.ID, "element_type": el.Type},
		}); err != nil {
			return nil, err
		}
		if n == LabelStudioChunkTasks || (n > 0 && buf.Len()+task.Len()+2 > labelStudioChunkBytes) {
			flush()
		}
		if n == 0 {
			buf.WriteByte('[')
		} else {
			buf.WriteByte(',')
		}
		buf.Write(task.Bytes())
		n++
	}
	flush()
	return out, nil
}

// Send makes one attempt: one import, whose task_count must be the number
// of tasks sent.
func (s *LabelStudio) Send(ctx context.Context, r *pipeline.Request) error {
	var tasks []json.RawMessage
	if err := json.Unmarshal(r.Body, &tasks); err != nil {
		return &pipeline.DeliveryError{Msg: fmt.Sprintf("label_studio: request body is not a list of tasks: %v", err)}
	}
	if err := s.hold(ctx); err != nil {
		return err
	}
	req, err := s.request(ctx, r.Body)
	if err != nil {
		return &pipeline.DeliveryError{Msg: fmt.Sprintf("label_studio: build request: %v", redact.Error(err))}
	}
	resp, err := send(ctx, s.client, req, answerLimit)
	if err != nil {
		return err
	}
	if resp.status < 200 || resp.status >= 300 {
		return s.paceFrom(statusError(req, resp, retryableStatus(resp.status)))
	}
	var ans struct {
		TaskCount *int `json:"task_count"`
	}
	if json.Unmarshal(resp.body, &ans) != nil || ans.TaskCount == nil {
		// Imported or not, a retry could import twice: leave it to an
		// operator.
		return &pipeline.DeliveryError{Status: resp.status, Answer: answer(resp.body),
			Msg: fmt.Sprintf("POST %s: answer has no task_count; check the project before replaying", redact.URL(req.URL))}
	}
	if *ans.TaskCount != len(tasks) {
		return &pipeline.DeliveryError{Status: resp.status, Answer: answer(resp.body),
			Msg: fmt.Sprintf("POST %s: label studio imported %d of the %d tasks sent; check the project before replaying", redact.URL(req.URL), *ans.TaskCount, len(tasks))}
	}
	return nil
}

func (s *LabelStudio) request(ctx context.Context, body []byte) (*http.Request, error) {
	req, err := s.newPost(ctx, "/api/projects/"+strings.TrimSpace(s.cfg.ProjectID)+"/import", body)
	if err == nil {
		req.Header.Set("Authorization", "Token "+s.key)
	}
	return req, err
}

// Describe says what Send would do with r, the token redacted.
func (s *LabelStudio) Describe(r *pipeline.Request) map[string]any {
	req, err := s.request(context.Background(), r.Body)
	return describeBuilt(req, err, r.Body)
}

var (
	_ pipeline.Sink      = (*LabelStudio)(nil)
	_ pipeline.Describer = (*LabelStudio)(nil)
	_ pipeline.Validator = (*LabelStudioConfig)(nil)
)
