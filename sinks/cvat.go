package sinks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/redact"
)

// CVATConfig configures the cvat preset. It makes one CVAT task per export
// (per chunk of CVATChunkFiles images) in a project, with the elements'
// images as its remote files:
//
//   - name: cvat
//     type: cvat
//     url: https://app.cvat.ai           # default; the preset adds /api/...
//     api_key: ${CVAT_TOKEN}             # Authorization: Bearer
//     project_id: 3
//
// A delivery is three steps, each checkpointed in the request's delivery
// record (pipeline.Request.SaveStep), so that a retry or a restart resumes
// after the last one done and never makes a second task:
//
//  1. the task, POST /api/tasks {name, project_id}. Its name is
//     deterministic, "aquarium <idempotency key>", and is looked up first
//     (GET /api/tasks?name=), which covers a crash after CVAT's 201 and
//     before the checkpoint;
//  2. the data, POST /api/tasks/{id}/data/ {image_quality, remote_files},
//     202 with the import's rq_id. Unless the task was made by this very
//     attempt, the task's imports are looked up first (GET
//     /api/requests?task_id=), which covers an attach that timed out at
//     the client but reached CVAT;
//  3. the import, followed (GET /api/requests/{rq_id}) until it finished
//     or failed. A failed import is not retried: it goes to the DLQ with
//     CVAT's reason. A replay of that dead letter deletes the task (CVAT
//     takes a task's data once) and starts over. An import still running
//     when the attempt ends is followed by the next attempt, which spends
//     no retry budget (DeliveryError.InProgress), up to cvatFollowLimit.
//
// An element without an image (lidar only) is not sent; it is logged and
// counted. Images several elements share (a frame and its crops) are sent
// once.
type CVATConfig struct {
	// PresetConfig holds url (default https://app.cvat.ai; the preset adds
	// /api/...), api_key (a Bearer token) and api_key_file.
	PresetConfig `yaml:",inline"`
	// ProjectID is the CVAT project's numeric id; the tasks take its
	// labels. Required.
	ProjectID string `yaml:"project_id"`
	// Organization is the organization's slug, sent as X-Organization;
	// empty for the personal workspace.
	Organization string `yaml:"organization"`
	// ImageQuality is the quality (1-100) CVAT compresses the images to
	// for annotation; default 70, CVAT's own.
	ImageQuality int `yaml:"image_quality"`
}

// CVATDefaults returns the cvat preset's defaults.
func CVATDefaults() *CVATConfig {
	return &CVATConfig{PresetConfig: PresetConfig{URL: "https://app.cvat.ai"}, ImageQuality: 70}
}

// Validate reports every invalid option.
func (c *CVATConfig) Validate() error {
	errs := []error{c.PresetConfig.Validate()}
	errs = append(errs, numericProjectID(c.ProjectID))
	if c.ImageQuality < 1 || c.ImageQuality > 100 {
		errs = append(errs, pipeline.FieldErr("image_quality", "must be between 1 and 100"))
	}
	if strings.ContainsAny(c.Organization, "\r\n\x00") {
		errs = append(errs, pipeline.FieldErr("organization", "holds a line break or NUL"))
	}
	return errors.Join(errs...)
}

// CVATChunkFiles is how many images one task gets at most; a larger
// export makes several tasks. CVAT documents no limit on remote_files;
// a task this size still imports in minutes.
const CVATChunkFiles = 10_000

// The steps a delivery checkpoints (pipeline.Request.SaveStep).
const (
	// cvatStepTask is the task's id.
	cvatStepTask = "cvat.task_id"
	// cvatStepImport is the import's rq_id; "" when it must be attached
	// again (CVAT forgot a request whose task got no data).
	cvatStepImport = "cvat.rq_id"
	// cvatStepSince is when the import was first followed (Unix
	// milliseconds), for cvatFollowLimit.
	cvatStepSince = "cvat.import_since"
	// cvatStepFailed is the rq_id of an import that failed. Such a request
	// went to the DLQ; a replay finds it set and starts over: the task,
	// whose data cannot be attached again, is deleted and made anew.
	cvatStepFailed = "cvat.failed_rq_id"
)

