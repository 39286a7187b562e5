package vendortest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// CVAT fakes CVAT's REST API, the part a task import uses:
//
//   - auth: `Authorization: Bearer <token>`; `X-Organization: <slug>` is
//     recorded on the task, and required to match when RequireOrg is set;
//   - POST /api/tasks {name, project_id} creates a task: 201 with the task.
//     CVAT does not make names unique, and neither does the fake: a second
//     task of a name is created, and counted as a duplicate;
//   - GET /api/tasks?name=&project_id= lists tasks, paginated
//     ({count, next, previous, results}); name matches case-insensitively
//     as a substring, as CVAT's filter does, so a client must compare the
//     names itself;
//   - POST /api/tasks/{id}/data/ {image_quality, remote_files} starts the
//     import: 202 {"rq_id"}. A task takes data once: another attach
//     answers 400;
//   - GET /api/requests/{rq_id} is the import's status: each read moves it
//     on, queued → started → finished, or failed with a message when
//     FailImport scripted it;
//   - GET /api/requests?task_id=&action=create lists a task's imports;
//   - DELETE /api/tasks/{id} deletes a task: 204, then 404 for it.
//
// Errors are Django REST framework style: {"detail": ...} or field lists.
// The counts per key (CountsFor) are kept per task name for creates
// (CVATTaskKey) and per task for attaches (CVATAttachKey).
type CVAT struct {
	*Server
	token string

	mu         sync.Mutex
	projects   map[int]bool
	requireOrg string
	tasks      []*CVATTask
	byName     map[string]int // tasks created per name
	requests   map[string]*cvatRequest
	failImport []string // reasons of the next imports to fail
	pageSize   int
	// startedReads is how many status reads an import stays started.
	startedReads int
}

// CVATTask is a task the fake holds.
type CVATTask struct {
	ID        int
	Name      string
	ProjectID int
	// Org is the X-Organization the task was created with.
	Org string
	// ImageQuality and RemoteFiles are what the attach sent; RemoteFiles
	// is nil until data was attached.
	ImageQuality int
	RemoteFiles  []string
	// Import is the import's status: "" before an attach, then queued,
	// started, finished or failed.
	Import string
	// RequestID is the import's rq_id.
	RequestID string
	// Deleted says the task was deleted; Tasks still lists it, the API
	// does not.
	Deleted bool
}

type cvatRequest struct {
	id     string
	task   *CVATTask
	status string
	reason string // set for an import scripted to fail
	reads  int
}

// CVATTaskKey is the key of the counts per key for the creates of a task
// name.
func CVATTaskKey(name string) string { return "task\x00" + name }

// CVATAttachKey is the key of the counts per key for the attaches to the
// task named name.
func CVATAttachKey(name string) string { return "attach\x00" + name }

// NewCVAT starts a fake CVAT that accepts token and holds the given
// projects. With tb set it is closed when the test ends.
func NewCVAT(tb testing.TB, token string, projects ...int) *CVAT {
	c := &CVAT{token: token, projects: map[int]bool{}, byName: map[string]int{}, requests: map[string]*cvatRequest{}, pageSize: 10, startedReads: 1}
	for _, p := range projects {
		c.projects[p] = true
	}
	c.Server = newServer(tb, c.handle, func(status int) any {
		return map[string]any{"detail": http.StatusText(status)}
	}, c.keys)
	return c
}

// RequireOrg makes every request need `X-Organization: slug`.
func (c *CVAT) RequireOrg(slug string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.requireOrg = slug
}

// FailImport makes the next import fail with reason, as CVAT reports a
// remote file it could not fetch. Calls queue up.
func (c *CVAT) FailImport(reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failImport = append(c.failImport, reason)
}

// SlowImports makes each import stay started for n status reads (1 by
// default) before it finishes or fails: a large import that outlasts an
// attempt.
func (c *CVAT) SlowImports(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.startedReads = max(n, 1)
}

// ForgetRequests drops every import request, as CVAT drops finished ones
// after a while: their status reads answer 404.
func (c *CVAT) ForgetRequests() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.requests)
}

