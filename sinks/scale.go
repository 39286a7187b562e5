package sinks

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/redact"
)

// ScaleConfig configures the scale preset. It creates one Scale AI task
// per issue element (Scale has no bulk create), whose attachment is the
// element's image and whose objects_to_annotate are the element's label
// classes (for a crop, only the class of the cropped label).
//
//   - name: scale
//     type: scale
//     api_key: ${SCALE_API_KEY}          # HTTP Basic, key as user, empty password
//     project: ${SCALE_PROJECT}
//
// unique_id, <export key>-<element id>, is the idempotency key: a repeat
// answers 409, which counts as delivered. A 429 pauses every request of
// the sink for its Retry-After, since Scale limits the API key. An
// element without an image or without labels (Scale refuses an empty
// objects_to_annotate) is not sent; it is logged and counted.
type ScaleConfig struct {
	// PresetConfig holds url (default https://api.scale.com; the preset
	// adds /v1/...), api_key and api_key_file.
	PresetConfig `yaml:",inline"`
	// Project is the Scale project the tasks belong to. Required.
	Project string `yaml:"project"`
	// Instruction is the task's instruction (Markdown); default a line
	// naming the Aquarium issue.
	Instruction string `yaml:"instruction"`
	// Batch, when set, puts each export's tasks in a batch of their own,
	// named <batch>-<issue id>-<export key>: created (idempotently) before
	// the first task, finalized once this replica delivered them all.
	Batch string `yaml:"batch"`
	// TaskType is the Scale task type: imageannotation (default, box
	// geometries) or segmentannotation (labels).
	TaskType string `yaml:"task_type"`
}

// ScaleDefaults returns the scale preset's defaults.
func ScaleDefaults() *ScaleConfig {
	return &ScaleConfig{PresetConfig: PresetConfig{URL: "https://api.scale.com"}, TaskType: "imageannotation"}
}

var scaleTaskTypes = []string{"imageannotation", "segmentannotation"}

// Validate reports every invalid option.
func (c *ScaleConfig) Validate() error {
	errs := []error{c.PresetConfig.Validate()}
	if strings.TrimSpace(c.Project) == "" {
		errs = append(errs, pipeline.FieldErr("project", "is required"))
	}
	if !slices.Contains(scaleTaskTypes, c.TaskType) {
		errs = append(errs, pipeline.FieldErr("task_type", "must be one of %s", strings.Join(scaleTaskTypes, ", ")))
	}
	if strings.Contains(c.Batch, "/") {
		errs = append(errs, pipeline.FieldErr("batch", "must not hold a /"))
	}
	return errors.Join(errs...)
}

// Scale is a built scale preset.
type Scale struct {
	*preset
	cfg ScaleConfig

	// mu guards batches and done (each batch's delivered tasks, by
	// chunk, until it is finalized).
	mu      sync.Mutex
	batches map[string]*scaleBatch
	done    map[string]map[int]bool
}

// scaleBatch is a batch this sink creates: the export's tasks wait for
// the one creating it rather than each asking Scale.
type scaleBatch struct {
	mu      sync.Mutex
	created bool
}

// NewScale builds a scale preset from a validated config.
func NewScale(c *ScaleConfig, env pipeline.Env) (*Scale, error) {
	p, err := newPreset("scale", &c.PresetConfig, env)
	if err != nil {
		return nil, err
	}
	return &Scale{preset: p, cfg: *c, batches: map[string]*scaleBatch{}, done: map[string]map[int]bool{}}, nil
}

// scaleTask is the body of one task.
type scaleTask struct {
	Project     string         `json:"project"`
	Batch       string         `json:"batch,omitempty"`
	Instruction string         `json:"instruction"`
	Attachment  string         `json:"attachment"`
	UniqueID    string         `json:"unique_id"`
	Geometries  map[string]any `json:"geometries,omitempty"`
	Labels      []string       `json:"labels,omitempty"`
	Metadata    map[string]any `json:"metadata"`
}

