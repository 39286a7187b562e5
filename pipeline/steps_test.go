package pipeline_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/builtin"
	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/internal/vendortest"
	"github.com/labelpipe/labelpipe/pipeline"
)

// stepVendor is a two-step sink: "create" a task unless the request's
// checkpoint names one, save it, then "attach", which the test makes fail
// or hang. It records what each attach saw.
type stepVendor struct {
	mu         sync.Mutex
	created    int
	attaches   []string // the task each attach used
	delivered  int
	failAttach int  // attaches left to fail
	hang       bool // attaches hang until their attempt ends
}

type stepperConfig struct{}

func (v *stepVendor) Render(_ context.Context, _ any, export map[string]any) ([][]byte, error) {
	b, err := json.Marshal(export["id"])
	return [][]byte{b}, err
}

func (v *stepVendor) Send(ctx context.Context, r *pipeline.Request) error {
	v.mu.Lock()
	task, ok := r.Step("task")
	if !ok {
		v.created++
		task = fmt.Sprintf("task-%d", v.created)
	}
	v.mu.Unlock()
	if !ok {
		if err := r.SaveStep(ctx, "task", task); err != nil {
			return &pipeline.DeliveryError{Retry: true, Msg: err.Error()}
		}
	}
	v.mu.Lock()
	v.attaches = append(v.attaches, task)
	hang, fail := v.hang, v.failAttach > 0
	if fail {
		v.failAttach--
	}
	v.mu.Unlock()
	switch {
	case hang:
		<-ctx.Done()
		return &pipeline.DeliveryError{Retry: true, Msg: "attach: " + ctx.Err().Error()}
	case fail:
		return &pipeline.DeliveryError{Retry: true, Status: 503, Msg: "attach failed"}
	}
	v.mu.Lock()
	v.delivered++
	v.mu.Unlock()
	return nil
}

func (v *stepVendor) state() (created int, attaches []string, delivered int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.created, append([]string(nil), v.attaches...), v.delivered
}

func stepperHarness(t *testing.T, cfg string, v *stepVendor) *harness {
	t.Helper()
	h := newHarnessWith(t, cfg, func(o *pipeline.Options) {
		r := builtin.Registry()
		r.RegisterSink("stepper", pipeline.NewSinkType("two checkpointed steps",
			func() *stepperConfig { return &stepperConfig{} },
			func(*stepperConfig, pipeline.Env) (pipeline.Sink, error) { return v, nil }))
		o.Registry = r
	})
	h.run()
	return h
}

func redisConfig(cfg, url string) string {
	cfg = strings.Replace(cfg, "broker: {type: memory}", "broker: {type: redis, claim_idle: 200ms}\nredis: {url: \""+url+"\"}", 1)
	return strings.Replace(cfg, "shutdown_timeout: 5s", "shutdown_timeout: 200ms", 1)
}

const stepperSink = `  - {name: steps, type: stepper, retry: {max_attempts: 5, initial_interval: 1ms, max_interval: 5ms}, breaker: {consecutive_failures: 1000}}
`

// A sink whose first step succeeded and whose second failed is retried
// with the first step's checkpoint: it never repeats the first step, on
// either backend's ledger.
func TestCheckpointedStepsSurviveARetry(t *testing.T) {
	for _, tc := range []struct {
		name  string
		redis bool
	}{{"memory", false}, {"redis", true}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := head("") + stepperSink
			if tc.redis {
				cfg = redisConfig(head(""), redistest.Start(t).URL()) + stepperSink
			}
			v := &stepVendor{failAttach: 2}
			h := stepperHarness(t, cfg, v)
			body, _ := samplePayload(t, "issue-frames.json")
			h.accept(body)
			h.eventually(10*time.Second, "the delivery", func() bool { _, _, d := v.state(); return d == 1 })
			created, attaches, _ := v.state()
			if created != 1 {
				t.Errorf("the first step ran %d times, want 1", created)
			}
			if want := []string{"task-1", "task-1", "task-1"}; strings.Join(attaches, ",") != strings.Join(want, ",") {
				t.Errorf("attaches used %v, want %v: each retry resumes at the saved step", attaches, want)
			}
			if n := h.sink("steps").DLQ; n != 0 {
				t.Errorf("%d dead letters, want 0", n)
			}
		})
	}
}