// Polling an import: the first status read comes soon (a small task
// imports in a second), then the wait doubles up to cvatPollMax.
const (
	cvatPollMin = 50 * time.Millisecond
	cvatPollMax = 2 * time.Second
	// cvatFollowLimit bounds how long an import is followed across
	// attempts: an attempt that ends while it runs spends no retry budget
	// (DeliveryError.InProgress), so this is what ends a stuck one.
	cvatFollowLimit = 6 * time.Hour
	// cvatListPages bounds a lookup's pages (100 results each), and
	// cvatListBytes one page's answer (a task is about 2 KiB of JSON).
	cvatListPages = 20
	cvatListBytes = 4 << 20
)

// CVAT is a built cvat preset.
type CVAT struct {
	*preset
	cfg CVATConfig
	// project is project_id as the JSON the task's body holds: a number,
	// or for a preview of an unset ${VAR}, the text.
	project any
}

// NewCVAT builds a cvat preset from a validated config.
func NewCVAT(c *CVATConfig, env pipeline.Env) (*CVAT, error) {
	p, err := newPreset("cvat", &c.PresetConfig, env)
	if err != nil {
		return nil, err
	}
	s := &CVAT{preset: p, cfg: *c, project: strings.TrimSpace(c.ProjectID)}
	if n, err := strconv.Atoi(strings.TrimSpace(c.ProjectID)); err == nil {
		s.project = n
	}
	return s, nil
}

// Render is one task's data per chunk of images: the body of step 2,
// {image_quality, remote_files}.
func (s *CVAT) Render(ctx context.Context, payload any, _ map[string]any) ([][]byte, error) {
	iss, err := ReadIssue(payload)
	if err != nil {
		return nil, err
	}
	sk := s.skips(iss.ID)
	defer sk.flush(ctx)
	var files []string
	seen := map[string]bool{}
	for i := range iss.Elements {
		el := &iss.Elements[i]
		if el.Image == "" {
			sk.add(el, SkipNoImage)
			continue
		}
		if !seen[el.Image] {
			seen[el.Image] = true
			files = append(files, el.Image)
		}
	}
	var out [][]byte
	for start := 0; start < len(files); start += CVATChunkFiles {
		var buf bytes.Buffer
		if err := encodeJSON(&buf, map[string]any{"image_quality": s.cfg.ImageQuality,
			"remote_files": files[start:min(start+CVATChunkFiles, len(files))]}); err != nil {
			return nil, err
		}
		out = append(out, buf.Bytes())
	}
	return out, nil
}

// TaskName is the task's name for a request: the same for every attempt,
// redelivery and replica, so that it finds a task made before a crash.
func (s *CVAT) TaskName(r *pipeline.Request) string { return "aquarium " + r.IdempotencyKey() }

// Send makes one attempt, resuming after the last step a previous one
// checkpointed.
func (s *CVAT) Send(ctx context.Context, r *pipeline.Request) error {
	var remote struct {
		Files []string `json:"remote_files"`
	}
	if err := json.Unmarshal(r.Body, &remote); err != nil || len(remote.Files) == 0 {
		return &pipeline.DeliveryError{Msg: "cvat: request body has no remote_files"}
	}
	if err := s.hold(ctx); err != nil {
		return err
	}
	if failed, _ := r.Step(cvatStepFailed); failed != "" {
		if err := s.startOver(ctx, r); err != nil {
			return s.paceFrom(err)
		}
	}
	task, _ := r.Step(cvatStepTask)
	made := false
	if task == "" {
		name := s.TaskName(r)
		id, err := s.findTask(ctx, name)
		if err != nil {
			return s.paceFrom(err)
		}
		if id == "" {
			if id, err = s.createTask(ctx, name); err != nil {
				return s.paceFrom(err)
			}
			made = true
		}
		task = id
		s.checkpoint(ctx, r, cvatStepTask, task)
	}
	rq, ok := r.Step(cvatStepImport)
	if !ok || rq == "" {
		var err error
		if !made {
			// An attempt that timed out, or a process that stopped,
			// may have attached the data already.
			if rq, err = s.findImport(ctx, task); err != nil {
				return s.paceFrom(err)
			}
		}
		if rq == "" {
			if rq, err = s.attach(ctx, task, r.Body); err != nil {
				return s.paceFrom(err)
			}
		}
		s.checkpoint(ctx, r, cvatStepImport, rq)
	}
	since, err := strconv.ParseInt(stepOr(r, cvatStepSince, ""), 10, 64)
	if err != nil {
		since = time.Now().UnixMilli()
		s.checkpoint(ctx, r, cvatStepSince, strconv.FormatInt(since, 10))
	}
	return s.paceFrom(s.follow(ctx, r, task, rq, time.UnixMilli(since)))
}