// AddTask creates a task directly, as a process that crashed after CVAT's
// 201 would have left it; it returns the task's id. It is not counted.
func (c *CVAT) AddTask(name string, project int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.addTask(name, project, "").ID
}

// Tasks returns every task, in creation order.
func (c *CVAT) Tasks() []CVATTask {
	defer c.settled()()
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]CVATTask, len(c.tasks))
	for i, t := range c.tasks {
		out[i] = *t
		out[i].RemoteFiles = append([]string(nil), t.RemoteFiles...)
	}
	return out
}

// TasksNamed returns the tasks named name (exactly) and not deleted, in
// creation order.
func (c *CVAT) TasksNamed(name string) []CVATTask {
	var out []CVATTask
	for _, t := range c.Tasks() {
		if t.Name == name && !t.Deleted {
			out = append(out, t)
		}
	}
	return out
}

func (c *CVAT) addTask(name string, project int, org string) *CVATTask {
	t := &CVATTask{ID: len(c.tasks) + 1, Name: name, ProjectID: project, Org: org}
	c.tasks = append(c.tasks, t)
	c.byName[name]++
	return t
}

func (c *CVAT) task(id int) *CVATTask {
	if id < 1 || id > len(c.tasks) || c.tasks[id-1].Deleted {
		return nil
	}
	return c.tasks[id-1]
}

func cvatDetail(status int, format string, args ...any) reply {
	return reply{status: status, body: map[string]any{"detail": fmt.Sprintf(format, args...)}, outcome: Rejected}
}

func cvatFields(fields map[string]any) reply {
	return reply{status: http.StatusBadRequest, body: fields, outcome: Rejected}
}

// keys names the work a request is about, for the counts per key.
func (c *CVAT) keys(r *http.Request, body []byte) []string {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/api/tasks":
		var b struct {
			Name string `json:"name"`
		}
		if json.Unmarshal(body, &b) == nil && b.Name != "" {
			return []string{CVATTaskKey(b.Name)}
		}
	case r.Method == http.MethodPost && len(parts) == 4 && parts[1] == "tasks" && parts[3] == "data":
		id, _ := strconv.Atoi(parts[2])
		c.mu.Lock()
		defer c.mu.Unlock()
		if t := c.task(id); t != nil {
			return []string{CVATAttachKey(t.Name)}
		}
	}
	return nil
}

func (c *CVAT) handle(r *http.Request, body []byte) reply {
	c.mu.Lock()
	defer c.mu.Unlock()
	auth := r.Header.Get("Authorization")
	if auth == "" {
		return cvatDetail(http.StatusUnauthorized, "Authentication credentials were not provided.")
	}
	if auth != "Bearer "+c.token || c.token == "" {
		return cvatDetail(http.StatusUnauthorized, "Invalid token.")
	}
	org := r.Header.Get("X-Organization")
	if c.requireOrg != "" && org != c.requireOrg {
		return cvatDetail(http.StatusForbidden, "You do not have permission to perform this action.")
	}
	if r.Method == http.MethodPost && r.Header.Get("Content-Type") != "application/json" {
		return cvatDetail(http.StatusUnsupportedMediaType, "Unsupported media type %q in request.", r.Header.Get("Content-Type"))
	}
	path := r.URL.Path
	parts := strings.Split(strings.Trim(path, "/"), "/")
	switch {
	case path == "/api/tasks" && r.Method == http.MethodPost:
		return c.createTask(body, org)
	case path == "/api/tasks" && r.Method == http.MethodGet:
		return c.listTasks(r.URL.Query())
	case len(parts) == 4 && parts[0] == "api" && parts[1] == "tasks" && parts[3] == "data":
		if !strings.HasSuffix(path, "/") {
			// Django's APPEND_SLASH cannot redirect a POST.
			return cvatDetail(http.StatusNotFound, "Not found: the data endpoint is /api/tasks/{id}/data/.")
		}
		if r.Method != http.MethodPost {
			return cvatDetail(http.StatusMethodNotAllowed, "Method %q not allowed.", r.Method)
		}
		id, err := strconv.Atoi(parts[2])
		t := c.task(id)
		if err != nil || t == nil {
			return cvatDetail(http.StatusNotFound, "No Task matches the given query.")
		}
		return c.attach(t, body)
	case len(parts) == 3 && parts[0] == "api" && parts[1] == "tasks" && r.Method == http.MethodDelete:
		id, err := strconv.Atoi(parts[2])
		t := c.task(id)
		if err != nil || t == nil {
			return cvatDetail(http.StatusNotFound, "No Task matches the given query.")
		}
		t.Deleted = true
		c.byName[t.Name]--
		return reply{status: http.StatusNoContent, outcome: Accepted}
	case len(parts) == 3 && parts[0] == "api" && parts[1] == "tasks" && r.Method == http.MethodGet:
		id, err := strconv.Atoi(parts[2])
		t := c.task(id)
		if err != nil || t == nil {
			return cvatDetail(http.StatusNotFound, "No Task matches the given query.")
		}
		return reply{status: http.StatusOK, body: taskJSON(t), outcome: Accepted}
	case path == "/api/requests" && r.Method == http.MethodGet:
		return c.listRequests(r.URL.Query())
	case strings.HasPrefix(path, "/api/requests/") && r.Method == http.MethodGet:
		id, err := url.PathUnescape(strings.TrimPrefix(r.URL.EscapedPath(), "/api/requests/"))
		rq := c.requests[id]
		if err != nil || rq == nil {
			return cvatDetail(http.StatusNotFound, "Not found.")
		}
		c.advance(rq)
		return reply{status: http.StatusOK, body: rq.json(), outcome: Accepted}
	}
	return cvatDetail(http.StatusNotFound, "Not found.")
}

