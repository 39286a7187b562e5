package vendortest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/internal/vendortest"
)

// call posts body to url with headers and decodes the JSON answer.
func call(t *testing.T, method, url string, headers map[string]string, body string) (int, http.Header, map[string]any) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, resp.Header, out
}

func gql(query string, vars any) string {
	b, _ := json.Marshal(map[string]any{"query": query, "variables": vars})
	return string(b)
}

// firstError returns errors[0]'s code and message.
func firstError(t *testing.T, ans map[string]any) (string, string) {
	t.Helper()
	errs, _ := ans["errors"].([]any)
	if len(errs) == 0 {
		return "", ""
	}
	e := errs[0].(map[string]any)
	ext, _ := e["extensions"].(map[string]any)
	code, _ := ext["code"].(string)
	msg, _ := e["message"].(string)
	return code, msg
}

const createBatch = `mutation Create($projectId: ID!, $input: CreateBatchV2Input!) {
  project(where: {id: $projectId}) {
    createBatchV2(input: $input) { batch { id } failedDataRowIds }
  }
}`

func TestLabelbox(t *testing.T) {
	lb := vendortest.NewLabelbox(t, "lb-key")
	auth := map[string]string{"Authorization": "Bearer lb-key"}
	okVars := map[string]any{"projectId": "p1", "input": map[string]any{"name": "aq-1", "globalKeys": []string{"f1", "f2"}, "priority": 2}}
	tests := []struct {
		name     string
		headers  map[string]string
		body     string
		status   int
		code     string // "" means data, no errors
		msgHas   string
		accepted int
		dups     int
	}{
		{name: "no auth", body: gql(createBatch, okVars), status: 200, code: "AUTHENTICATION_ERROR"},
		{name: "wrong key", headers: map[string]string{"Authorization": "Bearer nope"}, body: gql(createBatch, okVars), status: 200, code: "AUTHENTICATION_ERROR"},
		{name: "not json", headers: auth, body: `{query`, status: 400, code: "MALFORMED_REQUEST"},
		{name: "no query", headers: auth, body: `{"variables":{}}`, status: 400, code: "MALFORMED_REQUEST"},
		{name: "syntax error", headers: auth, body: gql(`mutation { project(where: {id: "p"}) { `, nil), status: 200, code: "GRAPHQL_PARSE_FAILED"},
		{name: "missing variable", headers: auth, body: gql(createBatch, map[string]any{"projectId": "p1"}), status: 200, code: "GRAPHQL_VALIDATION_FAILED", msgHas: "$input"},
		{name: "undeclared variable", headers: auth, body: gql(`mutation { project(where: {id: $p}) { id } }`, map[string]any{"p": "x"}), status: 200, code: "GRAPHQL_VALIDATION_FAILED"},
		{name: "unknown field", headers: auth, body: gql(`mutation { project(where: {id: "p1"}) { bulkDeleteLabels(makeTemplates: true) { count } } }`, nil), status: 200, code: "GRAPHQL_VALIDATION_FAILED", msgHas: "bulkDeleteLabels"},
		{name: "both keys and ids", headers: auth, body: gql(createBatch, map[string]any{"projectId": "p1", "input": map[string]any{"name": "x", "globalKeys": []string{"a"}, "dataRowIds": []string{"b"}}}), status: 200, code: "BAD_USER_INPUT"},
		{name: "global key too long", headers: auth, body: gql(createBatch, map[string]any{"projectId": "p1", "input": map[string]any{"name": "x", "globalKeys": []string{strings.Repeat("k", 201)}}}), status: 200, code: "BAD_USER_INPUT"},
		{name: "bad priority", headers: auth, body: gql(createBatch, map[string]any{"projectId": "p1", "input": map[string]any{"name": "x", "globalKeys": []string{"a"}, "priority": 9}}), status: 200, code: "BAD_USER_INPUT"},
		{name: "created", headers: auth, body: gql(createBatch, okVars), status: 200, accepted: 1},
		{name: "name taken", headers: auth, body: gql(createBatch, okVars), status: 200, code: "BAD_USER_INPUT", msgHas: "already exists", accepted: 1, dups: 1},
		{name: "inline literals", headers: auth, body: gql(`mutation { project(where: {id: "p2"}) { b: createBatchV2(input: {name: "aq-1", dataRowIds: ["r1"], priority: 1}) { batch { id } } } }`, nil), status: 200, accepted: 2, dups: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, _, ans := call(t, http.MethodPost, lb.Endpoint(), tt.headers, tt.body)
			code, msg := firstError(t, ans)
			if status != tt.status || code != tt.code || !strings.Contains(msg, tt.msgHas) {
				t.Fatalf("answer %d %v, want %d code %q containing %q", status, ans, tt.status, tt.code, tt.msgHas)
			}
			if tt.code == "" && ans["data"] == nil {
				t.Fatalf("no data in %v", ans)
			}
			if lb.Accepted() != tt.accepted || lb.Duplicates() != tt.dups {
				t.Fatalf("accepted %d duplicates %d, want %d and %d", lb.Accepted(), lb.Duplicates(), tt.accepted, tt.dups)
			}
		})
	}
	b := lb.Batches("p1")
	if len(b) != 1 || b[0].Name != "aq-1" || len(b[0].GlobalKeys) != 2 || b[0].Priority != 2 {
		t.Fatalf("batches %+v", b)
	}
	if len(lb.Batches("p2")) != 1 {
		t.Fatalf("batch names are per project: p2 has %v", lb.Batches("p2"))
	}

	requeue := `mutation($p: ID!, $b: ID!) { project(where: {id: $p}) { deleteBatchLabels(batchId: $b, data: {type: RequeueDataWithLabelAsTemplate}) { id } } }`
	status, _, ans := call(t, http.MethodPost, lb.Endpoint(), auth, gql(requeue, map[string]any{"p": "p1", "b": b[0].ID}))
	if code, _ := firstError(t, ans); status != 200 || code != "" || len(lb.Requeues()) != 1 {
		t.Fatalf("requeue: %d %v, requeues %v", status, ans, lb.Requeues())
	}
}