// A restart between the steps: the first process created the task and
// stopped while attaching; the second, on the same Redis, attaches to the
// same task instead of creating another.
func TestCheckpointedStepsSurviveARestart(t *testing.T) {
	cfg := redisConfig(head(""), redistest.Start(t).URL()) + stepperSink
	v := &stepVendor{hang: true}
	first := stepperHarness(t, cfg, v)
	body, _ := samplePayload(t, "issue-frames.json")
	first.accept(body)
	first.eventually(10*time.Second, "the first attach", func() bool { _, a, _ := v.state(); return len(a) >= 1 })
	first.stop()
	if err := <-first.done; err != nil {
		t.Fatalf("first Run: %v", err)
	}
	first.stop = nil

	v.mu.Lock()
	v.hang = false
	v.mu.Unlock()
	second := stepperHarness(t, cfg, v)
	second.eventually(15*time.Second, "the delivery after the restart", func() bool { _, _, d := v.state(); return d == 1 })
	created, attaches, _ := v.state()
	if created != 1 {
		t.Errorf("the task was created %d times across the restart, want 1", created)
	}
	for i, a := range attaches {
		if a != "task-1" {
			t.Errorf("attach %d used %q, want task-1 (the checkpoint of the first process)", i, a)
		}
	}
}

func cvatSink(c *vendortest.CVAT) string {
	return fmt.Sprintf(`  - {name: cvat, type: cvat, url: %q, api_key: cvat-token, project_id: 3, timeout: 5s,
     retry: {max_attempts: 5, initial_interval: 1ms, max_interval: 5ms}, breaker: {consecutive_failures: 1000}}
`, c.URL)
}

// A CVAT import that fails is dead-lettered at once with CVAT's reason,
// not retried into the same failure.
func TestCVATFailedImportIsDeadLettered(t *testing.T) {
	c := vendortest.NewCVAT(t, "cvat-token", 3)
	const reason = "Cannot fetch the remote file: 403 Forbidden"
	c.FailImport(reason)
	h := startHarness(t, head("")+cvatSink(c))
	body, _ := samplePayload(t, "issue-frames.json")
	a := h.accept(body)
	ds := h.waitDeadLetters("cvat", 1)
	if ds[0].ExportID != a.ID || ds[0].Attempts != 1 || !strings.Contains(ds[0].Error, reason) || !strings.Contains(ds[0].Answer, reason) {
		t.Fatalf("dead letter %+v, want export %s after 1 attempt, with CVAT's reason", ds[0], a.ID)
	}
	tasks := c.Tasks()
	if len(tasks) != 1 || tasks[0].Import != "failed" {
		t.Fatalf("tasks %+v, want the one whose import failed", tasks)
	}

	// The operator fixed the images and replays: the failed task is
	// replaced by one that imports.
	if code := h.adminDo(http.MethodPost, "/api/dlq/cvat/replay", nil, nil); code != http.StatusOK {
		t.Fatalf("replay: %d", code)
	}
	h.eventually(10*time.Second, "the replayed import", func() bool {
		live := c.TasksNamed(tasks[0].Name)
		return len(live) == 1 && live[0].Import == "finished"
	})
	if all := c.Tasks(); len(all) != 2 || !all[0].Deleted {
		t.Errorf("tasks %+v, want the failed one deleted, one live", all)
	}
	if n := h.sink("cvat").DLQ; n != 0 {
		t.Errorf("%d dead letters after the replay, want 0", n)
	}
}

