package vendortest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// LabelStudio fakes Label Studio's REST API: `Authorization: Token <key>`;
// POST /api/projects/{id}/import with a JSON array of tasks, each with
// data.image, answering 201 {"task_count": n}; and
// POST /api/dm/actions?id=delete_tasks_annotations&project={id} with
// {"selectedItems": {"all": false, "included": [ids]}}, which rejects an
// empty included list (the real one would act on every task). Errors are
// Django REST framework style: {"detail": ...} or
// {"validation_errors": ...}.
//
// Label Studio has no idempotency key: a repeated import creates the tasks
// again. The fake does the same, and counts such an import (a task for an
// issue element already in the project, or with the same data and meta)
// as accepted and duplicate.
type LabelStudio struct {
	*Server
	token string

	mu      sync.Mutex
	tasks   map[int][]LabelStudioTask // by project
	seen    map[int]map[string]bool   // canonical task JSON by project
	nextID  int
	cleared map[int][]int // task ids whose annotations were deleted, by project
}

// LabelStudioTask is a task the fake imported.
type LabelStudioTask struct {
	ID      int
	Project int
	Data    map[string]any
	Meta    map[string]any
}

// lsTaskKey names what a task labels, to count repeats: the Aquarium
// issue and element in its meta when it carries them (a repeat sent from
// another export id is still a repeat), else its data and meta.
func lsTaskKey(data, meta map[string]any) string {
	issue, _ := meta["issue_id"].(string)
	el, _ := meta["element_id"].(string)
	if issue != "" && el != "" {
		return LabelStudioKey(issue, el)
	}
	k, _ := json.Marshal(map[string]any{"data": data, "meta": meta}) // map keys sort: canonical
	return string(k)
}

// LabelStudioKey is the key Label Studio's counts per key use for a task
// of an Aquarium issue element (meta.issue_id, meta.element_id).
func LabelStudioKey(issueID, elementID string) string {
	return "element\x00" + issueID + "\x00" + elementID
}

// labelStudioKeys are the keys of the tasks an import carries, each once.
func labelStudioKeys(r *http.Request, body []byte) []string {
	if !strings.HasSuffix(r.URL.Path, "/import") {
		return nil
	}
	var items []struct {
		Data map[string]any `json:"data"`
		Meta map[string]any `json:"meta"`
	}
	if json.Unmarshal(body, &items) != nil {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	for _, t := range items {
		if k := lsTaskKey(t.Data, t.Meta); !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return out
}

// LabelStudioMaxTasks is how many tasks one import may hold.
const LabelStudioMaxTasks = 250_000

// NewLabelStudio starts a fake Label Studio that accepts token. With tb set
// it is closed when the test ends.
func NewLabelStudio(tb testing.TB, token string) *LabelStudio {
	l := &LabelStudio{token: token, tasks: map[int][]LabelStudioTask{}, seen: map[int]map[string]bool{}, cleared: map[int][]int{}}
	l.Server = newServer(tb, l.handle, func(status int) any {
		return map[string]any{"status_code": status, "detail": http.StatusText(status)}
	}, labelStudioKeys)
	return l
}

// ImportURL is the import endpoint of a project.
func (l *LabelStudio) ImportURL(project int) string {
	return fmt.Sprintf("%s/api/projects/%d/import", l.URL, project)
}

// ActionURL is the data manager action endpoint for deleting annotations
// of a project's tasks.
func (l *LabelStudio) ActionURL(project int) string {
	return fmt.Sprintf("%s/api/dm/actions?id=delete_tasks_annotations&project=%d", l.URL, project)
}

// Tasks returns a project's tasks, in import order.
func (l *LabelStudio) Tasks(project int) []LabelStudioTask {
	defer l.settled()()
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]LabelStudioTask(nil), l.tasks[project]...)
}

// ClearedAnnotations returns the task ids whose annotations were deleted
// in a project, in order.
func (l *LabelStudio) ClearedAnnotations(project int) []int {
	defer l.settled()()
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]int(nil), l.cleared[project]...)
}

func lsDetail(status int, format string, args ...any) reply {
	return reply{status: status, body: map[string]any{"status_code": status, "detail": fmt.Sprintf(format, args...)}, outcome: Rejected}
}

func lsInvalid(msg string) reply {
	return reply{status: http.StatusBadRequest, outcome: Rejected, body: map[string]any{
		"status_code": 400, "detail": "Validation error",
		"validation_errors": map[string]any{"non_field_errors": []string{msg}},
	}}
}