func (c *CVAT) createTask(body []byte, org string) reply {
	var b map[string]any
	if err := json.Unmarshal(body, &b); err != nil {
		return cvatDetail(http.StatusBadRequest, "JSON parse error - %v", err)
	}
	problems := map[string]any{}
	name, _ := b["name"].(string)
	if strings.TrimSpace(name) == "" {
		problems["name"] = []string{"This field is required."}
	} else if len(name) > 256 {
		problems["name"] = []string{"Ensure this field has no more than 256 characters."}
	}
	pid, ok := b["project_id"].(float64)
	if !ok || pid != float64(int(pid)) {
		problems["project_id"] = []string{"A valid integer is required."}
	} else if !c.projects[int(pid)] {
		problems["project_id"] = []string{fmt.Sprintf("Invalid pk \"%d\" - object does not exist.", int(pid))}
	}
	for k := range b {
		if k != "name" && k != "project_id" && k != "labels" && k != "subset" {
			problems[k] = []string{"Unexpected field (the fake knows name, project_id, labels, subset)."}
		}
	}
	if len(problems) > 0 {
		return cvatFields(problems)
	}
	outcome := Accepted
	if c.byName[name] > 0 {
		outcome = Duplicate // CVAT creates it all the same
	}
	t := c.addTask(name, int(pid), org)
	return reply{status: http.StatusCreated, body: taskJSON(t), outcome: outcome}
}

func taskJSON(t *CVATTask) map[string]any {
	return map[string]any{"id": t.ID, "name": t.Name, "project_id": t.ProjectID, "size": len(t.RemoteFiles),
		"status": "annotation"}
}

func (c *CVAT) listTasks(q url.Values) reply {
	var match []*CVATTask
	name := strings.ToLower(q.Get("name"))
	for _, t := range c.tasks {
		if t.Deleted {
			continue
		}
		if name != "" && !strings.Contains(strings.ToLower(t.Name), name) {
			continue
		}
		if p := q.Get("project_id"); p != "" && p != strconv.Itoa(t.ProjectID) {
			continue
		}
		match = append(match, t)
	}
	return c.page(q, len(match), func(i int) any { return taskJSON(match[i]) }, "/api/tasks")
}

