package sinks_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/internal/vendortest"
	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/backend"
	"github.com/labelpipe/labelpipe/pipeline/backend/memory"
	redisb "github.com/labelpipe/labelpipe/pipeline/backend/redis"
	"github.com/labelpipe/labelpipe/sinks"
)

const cvatToken = "cvat-token"

func cvatYAML(base, key, extra string) string {
	return fmt.Sprintf("  - {name: cvat, type: cvat, url: %q, api_key: %q, project_id: 3%s}\n", base, key, extra)
}

// cvatName is the task name of the first request b.render makes.
const cvatName = "aquarium key1.s.0"

// isStep matches the requests of one CVAT step, for SetLatencyOn.
func isStep(method, suffix string) func(string, string) bool {
	return func(m, p string) bool { return m == method && strings.HasSuffix(p, suffix) }
}

var (
	isCreate = isStep(http.MethodPost, "/api/tasks")
	isAttach = isStep(http.MethodPost, "/data/")
)

// paths lists the requests CVAT got as "METHOD path".
func paths(c *vendortest.CVAT) []string {
	var out []string
	for _, r := range c.Requests() {
		out = append(out, r.Method+" "+r.Path)
	}
	return out
}

// resumed is r tied to ledger l as the engine ties it: Step sees what l
// holds for r, SaveStep writes to l.
func resumed(t *testing.T, l backend.Ledger, r *pipeline.Request) *pipeline.Request {
	t.Helper()
	rec, err := l.Lookup(t.Context(), r.Key())
	if err != nil {
		t.Fatal(err)
	}
	c := *r
	c.Resume(l, rec)
	return &c
}

// One export: one task named after the request, in the project and the
// organization, holding every element image once (the lidar-only frame
// skipped), imported to the end; its steps checkpointed.
func TestCVATPresetMakesOneTaskPerExport(t *testing.T) {
	c := vendortest.NewCVAT(t, cvatToken, 3)
	c.RequireOrg("acme")
	b := buildPreset(t, cvatYAML(c.URL, cvatToken, ", organization: acme, image_quality: 85"), nil)
	reqs := b.render(t, mixedIssue("iss-1"))
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1 per export", len(reqs))
	}
	l := memory.NewLedger(time.Hour)
	if err := b.sink.Send(t.Context(), resumed(t, l, reqs[0])); err != nil {
		t.Fatal(err)
	}
	tasks := c.Tasks()
	if len(tasks) != 1 {
		t.Fatalf("%d tasks, want 1", len(tasks))
	}
	got := tasks[0]
	want := []string{imageURL("f1"), imageURL("f2"), imageURL("f4")}
	if got.Name != cvatName || got.ProjectID != 3 || got.Org != "acme" || got.ImageQuality != 85 ||
		!slices.Equal(got.RemoteFiles, want) || got.Import != "finished" {
		t.Errorf("task %+v, want %q in project 3, org acme, quality 85, files %v, import finished", got, cvatName, want)
	}
	if s := b.skipped(t); s[sinks.SkipNoImage] != 1 {
		t.Errorf("skipped %v, want the lidar-only frame as no_image", s)
	}
	p := paths(c)
	wantStart := []string{"GET /api/tasks", "POST /api/tasks", "POST /api/tasks/1/data/", "GET /api/requests/" + got.RequestID}
	if len(p) < len(wantStart)+1 || !slices.Equal(p[:len(wantStart)], wantStart) {
		t.Errorf("requests %v, want %v then more status reads until finished", p, wantStart)
	}
	for _, r := range c.Requests() {
		if r.Header.Get("Authorization") != "Bearer "+cvatToken || r.Status >= 300 {
			t.Errorf("%s %s: auth %q, status %d", r.Method, r.Path, r.Header.Get("Authorization"), r.Status)
		}
	}
	rec, _ := l.Lookup(t.Context(), reqs[0].Key())
	if rec.Steps["cvat.task_id"] != "1" || rec.Steps["cvat.rq_id"] != got.RequestID {
		t.Errorf("checkpointed steps %v, want the task id and rq_id", rec.Steps)
	}
	if k := c.CountsFor(vendortest.CVATTaskKey(cvatName)); k.Requests != 1 || k.Accepted != 1 {
		t.Errorf("creates of the task %+v, want one", k)
	}
}