func TestLabelboxInjectedErrors(t *testing.T) {
	lb := vendortest.NewLabelbox(t, "k")
	auth := map[string]string{"Authorization": "Bearer k"}
	body := gql(createBatch, map[string]any{"projectId": "p", "input": map[string]any{"name": "n", "globalKeys": []string{"a"}}})
	lb.FailNextGraphQL(1, "INTERNAL_SERVER_ERROR", "try again")
	lb.RateLimitNext(1)
	lb.FailNext(1, http.StatusTooManyRequests, "2")
	want := []struct {
		status int
		code   string
		msg    string
	}{
		{200, "INTERNAL_SERVER_ERROR", "try again"},
		{200, "RATE_LIMITED", "You have exceeded"},
		{429, "INTERNAL_SERVER_ERROR", "Too Many Requests"},
		{200, "", ""},
	}
	for i, w := range want {
		status, h, ans := call(t, http.MethodPost, lb.Endpoint(), auth, body)
		code, msg := firstError(t, ans)
		if status != w.status || code != w.code || !strings.Contains(msg, w.msg) {
			t.Fatalf("request %d: %d %v, want %d %s %q", i, status, ans, w.status, w.code, w.msg)
		}
		if w.status == 429 && h.Get("Retry-After") != "2" {
			t.Fatalf("Retry-After = %q", h.Get("Retry-After"))
		}
	}
	reqs := lb.Requests()
	if len(reqs) != 4 || reqs[0].Outcome != vendortest.Injected || reqs[3].Outcome != vendortest.Accepted || lb.Accepted() != 1 {
		t.Fatalf("requests %+v", reqs)
	}
}