// startOver deletes the task of an import that failed, so that a replay
// makes a fresh one under the same name. The checkpoints are cleared in
// the order that keeps a crash in between safe: the task (a lookup no
// longer finds it), then the import, then the failure.
func (s *CVAT) startOver(ctx context.Context, r *pipeline.Request) error {
	if task, _ := r.Step(cvatStepTask); task != "" {
		resp, req, err := s.do(ctx, http.MethodDelete, s.endpoint("/api/tasks/"+task), nil)
		if err != nil {
			return err
		}
		if resp.status != http.StatusNoContent && resp.status != http.StatusOK && resp.status != http.StatusNotFound {
			return statusError(req, resp, retryableStatus(resp.status))
		}
		s.log.InfoContext(ctx, "replaying a failed CVAT import: deleted its task to make it anew", "task", task)
	}
	for _, step := range []string{cvatStepTask, cvatStepImport, cvatStepSince, cvatStepFailed} {
		s.checkpoint(ctx, r, step, "")
	}
	return nil
}

// stepOr is r's step name, or def when it was never saved.
func stepOr(r *pipeline.Request, name, def string) string {
	if v, ok := r.Step(name); ok {
		return v
	}
	return def
}

// checkpoint saves a step. A ledger that fails costs only a lookup after
// a restart (by name, by task), so the delivery goes on.
func (s *CVAT) checkpoint(ctx context.Context, r *pipeline.Request, step, value string) {
	if err := r.SaveStep(ctx, step, value); err != nil {
		s.log.WarnContext(ctx, "could not checkpoint a step; a restart will look it up at the vendor", "step", step, "err", err)
	}
}

// findTask looks the task up by its name in the project: its id, or ""
// when there is none. CVAT's name filter matches substrings, so names are
// compared here; of several exact matches the oldest is taken.
func (s *CVAT) findTask(ctx context.Context, name string) (string, error) {
	q := url.Values{"name": {name}, "project_id": {fmt.Sprint(s.project)}}
	var found string
	err := s.list(ctx, "/api/tasks", q, func(raw json.RawMessage) {
		var t struct {
			ID        json.Number `json:"id"`
			Name      string      `json:"name"`
			ProjectID json.Number `json:"project_id"`
		}
		if json.Unmarshal(raw, &t) == nil && t.Name == name && t.ID != "" && t.ProjectID.String() == fmt.Sprint(s.project) {
			if found == "" || lessID(t.ID.String(), found) {
				found = t.ID.String()
			}
		}
	})
	return found, err
}

// findImport returns the rq_id of the task's data import, "" when the
// data was never attached.
func (s *CVAT) findImport(ctx context.Context, task string) (string, error) {
	var found string
	err := s.list(ctx, "/api/requests", url.Values{"task_id": {task}, "action": {"create"}}, func(raw json.RawMessage) {
		var rq struct {
			ID        string `json:"id"`
			Operation struct {
				Type   string      `json:"type"`
				TaskID json.Number `json:"task_id"`
			} `json:"operation"`
		}
		if json.Unmarshal(raw, &rq) == nil && rq.ID != "" && rq.Operation.TaskID.String() == task &&
			(rq.Operation.Type == "" || rq.Operation.Type == "create:task") {
			found = rq.ID
		}
	})
	return found, err
}

func lessID(a, b string) bool {
	x, _ := strconv.Atoi(a)
	y, _ := strconv.Atoi(b)
	return x < y
}

// list reads a paginated list ({count, next, results}), up to
// cvatListPages pages, calling each for every result. The pages are
// asked of the configured url, not of `next` (which names the host CVAT
// believes it has, not a proxy's).
func (s *CVAT) list(ctx context.Context, path string, q url.Values, each func(json.RawMessage)) error {
	q.Set("page_size", "100")
	for page := 1; page <= cvatListPages; page++ {
		q.Set("page", strconv.Itoa(page))
		u := s.endpoint(path)
		u.RawQuery = q.Encode()
		resp, req, err := s.doLimit(ctx, http.MethodGet, u, nil, cvatListBytes)
		if err != nil {
			return err
		}
		if resp.status != http.StatusOK {
			return statusError(req, resp, retryableStatus(resp.status))
		}
		var ans struct {
			Next    *string           `json:"next"`
			Results []json.RawMessage `json:"results"`
		}
		if err := json.Unmarshal(resp.body, &ans); err != nil {
			return deliveryError(resp, true, fmt.Sprintf("GET %s: answer is not a CVAT list: %v", redact.URL(u), err))
		}
		for _, r := range ans.Results {
			each(r)
		}
		if ans.Next == nil || *ans.Next == "" {
			return nil
		}
	}
	return nil
}