// Every error class, at each step: what is worth another attempt is
// retryable (with CVAT's Retry-After), the rest is not, and no answer
// shows the token. failN is the ordinal of the request that fails: 1 the
// lookup, 2 the create, 3 the attach, 4 the first status read.
func TestCVATPresetErrorClasses(t *testing.T) {
	tests := []struct {
		name       string
		key        string
		project    string
		org        string
		failN      int
		status     int
		retryAfter string
		retry      bool
		says       string
		tasks      int
	}{
		{"wrong token", "other-token", "3", "", 0, 401, "", false, "Invalid token", 0},
		{"unknown project", cvatToken, "9", "", 0, 400, "", false, "does not exist", 0},
		{"forbidden organization", cvatToken, "3", "acme", 0, 403, "", false, "permission", 0},
		{"429 at the lookup", cvatToken, "3", "", 1, 429, "2", true, "429", 0},
		{"500 at the lookup", cvatToken, "3", "", 1, 500, "", true, "500", 0},
		{"502 at the create", cvatToken, "3", "", 2, 502, "", true, "502", 0},
		{"400 at the create", cvatToken, "3", "", 2, 400, "", false, "400", 0},
		{"503 at the attach", cvatToken, "3", "", 3, 503, "", true, "503", 1},
		{"429 at the attach", cvatToken, "3", "", 3, 429, "1", true, "429", 1},
		{"404 at the attach", cvatToken, "3", "", 3, 404, "", false, "404", 1},
		{"500 at the status", cvatToken, "3", "", 4, 500, "", true, "500", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := vendortest.NewCVAT(t, cvatToken, 3)
			if tt.org != "" {
				c.RequireOrg(tt.org)
			}
			b := buildPreset(t, fmt.Sprintf("  - {name: cvat, type: cvat, url: %q, api_key: %q, project_id: %s}\n", c.URL, tt.key, tt.project), nil)
			r := b.render(t, mixedIssue("iss-2"))[0]
			var err error
			if tt.failN > 0 {
				err = failNth(t, c.Server, tt.failN, tt.status, tt.retryAfter, b.sink, r)
			} else {
				err = b.sink.Send(t.Context(), r)
			}
			de := wantDeliveryError(t, err, tt.retry, fmt.Sprint(tt.status), tt.says)
			if de.Status != tt.status {
				t.Errorf("status %d, want %d", de.Status, tt.status)
			}
			if tt.retryAfter != "" && de.After.String() != tt.retryAfter+"s" {
				t.Errorf("After = %v, want the Retry-After, %ss", de.After, tt.retryAfter)
			}
			if strings.Contains(err.Error(), tt.key) || strings.Contains(de.Answer, tt.key) {
				t.Errorf("the error shows the token: %v", err)
			}
			if n := len(c.Tasks()); n != tt.tasks {
				t.Errorf("%d tasks, want %d", n, tt.tasks)
			}
		})
	}
}

// failNth sends r once, answering its n-th request (1-based, counted from
// now) with status: the request is held until it arrived, then takes a
// scripted failure. Send's requests are sequential, so the ones before it
// were answered.
func failNth(t *testing.T, srv *vendortest.Server, n, status int, retryAfter string, s pipeline.Sink, r *pipeline.Request) error {
	t.Helper()
	before := srv.RequestCount()
	var seen int
	srv.SetLatencyOn(time.Hour, func(string, string) bool { seen++; return seen == n })
	errc := make(chan error, 1)
	go func() { errc <- s.Send(t.Context(), r) }()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := srv.WaitArrived(ctx, before+n); err != nil {
		t.Fatal(err)
	}
	srv.FailNext(1, status, retryAfter)
	srv.SetLatency(0)
	return <-errc
}

