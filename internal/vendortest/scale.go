package vendortest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Scale fakes Scale AI's REST API (base URL + /v1): HTTP Basic auth with
// the API key as the user and an empty password;
// POST /v1/task/imageannotation (one task per request; unique_id is the
// idempotency key and a repeat answers 409); POST /v1/batches and
// POST /v1/batches/{name}/finalize. Errors are
// {"status_code": n, "error": "..."}.
type Scale struct {
	*Server
	apiKey string

	mu      sync.Mutex
	tasks   []ScaleTask
	byUID   map[string]int // unique_id -> index in tasks
	batches map[string]*ScaleBatch
	order   []string // batch names in creation order
	// strictBatches: a task must name a batch that exists and is not
	// finalized, as Scale requires.
	strictBatches bool
}

// ScaleTask is a task the fake created.
type ScaleTask struct {
	TaskID      string
	Project     string
	Batch       string
	Instruction string
	Attachment  string
	UniqueID    string
	Geometries  map[string]any
	Metadata    map[string]any
}

// ScaleBatch is a batch the fake created.
type ScaleBatch struct {
	Name, Project string
	Finalized     bool
}

// scaleGeometries are the annotation types an imageannotation task takes.
var scaleGeometries = []string{"box", "polygon", "line", "point", "cuboid", "ellipse"}

// NewScale starts a fake Scale that accepts apiKey. With tb set it is
// closed when the test ends.
func NewScale(tb testing.TB, apiKey string) *Scale {
	s := &Scale{apiKey: apiKey, byUID: map[string]int{}, batches: map[string]*ScaleBatch{}}
	s.Server = newServer(tb, s.handle, func(status int) any { return scaleError(status, http.StatusText(status)) }, scaleKeys)
	return s
}

// scaleKeys is a task request's unique_id, the key Scale counts it by.
func scaleKeys(r *http.Request, body []byte) []string {
	if r.URL.Path != "/v1/task/imageannotation" {
		return nil
	}
	obj, err := jsonObject(body)
	if err != nil {
		return nil
	}
	if uid, ok := obj["unique_id"].(string); ok && uid != "" {
		return []string{uid}
	}
	return nil
}

// TaskURL is the URL to create image annotation tasks at.
func (s *Scale) TaskURL() string { return s.URL + "/v1/task/imageannotation" }

// Tasks returns the tasks created, in order.
func (s *Scale) Tasks() []ScaleTask {
	defer s.settled()()
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]ScaleTask(nil), s.tasks...)
}

// RequireBatches makes a task that names a batch fail with 400 unless the
// batch exists and is not finalized, as Scale does. Off by default, so
// that tests of tasks alone need not create batches.
func (s *Scale) RequireBatches() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.strictBatches = true
}

// Batches returns the batches created, in order.
func (s *Scale) Batches() []ScaleBatch {
	defer s.settled()()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ScaleBatch, len(s.order))
	for i, n := range s.order {
		out[i] = *s.batches[n]
	}
	return out
}

func scaleError(status int, msg string) map[string]any {
	return map[string]any{"status_code": status, "error": msg}
}

func scaleReject(status int, format string, args ...any) reply {
	return reply{status: status, body: scaleError(status, fmt.Sprintf(format, args...)), outcome: Rejected}
}

func (s *Scale) handle(r *http.Request, body []byte) reply {
	user, pass, ok := r.BasicAuth()
	if !ok || user != s.apiKey || pass != "" || s.apiKey == "" {
		return scaleReject(http.StatusUnauthorized, "Please provide a valid API key: HTTP Basic auth with the key as the username and an empty password.")
	}
	path := r.URL.Path
	switch {
	case path == "/v1/task/imageannotation":
		if r.Method != http.MethodPost {
			return scaleReject(http.StatusMethodNotAllowed, "Method %s not allowed.", r.Method)
		}
		return s.createTask(body)
	case path == "/v1/batches":
		if r.Method != http.MethodPost {
			return scaleReject(http.StatusMethodNotAllowed, "Method %s not allowed.", r.Method)
		}
		return s.createBatch(body)
	case strings.HasPrefix(path, "/v1/batches/") && strings.HasSuffix(path, "/finalize"):
		if r.Method != http.MethodPost {
			return scaleReject(http.StatusMethodNotAllowed, "Method %s not allowed.", r.Method)
		}
		name, err := url.PathUnescape(strings.TrimSuffix(strings.TrimPrefix(r.URL.EscapedPath(), "/v1/batches/"), "/finalize"))
		if err != nil || name == "" || strings.Contains(name, "/") {
			return scaleReject(http.StatusNotFound, "Not found.")
		}
		return s.finalize(name)
	default:
		return scaleReject(http.StatusNotFound, "Not found.")
	}
}

// jsonObject decodes a request body that must be a JSON object.
func jsonObject(body []byte) (map[string]any, error) {
	var obj map[string]any
	if err := json.Unmarshal(body, &obj); err != nil {
		return nil, fmt.Errorf("body is not a JSON object: %v", err)
	}
	if obj == nil {
		return nil, fmt.Errorf("body is not a JSON object")
	}
	return obj, nil
}