// The daemon stops between CVAT's steps (the task made and checkpointed,
// the attach under way), and another process on the same Redis takes the
// request over: one task, its data attached once.
func TestCVATRestartBetweenStepsMakesOneTask(t *testing.T) {
	c := vendortest.NewCVAT(t, "cvat-token", 3)
	cfg := redisConfig(head(""), redistest.Start(t).URL()) + cvatSink(c)
	attach := func(m, p string) bool { return m == "POST" && strings.HasSuffix(p, "/data/") }
	c.SetLatencyOn(time.Hour, attach)
	first := startHarness(t, cfg)
	body, _ := samplePayload(t, "issue-frames.json")
	first.accept(body)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := c.WaitArrived(ctx, 3); err != nil { // lookup, create, attach
		t.Fatal(err)
	}
	first.stop()
	if err := <-first.done; err != nil {
		t.Fatalf("first Run: %v", err)
	}
	first.stop = nil
	c.FailNext(1, 503, "") // the held attach never reaches CVAT's queue
	c.SetLatency(0)
	if err := c.WaitRequests(ctx, 3); err != nil {
		t.Fatal(err)
	}
	before := c.RequestCount()

	second := startHarness(t, cfg)
	second.eventually(15*time.Second, "the import after the restart", func() bool {
		tasks := c.Tasks()
		return len(tasks) > 0 && tasks[len(tasks)-1].Import == "finished"
	})
	tasks := c.Tasks()
	if len(tasks) != 1 {
		t.Fatalf("%d tasks across the restart, want 1: %+v", len(tasks), tasks)
	}
	if k := c.CountsFor(vendortest.CVATTaskKey(tasks[0].Name)); k.Requests != 1 {
		t.Errorf("%d creates, want 1", k.Requests)
	}
	if k := c.CountsFor(vendortest.CVATAttachKey(tasks[0].Name)); k.Accepted != 1 || k.Duplicates != 0 {
		t.Errorf("attaches %+v, want one accepted, no repeat", k)
	}
	if n := second.sink("cvat").DLQ; n != 0 {
		t.Errorf("%d dead letters, want 0", n)
	}
	for _, r := range c.Requests()[before:] {
		if r.Path == "/api/tasks" {
			t.Errorf("the second process sent %s %s: the checkpoint in Redis names the task", r.Method, r.Path)
		}
	}
}

// stepperlessHarness starts a harness on the built-in registry.
func stepperlessHarness(t *testing.T, cfg string) *harness { t.Helper(); return startHarness(t, cfg) }

// An import that takes many attempts to follow is delivered, however small
// the retry budget: following it spends none, nor does it trip the
// breaker.
func TestCVATSlowImportSpendsNoRetryBudget(t *testing.T) {
	c := vendortest.NewCVAT(t, "cvat-token", 3)
	// An attempt follows the import for 1s (about 5 status reads, the
	// wait doubling from 50ms), then the next comes 2s later: 12 reads take
	// 3 attempts and about 6s, over both max_attempts and max_elapsed. (An
	// attempt of 150ms made the task's create time out on a loaded machine.)
	c.SlowImports(12)
	h := startHarness(t, head("")+fmt.Sprintf(`  - {name: cvat, type: cvat, url: %q, api_key: cvat-token, project_id: 3, timeout: 1s,
     retry: {max_attempts: 2, initial_interval: 1ms, max_interval: 5ms, max_elapsed: 1s}, breaker: {consecutive_failures: 2}}
`, c.URL))
	body, _ := samplePayload(t, "issue-frames.json")
	h.accept(body)
	h.eventually(30*time.Second, "the slow import", func() bool {
		tasks := c.Tasks()
		return len(tasks) == 1 && tasks[0].Import == "finished"
	})
	h.eventually(5*time.Second, "the delivery to finish", func() bool { return h.sink("cvat").QueueDepth == 0 })
	if n := h.sink("cvat").DLQ; n != 0 {
		t.Fatalf("%d dead letters: %+v", n, h.deadLetters("cvat"))
	}
	if s := h.sink("cvat").Breaker; s != "closed" {
		t.Errorf("breaker %s, want closed", s)
	}
	if k := c.CountsFor(vendortest.CVATAttachKey(c.Tasks()[0].Name)); k.Requests != 1 {
		t.Errorf("%d attaches, want 1", k.Requests)
	}
}