// A step that fails is retried from where it failed: a 503 on the attach
// makes the next attempt attach to the same task, not make another.
func TestCVATPresetRetryResumesAtTheFailedStep(t *testing.T) {
	c := vendortest.NewCVAT(t, cvatToken, 3)
	b := buildPreset(t, cvatYAML(c.URL, cvatToken, ""), nil)
	r := resumed(t, memory.NewLedger(time.Hour), b.render(t, mixedIssue("iss-3"))[0])
	wantDeliveryError(t, failNth(t, c.Server, 3, 503, "", b.sink, r), true, "503")
	if err := b.sink.Send(t.Context(), r); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if tasks := c.TasksNamed(cvatName); len(tasks) != 1 || tasks[0].Import != "finished" {
		t.Fatalf("tasks %+v, want one, imported", tasks)
	}
	if k := c.CountsFor(vendortest.CVATTaskKey(cvatName)); k.Requests != 1 {
		t.Errorf("%d creates, want 1", k.Requests)
	}
}

// A timeout at either step that CVAT carried out all the same: the next
// attempt finds what it made (the task by its name, the import by its
// task) and makes nothing twice.
func TestCVATPresetRetryAfterATimeoutThatSucceeded(t *testing.T) {
	for _, tc := range []struct {
		step string
		n    int
	}{{"create", 2}, {"attach", 3}} {
		t.Run(tc.step, func(t *testing.T) {
			c := vendortest.NewCVAT(t, cvatToken, 3)
			b := buildPreset(t, cvatYAML(c.URL, cvatToken, ""), nil)
			r := resumed(t, memory.NewLedger(time.Hour), b.render(t, mixedIssue("iss-4"))[0])
			wantDeliveryError(t, timedOutOn(t, c.Server, tc.n, b.sink, r), true, "no answer")
			if n := len(c.TasksNamed(cvatName)); n != 1 {
				t.Fatalf("%d tasks after the timed-out %s, want the 1 CVAT made anyway", n, tc.step)
			}
			if err := b.sink.Send(t.Context(), r); err != nil {
				t.Fatalf("retry: %v", err)
			}
			tasks := c.TasksNamed(cvatName)
			if len(tasks) != 1 || tasks[0].Import != "finished" {
				t.Fatalf("tasks %+v, want one, imported", tasks)
			}
			for _, k := range []string{vendortest.CVATTaskKey(cvatName), vendortest.CVATAttachKey(cvatName)} {
				if got := c.CountsFor(k); got.Requests != 1 || got.Duplicates != 0 {
					t.Errorf("%q: %+v, want one request and no repeat", k, got)
				}
			}
		})
	}
}

// timedOutOn makes one attempt whose n-th request hangs until the attempt
// gives up, then lets CVAT carry it out, and waits until it has.
func timedOutOn(t *testing.T, srv *vendortest.Server, n int, s pipeline.Sink, r *pipeline.Request) error {
	t.Helper()
	before := srv.RequestCount()
	var seen int
	srv.SetLatencyOn(time.Hour, func(string, string) bool { seen++; return seen == n })
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- s.Send(ctx, r) }()
	wctx, stop := context.WithTimeout(t.Context(), 10*time.Second)
	defer stop()
	if err := srv.WaitArrived(wctx, before+n); err != nil {
		t.Fatal(err)
	}
	cancel()
	err := <-errc
	srv.SetLatency(0) // the held request is carried out
	if werr := srv.WaitRequests(wctx, before+n); werr != nil {
		t.Fatal(werr)
	}
	return err
}