// createTask makes the task; its id.
func (s *CVAT) createTask(ctx context.Context, name string) (string, error) {
	resp, req, err := s.do(ctx, http.MethodPost, s.endpoint("/api/tasks"), s.taskBody(name))
	if err != nil {
		return "", err
	}
	if resp.status != http.StatusCreated && resp.status != http.StatusOK {
		return "", statusError(req, resp, retryableStatus(resp.status))
	}
	var t struct {
		ID json.Number `json:"id"`
	}
	if json.Unmarshal(resp.body, &t) != nil || t.ID == "" {
		// The task may exist: the next attempt looks it up by name.
		return "", deliveryError(resp, true, fmt.Sprintf("POST %s: answer has no task id", redact.URL(req.URL)))
	}
	return t.ID.String(), nil
}

func (s *CVAT) taskBody(name string) []byte {
	var buf bytes.Buffer
	_ = encodeJSON(&buf, map[string]any{"name": name, "project_id": s.project})
	return buf.Bytes()
}

// attach starts the import of the task's data; its rq_id. A task that
// has its data already (an earlier attach the lookup did not see) is
// followed rather than refused.
func (s *CVAT) attach(ctx context.Context, task string, body []byte) (string, error) {
	resp, req, err := s.do(ctx, http.MethodPost, s.endpoint("/api/tasks/"+task+"/data/"), body)
	if err != nil {
		return "", err
	}
	if resp.status == http.StatusBadRequest && bytes.Contains(resp.body, []byte("more data")) {
		if rq, err := s.findImport(ctx, task); err != nil || rq != "" {
			return rq, err
		}
	}
	if resp.status != http.StatusAccepted && resp.status != http.StatusOK && resp.status != http.StatusCreated {
		return "", statusError(req, resp, retryableStatus(resp.status))
	}
	var ans struct {
		RQ string `json:"rq_id"`
	}
	if json.Unmarshal(resp.body, &ans) != nil || ans.RQ == "" {
		return "", deliveryError(resp, true, fmt.Sprintf("POST %s: answer has no rq_id", redact.URL(req.URL)))
	}
	return ans.RQ, nil
}

// follow reads the import's status until it finished or failed, or the
// attempt ends.
func (s *CVAT) follow(ctx context.Context, r *pipeline.Request, task, rq string, since time.Time) error {
	wait := cvatPollMin
	var t *time.Timer
	for {
		u := s.endpoint("/api/requests/" + rq)
		resp, req, err := s.do(ctx, http.MethodGet, u, nil)
		if err != nil {
			return err
		}
		switch resp.status {
		case http.StatusOK:
		case http.StatusNotFound:
			return s.lostImport(ctx, r, task, rq)
		default:
			return statusError(req, resp, retryableStatus(resp.status))
		}
		var st struct {
			Status  string `json:"status"`
			Message string `json:"message"`
		}
		if err := json.Unmarshal(resp.body, &st); err != nil {
			return deliveryError(resp, true, fmt.Sprintf("GET %s: answer is not a request status: %v", redact.URL(u), err))
		}
		switch st.Status {
		case "finished":
			return nil
		case "failed":
			reason := strings.TrimSpace(st.Message)
			if reason == "" {
				reason = "no reason given"
			}
			s.checkpoint(ctx, r, cvatStepFailed, rq)
			return deliveryError(resp, false, fmt.Sprintf("cvat: import into task %s failed: %s", task, clip(reason, 500)))
		case "queued", "started":
		default:
			return deliveryError(resp, true, fmt.Sprintf("GET %s: unknown import status %q", redact.URL(u), st.Status))
		}
		if t == nil {
			t = time.NewTimer(wait)
			defer t.Stop()
		} else {
			t.Reset(wait)
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			if d := time.Since(since); d > cvatFollowLimit {
				return &pipeline.DeliveryError{Status: resp.status, Answer: answer(resp.body),
					Msg: fmt.Sprintf("cvat: import into task %s still %s after %s; check the task in CVAT before replaying", task, st.Status, d.Round(time.Minute))}
			}
			// Not a failure: the next attempt follows it, spending no
			// retry budget.
			return &pipeline.DeliveryError{Retry: true, InProgress: true, After: cvatPollMax,
				Msg: fmt.Sprintf("cvat: import into task %s still %s when the attempt ended; the next attempt follows it", task, st.Status)}
		}
		wait = min(2*wait, cvatPollMax)
	}
}