func TestScale(t *testing.T) {
	sc := vendortest.NewScale(t, "live_key")
	basic := func(user, pass string) map[string]string {
		r, _ := http.NewRequest(http.MethodGet, "http://x", nil)
		r.SetBasicAuth(user, pass)
		return map[string]string{"Authorization": r.Header.Get("Authorization")}
	}
	auth := basic("live_key", "")
	task := `{"project":"relabel","attachment":"https://img/a.jpg","unique_id":"i1.e1","geometries":{"box":{"objects_to_annotate":["car"]}},"metadata":{"frame":"f1"}}`
	tests := []struct {
		name     string
		method   string
		path     string
		headers  map[string]string
		body     string
		status   int
		errHas   string
		accepted int
		dups     int
	}{
		{"no auth", "POST", "/v1/task/imageannotation", nil, task, 401, "API key", 0, 0},
		{"password set", "POST", "/v1/task/imageannotation", basic("live_key", "pw"), task, 401, "API key", 0, 0},
		{"not json", "POST", "/v1/task/imageannotation", auth, `[1`, 400, "JSON object", 0, 0},
		{"missing fields", "POST", "/v1/task/imageannotation", auth, `{"project":"p"}`, 400, "unique_id is required", 0, 0},
		{"bad geometry", "POST", "/v1/task/imageannotation", auth, `{"project":"p","attachment":"https://i/a.jpg","unique_id":"u","geometries":{"box":{"objects_to_annotate":[]}}}`, 400, "objects_to_annotate", 0, 0},
		{"attachment not a url", "POST", "/v1/task/imageannotation", auth, `{"project":"p","attachment":"a.jpg","unique_id":"u","geometries":{"box":{"objects_to_annotate":["car"]}}}`, 400, "attachment", 0, 0},
		{"created", "POST", "/v1/task/imageannotation", auth, task, 200, "", 1, 0},
		{"unique_id reused", "POST", "/v1/task/imageannotation", auth, task, 409, "already exists", 1, 1},
		{"wrong method", "GET", "/v1/task/imageannotation", auth, ``, 405, "not allowed", 1, 1},
		{"batch", "POST", "/v1/batches", auth, `{"project":"relabel","name":"aq-i1"}`, 200, "", 2, 1},
		{"batch again", "POST", "/v1/batches", auth, `{"project":"relabel","name":"aq-i1"}`, 409, "already exists", 2, 2},
		{"finalize", "POST", "/v1/batches/aq-i1/finalize", auth, ``, 200, "", 3, 2},
		{"finalize unknown", "POST", "/v1/batches/nope/finalize", auth, ``, 404, "nope", 3, 2},
		{"unknown route", "POST", "/v1/tasks", auth, `{}`, 404, "Not found", 3, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, _, ans := call(t, tt.method, sc.URL+tt.path, tt.headers, tt.body)
			msg, _ := ans["error"].(string)
			if status != tt.status || !strings.Contains(msg, tt.errHas) {
				t.Fatalf("answer %d %v, want %d with error containing %q", status, ans, tt.status, tt.errHas)
			}
			if status >= 400 && ans["status_code"] != float64(status) {
				t.Fatalf("error body %v lacks status_code", ans)
			}
			if sc.Accepted() != tt.accepted || sc.Duplicates() != tt.dups {
				t.Fatalf("accepted %d duplicates %d, want %d and %d", sc.Accepted(), sc.Duplicates(), tt.accepted, tt.dups)
			}
		})
	}
	tasks := sc.Tasks()
	if len(tasks) != 1 || tasks[0].UniqueID != "i1.e1" || tasks[0].Metadata["frame"] != "f1" || tasks[0].TaskID == "" {
		t.Fatalf("tasks %+v", tasks)
	}
	if b := sc.Batches(); len(b) != 1 || !b[0].Finalized {
		t.Fatalf("batches %+v", b)
	}
}