// A crash after CVAT's 201 and before the checkpoint was saved: the task
// exists, the ledger does not know it. The lookup by name finds it, among
// tasks whose names only contain it (CVAT's filter matches substrings),
// and the data goes to it.
func TestCVATPresetFindsTheTaskACrashLeft(t *testing.T) {
	c := vendortest.NewCVAT(t, cvatToken, 3)
	decoy := c.AddTask("old "+cvatName+" copy", 3)
	other := c.AddTask(cvatName, 4) // same name, another project
	left := c.AddTask(cvatName, 3)
	b := buildPreset(t, cvatYAML(c.URL, cvatToken, ""), nil)
	r := resumed(t, memory.NewLedger(time.Hour), b.render(t, mixedIssue("iss-5"))[0])
	if err := b.sink.Send(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	for _, tk := range c.Tasks() {
		switch tk.ID {
		case left:
			if tk.Import != "finished" || len(tk.RemoteFiles) != 3 {
				t.Errorf("the task the crash left: %+v, want its data imported", tk)
			}
		case decoy, other:
			if tk.RemoteFiles != nil {
				t.Errorf("task %d %q (project %d) got the data", tk.ID, tk.Name, tk.ProjectID)
			}
		default:
			t.Errorf("a task was created: %+v", tk)
		}
	}
	if k := c.CountsFor(vendortest.CVATTaskKey(cvatName)); k.Requests != 0 {
		t.Errorf("%d creates, want none", k.Requests)
	}
}

// The lookup reads every page of a long list, asked of the configured
// url, up to cvatListPages (20) pages of 100: a task on the third or the
// twentieth page is found; one past them is not looked for, and a task is
// made.
func TestCVATPresetLookupReadsEveryPage(t *testing.T) {
	for _, tc := range []struct {
		name   string
		before int // tasks listed before the one a crash left
		found  bool
	}{
		{"third page", 250, true},
		{"twentieth page, the last read", 1900, true},
		{"twenty-first page, not read", 2000, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := vendortest.NewCVAT(t, cvatToken, 3)
			for i := range tc.before {
				c.AddTask(fmt.Sprintf("%s-%04d", cvatName, i), 3)
			}
			left := c.AddTask(cvatName, 3)
			b := buildPreset(t, cvatYAML(c.URL, cvatToken, ""), nil)
			if err := b.sink.Send(t.Context(), b.render(t, mixedIssue("iss-6"))[0]); err != nil {
				t.Fatal(err)
			}
			tasks := c.Tasks()
			if got := tasks[left-1].Import == "finished"; got != tc.found {
				t.Errorf("task on the page imported: %v, want %v", got, tc.found)
			}
			want := tc.before + 1
			if !tc.found {
				want++
			}
			if len(tasks) != want {
				t.Errorf("%d tasks, want %d", len(tasks), want)
			}
		})
	}
}

// A failed import is permanent, with CVAT's reason: it goes to the DLQ
// rather than being retried into the same failure.
func TestCVATPresetFailedImportIsPermanent(t *testing.T) {
	c := vendortest.NewCVAT(t, cvatToken, 3)
	const reason = "Cannot fetch https://img/f2.jpg: 403 Forbidden"
	c.FailImport(reason)
	b := buildPreset(t, cvatYAML(c.URL, cvatToken, ""), nil)
	err := b.sink.Send(t.Context(), b.render(t, mixedIssue("iss-7"))[0])
	de := wantDeliveryError(t, err, false, "import into task 1 failed", reason)
	if !strings.Contains(de.Answer, reason) {
		t.Errorf("answer %q, want CVAT's status with the reason", de.Answer)
	}
}