// Render is one task per element that has an image and labels.
func (s *Scale) Render(ctx context.Context, payload any, export map[string]any) ([][]byte, error) {
	iss, err := ReadIssue(payload)
	if err != nil {
		return nil, err
	}
	sk := s.skips(iss.ID)
	defer sk.flush(ctx)
	exportKey := cmp.Or(str(export["key"]), str(export["id"]))
	var batch string
	if s.cfg.Batch != "" {
		batch = fmt.Sprintf("%s-%s-%s", s.cfg.Batch, iss.ID, exportKey)
	}
	var out [][]byte
	for i := range iss.Elements {
		el := &iss.Elements[i]
		switch {
		case el.Image == "":
			sk.add(el, SkipNoImage)
			continue
		case len(el.Labels) == 0:
			sk.add(el, SkipNoLabels)
			continue
		}
		t := scaleTask{
			Project:     s.cfg.Project,
			Batch:       batch,
			Instruction: cmp.Or(s.cfg.Instruction, fmt.Sprintf("Relabel the objects flagged in Aquarium issue %s.", cmp.Or(el.IssueName, iss.ID))),
			Attachment:  el.Image,
			UniqueID:    exportKey + "-" + el.ID,
			Metadata: map[string]any{"aquarium_project": iss.Project, "issue_id": iss.ID, "dataset": el.Dataset,
				"frame_id": el.FrameID, "element_id": el.ID, "element_type": el.Type},
		}
		if s.cfg.TaskType == "segmentannotation" {
			t.Labels = el.Labels
		} else {
			t.Geometries = map[string]any{"box": map[string]any{"objects_to_annotate": el.Labels}}
		}
		var buf bytes.Buffer
		if err := encodeJSON(&buf, t); err != nil {
			return nil, err
		}
		out = append(out, buf.Bytes())
	}
	return out, nil
}

// Send makes one attempt: the batch first if it is not known to exist,
// then the task, then the batch's finalize once every task of the export
// is delivered.
func (s *Scale) Send(ctx context.Context, r *pipeline.Request) error {
	var t struct {
		Batch string `json:"batch"`
	}
	if err := json.Unmarshal(r.Body, &t); err != nil {
		return &pipeline.DeliveryError{Msg: fmt.Sprintf("scale: request body is not a task: %v", err)}
	}
	if t.Batch != "" {
		if err := s.ensureBatch(ctx, t.Batch); err != nil {
			return err
		}
	}
	if err := s.post(ctx, "/v1/task/"+s.cfg.TaskType, r.Body); err != nil {
		return err
	}
	if t.Batch != "" {
		return s.taskDone(ctx, t.Batch, r)
	}
	return nil
}

// ensureBatch creates the batch once; a 409 means it exists.
func (s *Scale) ensureBatch(ctx context.Context, name string) error {
	s.mu.Lock()
	b := s.batches[name]
	if b == nil {
		b = &scaleBatch{}
		s.batches[name] = b
	}
	s.mu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.created {
		return nil
	}
	var buf bytes.Buffer
	_ = encodeJSON(&buf, map[string]string{"project": s.cfg.Project, "name": name})
	if err := s.post(ctx, "/v1/batches", buf.Bytes()); err != nil {
		return err
	}
	b.created = true
	return nil
}

// taskDone counts r's task delivered and finalizes the batch when every
// task of the export is. A failed finalize fails the attempt, so that the
// retry (answered 409 for its task) finalizes again.
func (s *Scale) taskDone(ctx context.Context, batch string, r *pipeline.Request) error {
	s.mu.Lock()
	d := s.done[batch]
	if d == nil {
		d = map[int]bool{}
		s.done[batch] = d
	}
	d[r.Chunk] = true
	all := len(d) >= r.Chunks
	s.mu.Unlock()
	if !all {
		return nil
	}
	if err := s.post(ctx, "/v1/batches/"+batch+"/finalize", []byte("{}")); err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.done, batch)
	delete(s.batches, batch)
	s.mu.Unlock()
	return nil
}

// post sends one request; 2xx and 409 (the unique_id or batch exists) are
// success.
func (s *Scale) post(ctx context.Context, path string, body []byte) error {
	if err := s.hold(ctx); err != nil {
		return err
	}
	req, err := s.request(ctx, path, body)
	if err != nil {
		return &pipeline.DeliveryError{Msg: fmt.Sprintf("scale: build request: %v", redact.Error(err))}
	}
	resp, err := send(ctx, s.client, req, answerLimit)
	if err != nil {
		return err
	}
	if resp.status >= 200 && resp.status < 300 || resp.status == http.StatusConflict {
		return nil
	}
	return s.paceFrom(statusError(req, resp, retryableStatus(resp.status)))
}

func (s *Scale) request(ctx context.Context, path string, body []byte) (*http.Request, error) {
	req, err := s.newPost(ctx, path, body)
	if err == nil {
		req.SetBasicAuth(s.key, "")
	}
	return req, err
}

// Describe says what Send would do with r, the key redacted. With a
// batch, the batch is created first and finalized after the last task.
func (s *Scale) Describe(r *pipeline.Request) map[string]any {
	req, err := s.request(context.Background(), "/v1/task/"+s.cfg.TaskType, r.Body)
	return describeBuilt(req, err, r.Body)
}

var (
	_ pipeline.Sink      = (*Scale)(nil)
	_ pipeline.Describer = (*Scale)(nil)
	_ pipeline.Validator = (*ScaleConfig)(nil)
)