func TestLabelStudio(t *testing.T) {
	ls := vendortest.NewLabelStudio(t, "ls-token")
	auth := map[string]string{"Authorization": "Token ls-token"}
	tasks := `[{"data":{"image":"https://img/a.jpg"},"meta":{"export":"e1"}},{"data":{"image":"https://img/b.jpg"}}]`
	tests := []struct {
		name     string
		url      string
		headers  map[string]string
		body     string
		status   int
		has      string
		accepted int
		dups     int
	}{
		{"no auth", ls.ImportURL(3), nil, tasks, 401, "not provided", 0, 0},
		{"bearer is not token", ls.ImportURL(3), map[string]string{"Authorization": "Bearer ls-token"}, tasks, 401, "Invalid token", 0, 0},
		{"object not list", ls.ImportURL(3), auth, `{"data":{"image":"x"}}`, 400, "JSON list", 0, 0},
		{"empty list", ls.ImportURL(3), auth, `[]`, 400, "No tasks", 0, 0},
		{"no image", ls.ImportURL(3), auth, `[{"data":{"img":"x"}}]`, 400, "data.image", 0, 0},
		{"bad project", ls.URL + "/api/projects/abc/import", auth, tasks, 404, "Not found", 0, 0},
		{"imported", ls.ImportURL(3), auth, tasks, 201, "", 1, 0},
		{"imported again", ls.ImportURL(3), auth, tasks, 201, "", 2, 1},
		{"other project", ls.ImportURL(4), auth, tasks, 201, "", 3, 1},
		{"empty included", ls.ActionURL(3), auth, `{"selectedItems":{"all":false,"included":[]}}`, 400, "included is empty", 3, 1},
		{"all tasks", ls.ActionURL(3), auth, `{"selectedItems":{"all":true,"excluded":[]}}`, 400, "every task", 3, 1},
		{"unknown task", ls.ActionURL(3), auth, `{"selectedItems":{"all":false,"included":[999]}}`, 404, "999", 3, 1},
		{"delete annotations", ls.ActionURL(3), auth, `{"selectedItems":{"all":false,"included":[1,2]}}`, 200, "", 4, 1},
		{"unknown action", ls.URL + "/api/dm/actions?id=delete_everything&project=3", auth, `{}`, 404, "not found", 4, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, _, ans := call(t, http.MethodPost, tt.url, tt.headers, tt.body)
			raw, _ := json.Marshal(ans)
			if status != tt.status || !strings.Contains(string(raw), tt.has) {
				t.Fatalf("answer %d %s, want %d containing %q", status, raw, tt.status, tt.has)
			}
			if status == 201 && ans["task_count"] != float64(2) {
				t.Fatalf("task_count in %s", raw)
			}
			if ls.Accepted() != tt.accepted || ls.Duplicates() != tt.dups {
				t.Fatalf("accepted %d duplicates %d, want %d and %d", ls.Accepted(), ls.Duplicates(), tt.accepted, tt.dups)
			}
		})
	}
	if got := ls.Tasks(3); len(got) != 4 || got[0].Meta["export"] != "e1" || got[0].ID == got[2].ID {
		t.Fatalf("project 3 tasks %+v: a repeated import creates the tasks again", got)
	}
	if got := ls.ClearedAnnotations(3); len(got) != 2 || got[0] != 1 {
		t.Fatalf("cleared %v", got)
	}
}

func TestOutageAndRecording(t *testing.T) {
	sc := vendortest.NewScale(t, "k")
	auth := func() map[string]string {
		r, _ := http.NewRequest(http.MethodGet, "http://x", nil)
		r.SetBasicAuth("k", "")
		return map[string]string{"Authorization": r.Header.Get("Authorization"), "Traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
	}()
	body := func(uid string) string {
		return `{"project":"p","attachment":"https://i/a.jpg","unique_id":"` + uid + `","geometries":{"box":{"objects_to_annotate":["car"]}}}`
	}
	sc.SetDown(http.StatusServiceUnavailable)
	for i := range 3 {
		if status, _, ans := call(t, http.MethodPost, sc.TaskURL(), auth, body("u")); status != 503 || ans["status_code"] != float64(503) {
			t.Fatalf("request %d during outage: %d %v", i, status, ans)
		}
	}
	sc.SetUp()
	if status, _, _ := call(t, http.MethodPost, sc.TaskURL(), auth, body("u")); status != 200 {
		t.Fatalf("after the outage: %d", status)
	}
	reqs := sc.Requests()
	if len(reqs) != 4 || sc.Accepted() != 1 || reqs[0].Outcome != vendortest.Injected || reqs[3].Outcome != vendortest.Accepted {
		t.Fatalf("requests %+v", reqs)
	}
	last := reqs[3]
	if last.Method != "POST" || last.Path != "/v1/task/imageannotation" || !bytes.Contains(last.Body, []byte(`"unique_id":"u"`)) ||
		last.Traceparent() != "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" || last.Status != 200 {
		t.Fatalf("recorded %+v", last)
	}
}

func TestLatencyStillCarriesOutAbandonedRequests(t *testing.T) {
	sc := vendortest.NewScale(t, "k")
	sc.SetLatency(time.Hour) // until Close; the client gives up long before
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() {
		if sc.WaitArrived(ctx, 1) == nil {
			cancel() // the vendor has the request: give up on the answer
		}
	}()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, sc.TaskURL(),
		strings.NewReader(`{"project":"p","attachment":"https://i/a.jpg","unique_id":"u","geometries":{"box":{"objects_to_annotate":["car"]}}}`))
	req.SetBasicAuth("k", "")
	if _, err := http.DefaultClient.Do(req); !errors.Is(err, context.Canceled) {
		t.Fatalf("Do = %v, want the client to give up", err)
	}
	if sc.Accepted() != 0 || sc.RequestCount() != 0 {
		t.Fatalf("answered before the latency passed")
	}
	sc.SetLatency(0)
	wctx, wcancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer wcancel()
	if err := sc.WaitAccepted(wctx, 1); err != nil {
		t.Fatal(err)
	}
	if len(sc.Tasks()) != 1 {
		t.Fatalf("the abandoned request should still have created its task")
	}
}