// An import still running when the attempt ends is a retryable error, and
// the next attempt follows the same import.
func TestCVATPresetFollowsAnImportAcrossAttempts(t *testing.T) {
	c := vendortest.NewCVAT(t, cvatToken, 3)
	b := buildPreset(t, cvatYAML(c.URL, cvatToken, ""), nil)
	r := resumed(t, memory.NewLedger(time.Hour), b.render(t, mixedIssue("iss-8"))[0])
	// The attempt ends while the first status read (queued) is held.
	wantDeliveryError(t, timedOutOn(t, c.Server, 4, b.sink, r), true, "no answer")
	if err := b.sink.Send(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	if tasks := c.Tasks(); len(tasks) != 1 || tasks[0].Import != "finished" {
		t.Fatalf("tasks %+v, want one, imported", tasks)
	}
	if k := c.CountsFor(vendortest.CVATAttachKey(cvatName)); k.Requests != 1 {
		t.Errorf("%d attaches, want 1", k.Requests)
	}
}

// A restart between the steps: the first process made the task and
// checkpointed it, then its attach failed and it stopped. A second
// process (a new sink, a new ledger instance on the same storage) goes
// straight to the attach: no lookup, no second task.
func TestCVATPresetRestartBetweenSteps(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ledger func(t *testing.T) (first, second backend.Ledger)
	}{
		{"memory", func(*testing.T) (backend.Ledger, backend.Ledger) {
			l := memory.NewLedger(time.Hour)
			return l, l
		}},
		{"redis", func(t *testing.T) (backend.Ledger, backend.Ledger) {
			srv := redistest.Start(t)
			return redisb.NewLedger(srv.Client(t), "cvat-restart:", time.Hour),
				redisb.NewLedger(srv.Client(t), "cvat-restart:", time.Hour)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := vendortest.NewCVAT(t, cvatToken, 3)
			l1, l2 := tc.ledger(t)
			cfg := cvatYAML(c.URL, cvatToken, "")
			first := buildPreset(t, cfg, nil)
			req := first.render(t, mixedIssue("iss-9"))[0]
			wantDeliveryError(t, failNth(t, c.Server, 3, 503, "", first.sink, resumed(t, l1, req)), true, "503")
			before := c.RequestCount()

			second := buildPreset(t, cfg, nil)
			if err := second.sink.Send(t.Context(), resumed(t, l2, req)); err != nil {
				t.Fatal(err)
			}
			tasks := c.TasksNamed(cvatName)
			if len(tasks) != 1 || tasks[0].Import != "finished" {
				t.Fatalf("tasks %+v, want one, imported", tasks)
			}
			after := paths(c)[before:]
			if after[0] != "GET /api/requests" || after[1] != "POST /api/tasks/1/data/" {
				t.Errorf("the second process sent %v, want the import lookup and the attach first", after)
			}
			for _, p := range after {
				if p == "GET /api/tasks" || p == "POST /api/tasks" {
					t.Errorf("the second process sent %s: the checkpoint should have named the task", p)
				}
			}
		})
	}
}

// The preview shows the four requests with the token redacted.
func TestCVATPresetDescribe(t *testing.T) {
	b := buildPreset(t, cvatYAML("https://cvat.example.com/proxy", "secret-token", ", organization: acme"), nil)
	r := b.render(t, mixedIssue("iss-10"))[0]
	d := b.sink.(pipeline.Describer).Describe(r)
	out, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	if strings.Contains(s, "secret-token") {
		t.Fatalf("preview shows the token: %s", s)
	}
	for _, want := range []string{
		`"url":"https://cvat.example.com/proxy/api/tasks"`,
		`"body":{"name":"aquarium key1.s.0","project_id":3}`,
		`"url":"https://cvat.example.com/proxy/api/tasks/{id}/data/"`,
		`"url":"https://cvat.example.com/proxy/api/requests/{rq_id}"`,
		`"X-Organization":"acme"`,
		`"remote_files":["https://img/f1.jpg","https://img/f2.jpg","https://img/f4.jpg"]`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("preview lacks %s:\n%s", want, s)
		}
	}
}