func (s *Scale) createTask(body []byte) reply {
	obj, err := jsonObject(body)
	if err != nil {
		return scaleReject(http.StatusBadRequest, "%v", err)
	}
	var problems []string
	str := func(k string, required bool) string {
		v, present := obj[k]
		str, isStr := v.(string)
		switch {
		case !present || v == nil:
			if required {
				problems = append(problems, fmt.Sprintf("%s is required", k))
			}
		case !isStr:
			problems = append(problems, fmt.Sprintf("%s must be a string", k))
		case required && strings.TrimSpace(str) == "":
			problems = append(problems, fmt.Sprintf("%s must not be empty", k))
		}
		return str
	}
	t := ScaleTask{
		Project:     str("project", true),
		Batch:       str("batch", false),
		Instruction: str("instruction", false),
		Attachment:  str("attachment", true),
		UniqueID:    str("unique_id", true),
	}
	if t.Attachment != "" {
		if u, err := url.Parse(t.Attachment); err != nil || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "s3" && u.Scheme != "gs") || u.Host == "" {
			problems = append(problems, "attachment must be a URL to the image")
		}
	}
	t.Geometries, problems = scaleCheckGeometries(obj["geometries"], problems)
	if m, present := obj["metadata"]; present && m != nil {
		md, ok := m.(map[string]any)
		if !ok {
			problems = append(problems, "metadata must be an object")
		}
		t.Metadata = md
	}
	if len(problems) > 0 {
		return scaleReject(http.StatusBadRequest, "Invalid task: %s.", strings.Join(problems, "; "))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if i, dup := s.byUID[t.UniqueID]; dup {
		rep := scaleReject(http.StatusConflict, "A task with unique_id %q already exists.", t.UniqueID)
		rep.body.(map[string]any)["task_id"] = s.tasks[i].TaskID
		rep.outcome = Duplicate
		return rep
	}
	if s.strictBatches && t.Batch != "" {
		switch b := s.batches[t.Batch]; {
		case b == nil:
			return scaleReject(http.StatusBadRequest, "Batch %q does not exist: create it first.", t.Batch)
		case b.Finalized:
			return scaleReject(http.StatusBadRequest, "Batch %q is finalized and takes no more tasks.", t.Batch)
		}
	}
	t.TaskID = fmt.Sprintf("task%020d", len(s.tasks)+1)
	s.byUID[t.UniqueID] = len(s.tasks)
	s.tasks = append(s.tasks, t)
	return reply{status: http.StatusOK, outcome: Accepted, body: map[string]any{
		"task_id": t.TaskID, "created_at": time.Now().UTC().Format(time.RFC3339), "type": "imageannotation",
		"status": "pending", "unique_id": t.UniqueID, "project": t.Project, "batch": t.Batch,
		"instruction": t.Instruction, "params": map[string]any{"attachment": t.Attachment, "geometries": t.Geometries},
		"metadata": t.Metadata,
	}}
}

func scaleCheckGeometries(v any, problems []string) (map[string]any, []string) {
	g, ok := v.(map[string]any)
	if !ok || len(g) == 0 {
		return nil, append(problems, "geometries is required: an object such as {\"box\": {\"objects_to_annotate\": [...]}}")
	}
	for k, spec := range g {
		if !slices.Contains(scaleGeometries, k) {
			problems = append(problems, fmt.Sprintf("geometries.%s is not a geometry type (want one of %s)", k, strings.Join(scaleGeometries, ", ")))
			continue
		}
		m, ok := spec.(map[string]any)
		if !ok {
			problems = append(problems, fmt.Sprintf("geometries.%s must be an object", k))
			continue
		}
		objs, ok := m["objects_to_annotate"].([]any)
		if !ok || len(objs) == 0 {
			problems = append(problems, fmt.Sprintf("geometries.%s.objects_to_annotate must be a non-empty list", k))
		}
	}
	return g, problems
}

func (s *Scale) createBatch(body []byte) reply {
	obj, err := jsonObject(body)
	if err != nil {
		return scaleReject(http.StatusBadRequest, "%v", err)
	}
	project, _ := obj["project"].(string)
	name, _ := obj["name"].(string)
	if project == "" || name == "" {
		return scaleReject(http.StatusBadRequest, "project and name are required strings.")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.batches[name]; dup {
		rep := scaleReject(http.StatusConflict, "A batch named %q already exists.", name)
		rep.outcome = Duplicate
		return rep
	}
	s.batches[name] = &ScaleBatch{Name: name, Project: project}
	s.order = append(s.order, name)
	return reply{status: http.StatusOK, outcome: Accepted, body: map[string]any{
		"name": name, "project": project, "status": "staging", "created_at": time.Now().UTC().Format(time.RFC3339),
	}}
}

func (s *Scale) finalize(name string) reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.batches[name]
	if !ok {
		return scaleReject(http.StatusNotFound, "No batch named %q.", name)
	}
	outcome := Accepted
	if b.Finalized {
		outcome = Duplicate // harmless: it stays finalized
	}
	b.Finalized = true
	return reply{status: http.StatusOK, outcome: outcome, body: map[string]any{"name": name, "project": b.Project, "status": "in_progress"}}
}