func TestWait(t *testing.T) {
	ls := vendortest.NewLabelStudio(t, "tok")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Millisecond)
	defer cancel()
	if err := ls.WaitRequests(ctx, 1); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "have 0 requests") {
		t.Fatalf("WaitRequests with nothing sent = %v", err)
	}
	bounded, stop := context.WithTimeout(t.Context(), 10*time.Second)
	defer stop()
	var wg sync.WaitGroup
	got := make(chan error, 2)
	wg.Go(func() { got <- ls.WaitRequests(bounded, 3) })
	wg.Go(func() { got <- ls.WaitAccepted(bounded, 2) })
	for range 3 {
		call(t, http.MethodPost, ls.ImportURL(1), map[string]string{"Authorization": "Token tok"}, `[{"data":{"image":"https://i/a.jpg"}}]`)
	}
	wg.Wait()
	for range 2 {
		if err := <-got; err != nil {
			t.Fatal(err)
		}
	}
	if ls.RequestCount() != 3 || ls.Accepted() != 3 || ls.Duplicates() != 2 {
		t.Fatalf("count %d accepted %d duplicates %d", ls.RequestCount(), ls.Accepted(), ls.Duplicates())
	}
}

// Every request carrying a key is counted against it, whatever the
// answer: an injected failure, the one that did the work, and the repeats
// the vendor answered "already done" (or, Label Studio, did again).
func TestCountsPerKey(t *testing.T) {
	sc := vendortest.NewScale(t, "k")
	lb := vendortest.NewLabelbox(t, "k")
	ls := vendortest.NewLabelStudio(t, "k")
	scAuth := func() map[string]string {
		r, _ := http.NewRequest(http.MethodGet, "http://x", nil)
		r.SetBasicAuth("k", "")
		return map[string]string{"Authorization": r.Header.Get("Authorization")}
	}()
	scTask := func(uid string) string {
		return `{"project":"p","attachment":"https://i/a.jpg","unique_id":"` + uid + `","geometries":{"box":{"objects_to_annotate":["car"]}}}`
	}
	lbBatch := func(name string) string {
		return gql(createBatch, map[string]any{"projectId": "p1", "input": map[string]any{"name": name, "globalKeys": []string{"f1"}}})
	}
	lsTasks := func(issue string, els ...string) string {
		var items []map[string]any
		for _, el := range els {
			items = append(items, map[string]any{"data": map[string]any{"image": "https://i/" + el + ".jpg"},
				"meta": map[string]any{"issue_id": issue, "element_id": el}})
		}
		b, _ := json.Marshal(items)
		return string(b)
	}
	post := func(url string, headers map[string]string, body string) func(*testing.T) {
		return func(t *testing.T) { call(t, http.MethodPost, url, headers, body) }
	}

	tests := []struct {
		name   string
		fake   *vendortest.Server
		script []func(*testing.T)
		want   map[string]vendortest.KeyCount
	}{
		{
			name: "scale: unique_id", fake: sc.Server,
			script: []func(*testing.T){
				func(*testing.T) { sc.FailNext(1, http.StatusServiceUnavailable, "") },
				post(sc.TaskURL(), scAuth, scTask("u1")), // injected 503
				post(sc.TaskURL(), scAuth, scTask("u1")), // created
				post(sc.TaskURL(), scAuth, scTask("u1")), // 409
				post(sc.TaskURL(), scAuth, scTask("u2")),
			},
			want: map[string]vendortest.KeyCount{
				"u1": {Requests: 3, Accepted: 1, Duplicates: 1},
				"u2": {Requests: 1, Accepted: 1},
			},
		},
		{
			name: "labelbox: batch name", fake: lb.Server,
			script: []func(*testing.T){
				func(*testing.T) { lb.FailNextGraphQL(1, "INTERNAL_SERVER_ERROR", "boom") },
				post(lb.Endpoint(), map[string]string{"Authorization": "Bearer k"}, lbBatch("b1")),
				post(lb.Endpoint(), map[string]string{"Authorization": "Bearer k"}, lbBatch("b1")),
				post(lb.Endpoint(), map[string]string{"Authorization": "Bearer k"}, lbBatch("b1")), // already exists
			},
			want: map[string]vendortest.KeyCount{"b1": {Requests: 3, Accepted: 1, Duplicates: 1}},
		},
		{
			name: "label studio: issue element", fake: ls.Server,
			script: []func(*testing.T){
				post(ls.ImportURL(1), map[string]string{"Authorization": "Token k"}, lsTasks("i1", "e1", "e2")),
				post(ls.ImportURL(1), map[string]string{"Authorization": "Token k"}, lsTasks("i1", "e1")), // imported again
				func(*testing.T) { ls.FailNext(1, http.StatusBadGateway, "") },
				post(ls.ImportURL(1), map[string]string{"Authorization": "Token k"}, lsTasks("i1", "e2")), // injected 502
			},
			want: map[string]vendortest.KeyCount{
				vendortest.LabelStudioKey("i1", "e1"): {Requests: 2, Accepted: 2, Duplicates: 1},
				vendortest.LabelStudioKey("i1", "e2"): {Requests: 2, Accepted: 1},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, step := range tt.script {
				step(t)
			}
			for k, want := range tt.want {
				if got := tt.fake.CountsFor(k); got != want {
					t.Errorf("CountsFor(%q) = %+v, want %+v", k, got, want)
				}
			}
			if got := tt.fake.CountsByKey(); len(got) != len(tt.want) {
				t.Errorf("CountsByKey has %d keys (%v), want %d", len(got), got, len(tt.want))
			}
		})
	}
}