// Validation names every missing or bad key with file:line:col.
func TestCVATPresetValidate(t *testing.T) {
	cfg := "sinks:\n  - name: cvat\n    type: cvat\n    image_quality: 0\n"
	c, err := pipeline.ParseConfig(filepath.Join(t.TempDir(), "pipeline.yaml"), []byte(cfg))
	if err == nil {
		err = c.Resolve(registry())
	}
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		`pipeline.yaml:2:9: sinks[0] "cvat": api_key: is required`,
		`pipeline.yaml:2:9: sinks[0] "cvat": project_id: is required`,
		`pipeline.yaml:4:20: sinks[0] "cvat": image_quality: must be between 1 and 100`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

// A replay of a request whose import failed (an operator fixed the
// images' permissions) starts over: the task, which takes data once, is
// deleted and made anew under the same name. One live task per export.
func TestCVATPresetReplayAfterAFailedImport(t *testing.T) {
	c := vendortest.NewCVAT(t, cvatToken, 3)
	c.FailImport("Cannot fetch https://img/f1.jpg: 403 Forbidden")
	b := buildPreset(t, cvatYAML(c.URL, cvatToken, ""), nil)
	l := memory.NewLedger(time.Hour)
	req := b.render(t, mixedIssue("iss-11"))[0]
	wantDeliveryError(t, b.sink.Send(t.Context(), resumed(t, l, req)), false, "403 Forbidden")
	// The replay is a new message: the engine resumes it from the ledger.
	if err := b.sink.Send(t.Context(), resumed(t, l, req)); err != nil {
		t.Fatalf("replay: %v", err)
	}
	all := c.Tasks()
	if len(all) != 2 || !all[0].Deleted || all[0].Import != "failed" {
		t.Fatalf("tasks %+v, want the failed one deleted and a new one", all)
	}
	live := c.TasksNamed(cvatName)
	if len(live) != 1 || live[0].Import != "finished" || len(live[0].RemoteFiles) != 3 {
		t.Fatalf("live tasks %+v, want one, imported", live)
	}
	// Another copy of the request now finds the import finished and
	// changes nothing.
	before := c.RequestCount()
	if err := b.sink.Send(t.Context(), resumed(t, l, req)); err != nil {
		t.Fatal(err)
	}
	for _, r := range c.Requests()[before:] {
		if r.Method != http.MethodGet {
			t.Errorf("a repeat after the import finished sent %s %s", r.Method, r.Path)
		}
	}
}

// CVAT drops finished import requests after a while: a status read that
// answers 404 checks the task, whose data tells the import finished.
func TestCVATPresetImportForgottenByCVAT(t *testing.T) {
	c := vendortest.NewCVAT(t, cvatToken, 3)
	b := buildPreset(t, cvatYAML(c.URL, cvatToken, ""), nil)
	r := resumed(t, memory.NewLedger(time.Hour), b.render(t, mixedIssue("iss-12"))[0])
	wantDeliveryError(t, timedOutOn(t, c.Server, 4, b.sink, r), true, "no answer")
	c.ForgetRequests()
	if err := b.sink.Send(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	p := paths(c)
	if last := p[len(p)-1]; last != "GET /api/tasks/1" {
		t.Errorf("requests %v, want the task read last", p)
	}
	if k := c.CountsFor(vendortest.CVATAttachKey(cvatName)); k.Requests != 1 {
		t.Errorf("%d attaches, want 1", k.Requests)
	}
}

// An import that outlasts the attempt is in progress, not failed: the
// error is retryable and Pending (it spends no retry budget), and the
// next attempt follows the same import to its end.
func TestCVATPresetSlowImportIsInProgress(t *testing.T) {
	c := vendortest.NewCVAT(t, cvatToken, 3)
	c.SlowImports(1_000_000)
	b := buildPreset(t, cvatYAML(c.URL, cvatToken, ""), nil)
	r := resumed(t, memory.NewLedger(time.Hour), b.render(t, mixedIssue("iss-13"))[0])
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	de := wantDeliveryError(t, b.sink.Send(ctx, r), true, "still started when the attempt ended")
	if !de.Pending() {
		t.Errorf("%v is not pending: it would spend the retry budget", de)
	}
	c.SlowImports(1)
	if err := b.sink.Send(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	if tasks := c.Tasks(); len(tasks) != 1 || tasks[0].Import != "finished" {
		t.Fatalf("tasks %+v, want one, imported", tasks)
	}
	if k := c.CountsFor(vendortest.CVATAttachKey(cvatName)); k.Requests != 1 {
		t.Errorf("%d attaches, want 1", k.Requests)
	}
}

// image_quality takes 1 to 100, both included.
func TestCVATImageQualityRange(t *testing.T) {
	for _, tt := range []struct {
		quality int
		ok      bool
	}{{0, false}, {1, true}, {100, true}, {101, false}} {
		c := sinks.CVATDefaults()
		c.APIKey, c.ProjectID, c.ImageQuality = cvatToken, "3", tt.quality
		if err := c.Validate(); (err == nil) != tt.ok {
			t.Errorf("image_quality %d: Validate = %v, want ok %v", tt.quality, err, tt.ok)
		}
	}
}

// One task per CVATChunkFiles images: an export without any image makes
// no task at all, and one of exactly a chunk makes one.
func TestCVATPresetChunks(t *testing.T) {
	for _, tc := range []struct {
		name   string
		images int
		chunks []int // images per request
	}{
		{"lidar only", 0, nil},
		{"one image", 1, []int{1}},
		{"exactly a chunk", sinks.CVATChunkFiles, []int{sinks.CVATChunkFiles}},
		{"a chunk and one", sinks.CVATChunkFiles + 1, []int{sinks.CVATChunkFiles, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			els := []map[string]any{element("lidar", "frame", "f0", []any{lidarSensor("f0")}, label("l0", "car"))}
			for i := range tc.images {
				f := fmt.Sprintf("f%d", i+1)
				els = append(els, element("e"+f, "frame", f, []any{imageSensor(imageURL(f))}))
			}
			b := buildPreset(t, cvatYAML("https://cvat.example.com", cvatToken, ""), nil)
			var got []int
			for _, r := range b.render(t, issuePayload("iss-chunks", els...)) {
				var body struct {
					Files []string `json:"remote_files"`
				}
				if err := json.Unmarshal(r.Body, &body); err != nil {
					t.Fatal(err)
				}
				got = append(got, len(body.Files))
			}
			if !slices.Equal(got, tc.chunks) {
				t.Errorf("images per request %v, want %v", got, tc.chunks)
			}
		})
	}
}

// A replay deletes the failed import's task first. A task already gone
// (404: an operator deleted it) is as good as deleted, and the replay
// makes the new one; a delete that fails (5xx) is retried before anything
// else is done, so no task is made next to the failed one.
func TestCVATPresetReplayDeleteAnswers(t *testing.T) {
	for _, tc := range []struct {
		name string
		// prepare runs between the failed import and the replay.
		prepare func(t *testing.T, c *vendortest.CVAT)
		// failed is the replay's retryable error, "" when it succeeds.
		failed string
	}{
		{"task already gone", func(t *testing.T, c *vendortest.CVAT) { deleteCVATTask(t, c, 1) }, ""},
		{"delete answers 500", func(_ *testing.T, c *vendortest.CVAT) { c.FailNext(1, http.StatusInternalServerError, "") }, "500"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := vendortest.NewCVAT(t, cvatToken, 3)
			c.FailImport("Cannot fetch https://img/f1.jpg: 403 Forbidden")
			b := buildPreset(t, cvatYAML(c.URL, cvatToken, ""), nil)
			l := memory.NewLedger(time.Hour)
			req := b.render(t, mixedIssue("iss-16"))[0]
			wantDeliveryError(t, b.sink.Send(t.Context(), resumed(t, l, req)), false, "403 Forbidden")
			tc.prepare(t, c)
			err := b.sink.Send(t.Context(), resumed(t, l, req))
			if tc.failed != "" {
				wantDeliveryError(t, err, true, tc.failed)
				if n := len(c.Tasks()); n != 1 {
					t.Fatalf("%d tasks after the failed delete, want only the failed one", n)
				}
				// The next replay deletes it and starts over.
				err = b.sink.Send(t.Context(), resumed(t, l, req))
			}
			if err != nil {
				t.Fatalf("replay: %v", err)
			}
			live := c.TasksNamed(cvatName)
			if len(live) != 1 || live[0].ID == 1 || live[0].Import != "finished" {
				t.Fatalf("live tasks %+v, want one new task, imported", live)
			}
		})
	}
}

// deleteCVATTask deletes task id behind the sink's back, as an operator
// would in CVAT's UI.
func deleteCVATTask(t *testing.T, c *vendortest.CVAT, id int) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodDelete, fmt.Sprintf("%s/api/tasks/%d", c.URL, id), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+cvatToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("delete task %d: %d", id, resp.StatusCode)
	}
}