// page answers one page of a list, as CVAT's paginator does.
func (c *CVAT) page(q url.Values, n int, item func(int) any, path string) reply {
	size := c.pageSize
	if s, err := strconv.Atoi(q.Get("page_size")); err == nil && s > 0 {
		size = min(s, 100)
	}
	page := 1
	if p := q.Get("page"); p != "" {
		var err error
		if page, err = strconv.Atoi(p); err != nil || page < 1 || (page-1)*size >= max(n, 1) {
			return cvatDetail(http.StatusNotFound, "Invalid page.")
		}
	}
	results := []any{}
	for i := (page - 1) * size; i < min(n, page*size); i++ {
		results = append(results, item(i))
	}
	var next any
	if page*size < n {
		nq := url.Values{}
		for k, v := range q {
			nq[k] = v
		}
		nq.Set("page", strconv.Itoa(page+1))
		next = c.URL + path + "?" + nq.Encode()
	}
	return reply{status: http.StatusOK, body: map[string]any{"count": n, "next": next, "previous": nil, "results": results}, outcome: Accepted}
}

func (c *CVAT) attach(t *CVATTask, body []byte) reply {
	var b map[string]any
	if err := json.Unmarshal(body, &b); err != nil {
		return cvatDetail(http.StatusBadRequest, "JSON parse error - %v", err)
	}
	problems := map[string]any{}
	q, ok := b["image_quality"].(float64)
	if !ok || q != float64(int(q)) || q < 0 || q > 100 {
		problems["image_quality"] = []string{"Ensure this value is an integer between 0 and 100."}
	}
	raw, _ := b["remote_files"].([]any)
	var files []string
	for _, f := range raw {
		s, _ := f.(string)
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			problems["remote_files"] = []string{fmt.Sprintf("Enter a valid URL: %q.", s)}
			break
		}
		files = append(files, s)
	}
	if len(raw) == 0 {
		problems["remote_files"] = []string{"No media data found: remote_files is empty."}
	}
	for k := range b {
		if k != "image_quality" && k != "remote_files" && k != "sorting_method" && k != "use_cache" {
			problems[k] = []string{"Unexpected field."}
		}
	}
	if len(problems) > 0 {
		return cvatFields(problems)
	}
	if t.RemoteFiles != nil {
		return reply{status: http.StatusBadRequest, outcome: Duplicate,
			body: map[string]any{"detail": "Adding more data is not supported"}}
	}
	t.ImageQuality, t.RemoteFiles = int(q), files
	rq := &cvatRequest{id: fmt.Sprintf("action=create&target=task&target_id=%d", t.ID), task: t, status: "queued"}
	if len(c.failImport) > 0 {
		rq.reason, c.failImport = c.failImport[0], c.failImport[1:]
	}
	t.Import, t.RequestID = rq.status, rq.id
	c.requests[rq.id] = rq
	return reply{status: http.StatusAccepted, body: map[string]any{"rq_id": rq.id}, outcome: Accepted}
}

// advance moves an import on by one read: queued, started, then finished
// or failed.
func (c *CVAT) advance(rq *cvatRequest) {
	rq.reads++
	switch rq.status {
	case "queued":
		rq.status = "started"
	case "started":
		if rq.reads <= c.startedReads {
			break
		}
		rq.status = "finished"
		if rq.reason != "" {
			rq.status = "failed"
		}
	}
	rq.task.Import = rq.status
}

func (rq *cvatRequest) json() map[string]any {
	m := map[string]any{"id": rq.id, "status": rq.status, "message": "",
		"operation": map[string]any{"type": "create:task", "target": "task", "task_id": rq.task.ID}}
	if rq.status == "failed" {
		m["message"] = rq.reason
	}
	return m
}

func (c *CVAT) listRequests(q url.Values) reply {
	var match []*cvatRequest
	for _, t := range c.tasks {
		rq := c.requests[t.RequestID]
		if rq == nil || t.Deleted {
			continue
		}
		if id := q.Get("task_id"); id != "" && id != strconv.Itoa(t.ID) {
			continue
		}
		if a := q.Get("action"); a != "" && a != "create" {
			continue
		}
		match = append(match, rq)
	}
	return c.page(q, len(match), func(i int) any { return match[i].json() }, "/api/requests")
}