// The fake CVAT enforces auth and shapes, answers as CVAT does, and
// follows an import queued → started → finished (or failed) one status
// read at a time. Each row runs on the state the rows before it left.
func TestCVAT(t *testing.T) {
	c := vendortest.NewCVAT(t, "cv-token", 3)
	auth := map[string]string{"Authorization": "Bearer cv-token"}
	rq := "action=create&target=task&target_id=1"
	files := `{"image_quality":70,"remote_files":["https://img/a.jpg","https://img/b.jpg"]}`
	tests := []struct {
		name    string
		method  string
		path    string
		headers map[string]string
		body    string
		status  int
		has     string
	}{
		{"no auth", "POST", "/api/tasks", nil, `{"name":"t","project_id":3}`, 401, "not provided"},
		{"token is not bearer", "POST", "/api/tasks", map[string]string{"Authorization": "Token cv-token"}, `{"name":"t","project_id":3}`, 401, "Invalid token"},
		{"no name", "POST", "/api/tasks", auth, `{"project_id":3}`, 400, `"name"`},
		{"unknown project", "POST", "/api/tasks", auth, `{"name":"t","project_id":9}`, 400, "does not exist"},
		{"unknown field", "POST", "/api/tasks", auth, `{"name":"t","project_id":3,"remote_files":[]}`, 400, "remote_files"},
		{"create", "POST", "/api/tasks", auth, `{"name":"aquarium k.cvat.0","project_id":3}`, 201, `"id":1`},
		{"list by substring", "GET", "/api/tasks?name=K.CVAT&project_id=3", auth, "", 200, `"count":1`},
		{"list other project", "GET", "/api/tasks?name=k.cvat&project_id=4", auth, "", 200, `"count":0`},
		{"data without slash", "POST", "/api/tasks/1/data", auth, files, 404, "data/"},
		{"data of no task", "POST", "/api/tasks/7/data/", auth, files, 404, "No Task"},
		{"no remote files", "POST", "/api/tasks/1/data/", auth, `{"image_quality":70,"remote_files":[]}`, 400, "remote_files"},
		{"bad quality", "POST", "/api/tasks/1/data/", auth, `{"image_quality":101,"remote_files":["https://img/a.jpg"]}`, 400, "image_quality"},
		{"not a URL", "POST", "/api/tasks/1/data/", auth, `{"image_quality":70,"remote_files":["/etc/passwd"]}`, 400, "valid URL"},
		{"attach", "POST", "/api/tasks/1/data/", auth, files, 202, "target_id=1"},
		{"attach again", "POST", "/api/tasks/1/data/", auth, files, 400, "more data"},
		{"queued → started", "GET", "/api/requests/" + rq, auth, "", 200, `"status":"started"`},
		{"started → finished", "GET", "/api/requests/" + rq, auth, "", 200, `"status":"finished"`},
		{"finished stays", "GET", "/api/requests/" + rq, auth, "", 200, `"status":"finished"`},
		{"the task's imports", "GET", "/api/requests?task_id=1&action=create", auth, "", 200, "target_id=1"},
		{"no request", "GET", "/api/requests/nope", auth, "", 404, "Not found"},
		{"read the task", "GET", "/api/tasks/1", auth, "", 200, `"size":2`},
		{"delete the task", "DELETE", "/api/tasks/1", auth, "", 204, ""},
		{"deleted is gone", "GET", "/api/tasks/1", auth, "", 404, "No Task"},
		{"deleted is not listed", "GET", "/api/tasks?name=k.cvat", auth, "", 200, `"count":0`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, _, ans := call(t, tt.method, c.URL+tt.path, tt.headers, tt.body)
			raw, _ := json.Marshal(ans)
			if status != tt.status || !strings.Contains(string(raw), tt.has) {
				t.Fatalf("answer %d %s, want %d containing %q", status, raw, tt.status, tt.has)
			}
		})
	}
	if k := c.CountsFor(vendortest.CVATTaskKey("aquarium k.cvat.0")); k.Requests != 1 || k.Accepted != 1 {
		t.Errorf("creates %+v", k)
	}
	if k := c.CountsFor(vendortest.CVATAttachKey("aquarium k.cvat.0")); k.Requests != 6 || k.Accepted != 1 || k.Duplicates != 1 {
		t.Errorf("attaches %+v, want 6 requests (4 refused), 1 accepted, 1 repeat", k)
	}

	// A second task of a name is made, as CVAT makes it, and counted as a
	// repeat; a scripted import failure carries its reason.
	c.FailImport("Cannot fetch https://img/a.jpg")
	for range 2 {
		if status, _, _ := call(t, "POST", c.URL+"/api/tasks", auth, `{"name":"dup","project_id":3}`); status != 201 {
			t.Fatalf("create: %d", status)
		}
	}
	if k := c.CountsFor(vendortest.CVATTaskKey("dup")); k.Accepted != 1 || k.Duplicates != 1 || len(c.TasksNamed("dup")) != 2 {
		t.Fatalf("dup: %+v, %d tasks", k, len(c.TasksNamed("dup")))
	}
	_, _, ans := call(t, "POST", c.URL+"/api/tasks/2/data/", auth, files)
	id, _ := ans["rq_id"].(string)
	var last map[string]any
	for range 3 {
		_, _, last = call(t, "GET", c.URL+"/api/requests/"+id, auth, "")
	}
	if last["status"] != "failed" || last["message"] != "Cannot fetch https://img/a.jpg" {
		t.Fatalf("failed import: %v", last)
	}
	c.RequireOrg("acme")
	if status, _, _ := call(t, "GET", c.URL+"/api/tasks", auth, ""); status != 403 {
		t.Fatalf("without X-Organization: %d, want 403", status)
	}
}