// The import lookup after an attempt whose attach timed out but reached
// CVAT: an import listed without an operation type (as an older CVAT
// lists it) is the task's, and is followed; an import the list does not
// show yet makes the attach answer 400 "more data", and is then looked up
// again and followed. Either way the task is imported, attached once.
func TestCVATPresetImportLookupAfterATimedOutAttach(t *testing.T) {
	for _, tc := range []struct {
		name    string
		results func(rq string) []any
		// attaches counts the attach requests, the refused repeat included.
		attaches int
	}{
		{"listed without a type", func(rq string) []any {
			return []any{map[string]any{"id": rq, "status": "queued", "operation": map[string]any{"task_id": 1}}}
		}, 1},
		{"not listed yet", func(string) []any { return []any{} }, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := vendortest.NewCVAT(t, cvatToken, 3)
			b := buildPreset(t, cvatYAML(c.URL, cvatToken, ""), nil)
			r := resumed(t, memory.NewLedger(time.Hour), b.render(t, mixedIssue("iss-17"))[0])
			wantDeliveryError(t, timedOutOn(t, c.Server, 3, b.sink, r), true, "no answer")
			res := tc.results(c.Tasks()[0].RequestID)
			c.AnswerNext(1, http.StatusOK, map[string]any{"count": len(res), "next": nil, "previous": nil, "results": res})
			if err := b.sink.Send(t.Context(), r); err != nil {
				t.Fatalf("retry: %v", err)
			}
			if tasks := c.TasksNamed(cvatName); len(tasks) != 1 || tasks[0].Import != "finished" {
				t.Fatalf("tasks %+v, want one, imported", tasks)
			}
			if k := c.CountsFor(vendortest.CVATAttachKey(cvatName)); k.Requests != tc.attaches || k.Accepted != 1 {
				t.Errorf("attaches %+v, want %d requests, 1 accepted", k, tc.attaches)
			}
		})
	}
}