func (l *LabelStudio) handle(r *http.Request, body []byte) reply {
	auth := r.Header.Get("Authorization")
	if auth == "" {
		return lsDetail(http.StatusUnauthorized, "Authentication credentials were not provided.")
	}
	if auth != "Token "+l.token || l.token == "" {
		return lsDetail(http.StatusUnauthorized, "Invalid token.")
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	switch {
	case len(parts) == 4 && parts[0] == "api" && parts[1] == "projects" && parts[3] == "import":
		if r.Method != http.MethodPost {
			return lsDetail(http.StatusMethodNotAllowed, "Method \"%s\" not allowed.", r.Method)
		}
		id, err := strconv.Atoi(parts[2])
		if err != nil || id <= 0 {
			return lsDetail(http.StatusNotFound, "Not found.")
		}
		return l.importTasks(id, body)
	case r.URL.Path == "/api/dm/actions":
		if r.Method != http.MethodPost {
			return lsDetail(http.StatusMethodNotAllowed, "Method \"%s\" not allowed.", r.Method)
		}
		return l.action(r, body)
	default:
		return lsDetail(http.StatusNotFound, "Not found.")
	}
}

func (l *LabelStudio) importTasks(project int, body []byte) reply {
	var items []json.RawMessage
	if err := json.Unmarshal(body, &items); err != nil {
		return lsInvalid(fmt.Sprintf("Can't parse the request body as a JSON list of tasks: %v", err))
	}
	if len(items) == 0 {
		return lsInvalid("No tasks found in the request.")
	}
	if len(items) > LabelStudioMaxTasks {
		return lsInvalid(fmt.Sprintf("Too many tasks: %d (at most %d per import).", len(items), LabelStudioMaxTasks))
	}
	tasks := make([]LabelStudioTask, len(items))
	keys := make([]string, len(items))
	for i, raw := range items {
		var t struct {
			Data map[string]any `json:"data"`
			Meta map[string]any `json:"meta"`
		}
		if err := json.Unmarshal(raw, &t); err != nil || t.Data == nil {
			return lsInvalid(fmt.Sprintf("Task %d: a task is an object with a \"data\" object.", i))
		}
		img, ok := t.Data["image"].(string)
		if !ok || strings.TrimSpace(img) == "" {
			return lsInvalid(fmt.Sprintf("Task %d: data.image must be the image URL (the labeling config's $image).", i))
		}
		tasks[i] = LabelStudioTask{Project: project, Data: t.Data, Meta: t.Meta}
		keys[i] = lsTaskKey(t.Data, t.Meta)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen[project] == nil {
		l.seen[project] = map[string]bool{}
	}
	// A task repeats earlier work if an earlier import carried its key.
	dupKeys := map[string]bool{}
	for i := range tasks {
		l.nextID++
		tasks[i].ID = l.nextID
		if l.seen[project][keys[i]] {
			dupKeys[keys[i]] = true
		}
	}
	for _, k := range keys {
		l.seen[project][k] = true
	}
	dup := len(dupKeys) > 0
	l.tasks[project] = append(l.tasks[project], tasks...)
	if dup {
		l.countDuplicateAccepted()
	}
	return reply{status: http.StatusCreated, outcome: Accepted, dupKeys: dupKeys, body: map[string]any{
		"task_count": len(tasks), "annotation_count": 0, "prediction_count": 0, "duration": 0.01,
		"file_upload_ids": []int{}, "could_be_tasks_list": false, "found_formats": []string{}, "data_columns": []string{},
	}}
}

func (l *LabelStudio) action(r *http.Request, body []byte) reply {
	q := r.URL.Query()
	if q.Get("id") != "delete_tasks_annotations" {
		return lsDetail(http.StatusNotFound, "Action %q not found.", q.Get("id"))
	}
	project, err := strconv.Atoi(q.Get("project"))
	if err != nil || project <= 0 {
		return lsDetail(http.StatusBadRequest, "The project query parameter is required.")
	}
	var req struct {
		SelectedItems *struct {
			All      *bool   `json:"all"`
			Included []int64 `json:"included"`
			Excluded []int64 `json:"excluded"`
		} `json:"selectedItems"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return lsInvalid(fmt.Sprintf("Can't parse the request body: %v", err))
	}
	sel := req.SelectedItems
	if sel == nil || sel.All == nil {
		return lsInvalid("selectedItems with \"all\" is required.")
	}
	if *sel.All {
		return lsInvalid("This fake refuses selectedItems.all=true: it would act on every task of the project.")
	}
	if len(sel.Included) == 0 {
		return lsInvalid("selectedItems.included is empty: an empty selection acts on all tasks.")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	known := map[int64]bool{}
	for _, t := range l.tasks[project] {
		known[int64(t.ID)] = true
	}
	for _, id := range sel.Included {
		if !known[id] {
			return lsDetail(http.StatusNotFound, "Task %d not found in project %d.", id, project)
		}
	}
	for _, id := range sel.Included {
		l.cleared[project] = append(l.cleared[project], int(id))
	}
	return reply{status: http.StatusOK, outcome: Accepted, body: map[string]any{
		"processed_items": len(sel.Included), "detail": fmt.Sprintf("Deleted %d annotations", len(sel.Included)),
	}}
}