// FailGlobalKeys: the batch is created without the failed keys, which
// the answer lists in failedDataRowIds, for as many batches as asked.
func TestLabelboxFailedDataRowIDs(t *testing.T) {
	lb := vendortest.NewLabelbox(t, "k")
	lb.FailGlobalKeys(1, "f2")
	auth := map[string]string{"Authorization": "Bearer k"}
	for i, want := range [][]any{{"f2"}, {}} {
		vars := map[string]any{"projectId": "p", "input": map[string]any{"name": "b" + string(rune('0'+i)), "globalKeys": []string{"f1", "f2"}}}
		status, _, ans := call(t, http.MethodPost, lb.Endpoint(), auth, gql(createBatch, vars))
		if status != 200 {
			t.Fatalf("status %d: %v", status, ans)
		}
		got := ans["data"].(map[string]any)["project"].(map[string]any)["createBatchV2"].(map[string]any)["failedDataRowIds"]
		if b, _ := json.Marshal(got); string(b) != string(must(json.Marshal(want))) {
			t.Errorf("batch %d: failedDataRowIds %s, want %v", i, b, want)
		}
	}
	bs := lb.Batches("p")
	if len(bs) != 2 || strings.Join(bs[0].GlobalKeys, ",") != "f1" || strings.Join(bs[1].GlobalKeys, ",") != "f1,f2" {
		t.Errorf("batches %+v", bs)
	}
}