// An import CVAT no longer knows, of a task that has no data: the import
// never happened. The attempt fails, retryable, its checkpoint cleared,
// and the next attempt attaches the data.
func TestCVATPresetForgottenImportOfATaskWithoutData(t *testing.T) {
	c := vendortest.NewCVAT(t, cvatToken, 3)
	id := c.AddTask(cvatName, 3)
	b := buildPreset(t, cvatYAML(c.URL, cvatToken, ""), nil)
	r := resumed(t, memory.NewLedger(time.Hour), b.render(t, mixedIssue("iss-18"))[0])
	for _, st := range [][2]string{{"cvat.task_id", fmt.Sprint(id)}, {"cvat.rq_id", "action=create&target=task&target_id=1"}} {
		if err := r.SaveStep(t.Context(), st[0], st[1]); err != nil {
			t.Fatal(err)
		}
	}
	wantDeliveryError(t, b.sink.Send(t.Context(), r), true, "is gone and the task has no data")
	if err := b.sink.Send(t.Context(), r); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if tasks := c.Tasks(); len(tasks) != 1 || tasks[0].Import != "finished" || len(tasks[0].RemoteFiles) != 3 {
		t.Fatalf("tasks %+v, want the one task, imported", tasks)
	}
}

// failingSteps is a ledger whose SaveStep fails.
type failingSteps struct{ backend.Ledger }

func (failingSteps) SaveStep(context.Context, backend.DeliveryKey, string, string) error {
	return errors.New("ledger unavailable")
}

// A checkpoint the ledger could not save is logged as a warning and the
// delivery goes on; one it saved is not logged.
func TestCVATPresetCheckpointFailureIsLogged(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ledger backend.Ledger
		warned bool
	}{
		{"ledger up", memory.NewLedger(time.Hour), false},
		{"ledger down", failingSteps{memory.NewLedger(time.Hour)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := vendortest.NewCVAT(t, cvatToken, 3)
			cfg := sinks.CVATDefaults()
			cfg.URL, cfg.APIKey, cfg.ProjectID = c.URL, cvatToken, "3"
			var logs bytes.Buffer // Send logs from its own goroutine only
			s, err := sinks.NewCVAT(cfg, pipeline.Env{Name: "cvat", Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			bodies, err := s.Render(t.Context(), mixedIssue("iss-19"), nil)
			if err != nil {
				t.Fatal(err)
			}
			r := resumed(t, tc.ledger, &pipeline.Request{Sink: "s", ExportID: "exp-1", ExportKey: "key1", Body: bodies[0]})
			if err := s.Send(t.Context(), r); err != nil {
				t.Fatal(err)
			}
			if got := strings.Contains(logs.String(), "could not checkpoint"); got != tc.warned {
				t.Errorf("warned %v, want %v; log:\n%s", got, tc.warned, logs.String())
			}
		})
	}
}