// lostImport handles an rq_id CVAT no longer knows (it drops finished
// requests after a while): a task with data was imported; one without is
// attached again by the next attempt.
func (s *CVAT) lostImport(ctx context.Context, r *pipeline.Request, task, rq string) error {
	resp, req, err := s.do(ctx, http.MethodGet, s.endpoint("/api/tasks/"+task), nil)
	if err != nil {
		return err
	}
	if resp.status != http.StatusOK {
		return statusError(req, resp, retryableStatus(resp.status))
	}
	var t struct {
		Size int `json:"size"`
	}
	if json.Unmarshal(resp.body, &t) == nil && t.Size > 0 {
		return nil
	}
	s.checkpoint(ctx, r, cvatStepImport, "")
	return &pipeline.DeliveryError{Retry: true, Msg: fmt.Sprintf("cvat: import %s of task %s is gone and the task has no data; attaching again", rq, task)}
}

// do sends one request and reads the answer.
func (s *CVAT) do(ctx context.Context, method string, u *url.URL, body []byte) (*response, *http.Request, error) {
	return s.doLimit(ctx, method, u, body, answerLimit)
}

// doLimit is do reading up to limit bytes of the answer.
func (s *CVAT) doLimit(ctx context.Context, method string, u *url.URL, body []byte, limit int64) (*response, *http.Request, error) {
	req, err := s.request(ctx, method, u, body)
	if err != nil {
		return nil, nil, &pipeline.DeliveryError{Msg: fmt.Sprintf("cvat: build request: %v", redact.Error(err))}
	}
	resp, err := send(ctx, s.client, req, limit)
	if err != nil {
		return nil, nil, err
	}
	return resp, req, nil
}

func (s *CVAT) request(ctx context.Context, method string, u *url.URL, body []byte) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return nil, err
	}
	setHeaders(req, nil)
	if body == nil {
		req.Header.Del("Content-Type")
	}
	req.Header.Set("Authorization", "Bearer "+s.key)
	if s.cfg.Organization != "" {
		req.Header.Set("X-Organization", s.cfg.Organization)
	}
	return req, nil
}

// Describe says what Send does with r on its first attempt, the token
// redacted: the request carrying r's rendered body is the attach; the
// task lookup and create come "before" it, the status reads "then".
func (s *CVAT) Describe(r *pipeline.Request) map[string]any {
	ctx := context.Background()
	name := s.TaskName(r)
	q := url.Values{"name": {name}, "project_id": {fmt.Sprint(s.project)}, "page_size": {"100"}, "page": {"1"}}
	lookup := s.endpoint("/api/tasks")
	lookup.RawQuery = q.Encode()
	steps := []struct {
		method string
		u      *url.URL
		body   []byte
	}{
		{http.MethodGet, lookup, nil},
		{http.MethodPost, s.endpoint("/api/tasks"), s.taskBody(name)},
		{http.MethodPost, s.endpoint("/api/tasks/{id}/data/"), r.Body},
		{http.MethodGet, s.endpoint("/api/requests/{rq_id}"), nil},
	}
	var out []map[string]any
	for _, st := range steps {
		req, err := s.request(ctx, st.method, st.u, st.body)
		if err != nil {
			return map[string]any{"error": err.Error()}
		}
		d := describe(req, st.body)
		if st.body == nil {
			delete(d, "body")
		}
		d["url"] = queryEnvRef.ReplaceAllString(placeholders.Replace(d["url"].(string)), "$${$1}")
		out = append(out, d)
	}
	attach := out[2]
	attach["task_name"] = name
	attach["before"] = out[:2]
	attach["then"] = out[3:]
	return attach
}

// placeholders shows the ids a preview cannot know as {id} and {rq_id},
// and queryEnvRef a ${VAR} the preview left unset in a query as written.
var (
	placeholders = strings.NewReplacer("%7Bid%7D", "{id}", "%7Brq_id%7D", "{rq_id}")
	queryEnvRef  = regexp.MustCompile(`%24%7B([A-Za-z_][A-Za-z0-9_]*)%7D`)
)

var (
	_ pipeline.Sink      = (*CVAT)(nil)
	_ pipeline.Describer = (*CVAT)(nil)
	_ pipeline.Validator = (*CVATConfig)(nil)
)