// RequireBatches: a task must name a batch that exists and is open.
func TestScaleRequireBatches(t *testing.T) {
	sc := vendortest.NewScale(t, "k")
	sc.RequireBatches()
	r, _ := http.NewRequest(http.MethodGet, "http://x", nil)
	r.SetBasicAuth("k", "")
	auth := map[string]string{"Authorization": r.Header.Get("Authorization")}
	task := func(uid string) string {
		return `{"project":"p","batch":"b1","attachment":"https://img/a.jpg","unique_id":"` + uid + `","geometries":{"box":{"objects_to_annotate":["car"]}}}`
	}
	steps := []struct {
		path, body string
		status     int
	}{
		{"/v1/task/imageannotation", task("t1"), 400}, // no batch yet
		{"/v1/batches", `{"project":"p","name":"b1"}`, 200},
		{"/v1/task/imageannotation", task("t1"), 200},
		{"/v1/batches/b1/finalize", `{}`, 200},
		{"/v1/task/imageannotation", task("t2"), 400}, // finalized
		{"/v1/task/imageannotation", task("t1"), 409}, // exists: still a 409
	}
	for i, st := range steps {
		if status, _, ans := call(t, http.MethodPost, sc.URL+st.path, auth, st.body); status != st.status {
			t.Errorf("step %d %s: %d %v, want %d", i, st.path, status, ans, st.status)
		}
	}
	if n := len(sc.Tasks()); n != 1 {
		t.Errorf("%d tasks, want 1", n)
	}
}

// AnswerNext answers as told, without acting.
func TestAnswerNext(t *testing.T) {
	ls := vendortest.NewLabelStudio(t, "tok")
	ls.AnswerNext(1, 201, map[string]any{"task_count": 99})
	body := `[{"data":{"image":"https://img/a.jpg"}}]`
	auth := map[string]string{"Authorization": "Token tok"}
	if status, _, ans := call(t, http.MethodPost, ls.ImportURL(1), auth, body); status != 201 || ans["task_count"] != float64(99) {
		t.Fatalf("%d %v", status, ans)
	}
	if n := len(ls.Tasks(1)); n != 0 {
		t.Fatalf("%d tasks imported by a scripted answer", n)
	}
	if status, _, ans := call(t, http.MethodPost, ls.ImportURL(1), auth, body); status != 201 || ans["task_count"] != float64(1) {
		t.Fatalf("then %d %v, want the real answer", status, ans)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
