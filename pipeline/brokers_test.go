package pipeline_test

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/internal/vendortest"
)

// The behaviour suite below runs every row against both brokers. The
// memory broker hands the decoded payload to the fan-out in the message
// context; the Redis broker carries only bytes and metadata. A difference
// in what gets encoded, or in how messages are acked and redelivered,
// shows as a row that passes on one broker and fails on the other.

// brokers are the broker kinds every row runs against.
var brokers = []string{"memory", "redis"}

// onBroker rewrites a config made by head() to use the given broker. For
// redis it starts a redis-server of the test's own on a unix socket.
func onBroker(t *testing.T, broker, cfg string) string {
	t.Helper()
	const memory = "broker: {type: memory}"
	if !strings.Contains(cfg, memory) {
		t.Fatalf("config does not come from head(): no %q", memory)
	}
	switch broker {
	case "memory":
		return cfg
	case "redis":
		srv := redistest.Start(t)
		return strings.Replace(cfg, memory, "broker: {type: redis, claim_idle: 200ms}\nredis: {url: \""+srv.URL()+"\"}", 1)
	}
	t.Fatalf("unknown broker %q", broker)
	return ""
}

// scaleTasksOf lists Scale's tasks of one Aquarium issue.
func scaleTasksOf(sc *vendortest.Scale, issue string) []vendortest.ScaleTask {
	var out []vendortest.ScaleTask
	for _, tk := range sc.Tasks() {
		if tk.Metadata["issue_id"] == issue {
			out = append(out, tk)
		}
	}
	return out
}

// lsTasksOf lists Label Studio's tasks of one Aquarium issue.
func lsTasksOf(ls *vendortest.LabelStudio, issue string) []vendortest.LabelStudioTask {
	var out []vendortest.LabelStudioTask
	for _, tk := range ls.Tasks(lsProject) {
		if tk.Meta["issue_id"] == issue {
			out = append(out, tk)
		}
	}
	return out
}

// elementIDs are the element ids Scale's tasks carry, sorted.
func elementIDs(tasks []vendortest.ScaleTask) []string {
	out := make([]string, 0, len(tasks))
	for _, tk := range tasks {
		el, _ := tk.Metadata["element_id"].(string)
		out = append(out, el)
	}
	slices.Sort(out)
	return out
}

// issue-frames.json's elements, as the sinks should see them untouched.
var frameElements = []string{"frame_000481", "frame_000482", "frame_000517"}

func TestBehaviourOnEveryBroker(t *testing.T) {
	rows := []struct {
		name string
		run  func(t *testing.T, broker string)
	}{
		{"answers: accepted, then duplicate with the first id, filtered", func(t *testing.T, broker string) {
			h := startHarness(t, onBroker(t, broker, head(`  - {type: filter, expr: '.project != "skip_me"'}
  - {type: dedupe, store: memory, ttl: 1h}`)+`  - {name: archive, type: file, path: out/archive.jsonl}
`))
			body, _ := samplePayload(t, "issue-frames.json")
			first := h.accept(body)
			if len(first.TraceID) != 32 {
				t.Errorf("trace_id = %q, want 32 hex digits", first.TraceID)
			}
			if a := h.send(hookReq{secret: hookSecret, body: body}); a.Code != http.StatusOK || a.Status != "duplicate" || a.ID != first.ID {
				t.Errorf("repeat: %d %s, want 200 duplicate with id %s", a.Code, a.Raw, first.ID)
			}
			skipped, _ := samplePayload(t, "issue-frames.json")
			skipped = []byte(strings.Replace(string(skipped), `"project":"pedestrian_detection"`, `"project":"skip_me"`, 1))
			if a := h.send(hookReq{secret: hookSecret, body: skipped}); a.Code != http.StatusOK || a.Status != "filtered" {
				t.Errorf("filtered export: %d %s, want 200 filtered", a.Code, a.Raw)
			}
		}},
		{"202 accepted: every sink gets the request", func(t *testing.T, broker string) {
			v := newVendors(t)
			h := startHarness(t, onBroker(t, broker, v.config(fastPolicy)))
			body, issue := samplePayload(t, "issue-frames.json")
			a := h.accept(body)
			waitFake(t, "scale's three tasks", func(ctx context.Context) error { return v.sc.WaitAccepted(ctx, 3) })
			waitFake(t, "labelbox's batch", func(ctx context.Context) error { return v.lb.WaitAccepted(ctx, 1) })
			waitFake(t, "label studio's import", func(ctx context.Context) error { return v.ls.WaitAccepted(ctx, 1) })
			if got := elementIDs(scaleTasksOf(v.sc, issue)); !slices.Equal(got, frameElements) {
				t.Errorf("scale tasks of %s are for elements %v, want %v", issue, got, frameElements)
			}
			bs := v.lb.Batches(lbProject)
			if len(bs) != 1 || !strings.Contains(bs[0].Name, issue) || len(bs[0].GlobalKeys) != 3 {
				t.Errorf("labelbox batches = %+v, want one for %s with 3 frames", bs, issue)
			}
			ls := lsTasksOf(v.ls, issue)
			if len(ls) != 3 || ls[0].Meta["export_id"] != a.ID {
				t.Errorf("label studio tasks = %+v, want 3 of export %s", ls, a.ID)
			}
		}},
		{"transform: the sinks get the stage's output, not the raw body", func(t *testing.T, broker string) {
			// The transform keeps the first element and renames it: the
			// raw body would give Scale three tasks with the old names.
			v := newVendors(t)
			h := startHarness(t, onBroker(t, broker, head(`  - {type: transform, expr: '.issue.elements |= (.[:1] | map(.element_id = "moved_" + .element_id))'}`)+
				scaleSink(v.sc.TaskURL(), fastPolicy)+labelStudioSink(v.ls, fastPolicy)))
			body, issue := samplePayload(t, "issue-frames.json")
			h.accept(body)
			waitFake(t, "scale's task", func(ctx context.Context) error { return v.sc.WaitRequests(ctx, 1) })
			waitFake(t, "label studio's import", func(ctx context.Context) error { return v.ls.WaitRequests(ctx, 1) })
			if got, want := elementIDs(scaleTasksOf(v.sc, issue)), []string{"moved_frame_000481"}; !slices.Equal(got, want) {
				t.Errorf("scale tasks are for elements %v, want %v (the transformed payload)", got, want)
			}
			ls := lsTasksOf(v.ls, issue)
			if len(ls) != 1 || ls[0].Meta["element_id"] != "moved_frame_000481" {
				t.Errorf("label studio tasks = %+v, want one for moved_frame_000481", ls)
			}
		}},
		{"sink filter: the sink skips what its filter is false for", func(t *testing.T, broker string) {
			// scale comes first in the config, so an export's fan-out
			// has decided for scale by the time label studio has it; with
			// max_in_flight 1 scale delivers its queue in order, so a
			// skipped export that reached its queue would arrive before
			// the next one.
			v := newVendors(t)
			h := startHarness(t, onBroker(t, broker, head("")+
				scaleSink(v.sc.TaskURL(), fastPolicy+`
    max_in_flight: 1
    filter: '.project != "skip_me"'`)+labelStudioSink(v.ls, fastPolicy)))
			skipped, skippedIssue := samplePayload(t, "issue-frames.json")
			skipped = []byte(strings.Replace(string(skipped), `"project":"pedestrian_detection"`, `"project":"skip_me"`, 1))
			h.accept(skipped)
			h.eventually(10*time.Second, "label studio to get the skipped export", func() bool {
				return len(lsTasksOf(v.ls, skippedIssue)) == 3
			})
			passed, passedIssue := samplePayload(t, "issue-frames.json")
			h.accept(passed)
			waitFake(t, "scale's tasks of the second export", func(ctx context.Context) error { return v.sc.WaitRequests(ctx, 3) })
			if got := scaleTasksOf(v.sc, skippedIssue); len(got) != 0 {
				t.Errorf("scale got %d tasks of the export its filter is false for", len(got))
			}
			if got := elementIDs(scaleTasksOf(v.sc, passedIssue)); !slices.Equal(got, frameElements) {
				t.Errorf("scale tasks of the passing export = %v, want %v", got, frameElements)
			}
			if n := v.sc.RequestCount(); n != 3 {
				t.Errorf("scale got %d requests, want 3 (the passing export's only)", n)
			}
		}},
		{"permanent 4xx: dead letter with the vendor's answer; replay delivers it once", func(t *testing.T, broker string) {
			sc := vendortest.NewScale(t, scaleKey)
			h := startHarness(t, onBroker(t, broker, head("")+scaleSink(sc.TaskURL(), fastPolicy+`
    max_in_flight: 1`)))
			sc.FailNext(1, http.StatusBadRequest, "")
			body, issue := samplePayload(t, "issue-frames.json")
			a := h.accept(body)
			ds := h.waitDeadLetters("scale", 1)
			waitFake(t, "the other chunks", func(ctx context.Context) error { return sc.WaitAccepted(ctx, 2) })
			d := ds[0]
			if len(ds) != 1 || d.ExportID != a.ID || d.Status != http.StatusBadRequest || d.Attempts != 1 || d.TraceID != a.TraceID {
				t.Fatalf("dead letters = %+v, want one for %s with status 400 after 1 attempt, trace %s", ds, a.ID, a.TraceID)
			}
			// The fake's Scale error body: {"status_code": 400, "error": ...}.
			if !strings.Contains(d.Answer, `"status_code":400`) || !strings.Contains(d.Answer, http.StatusText(http.StatusBadRequest)) {
				t.Errorf("dead letter answer = %q, want the vendor's error body", d.Answer)
			}
			if !strings.Contains(d.Error, "400") {
				t.Errorf("dead letter error %q: want the status", d.Error)
			}
			if s := h.sink("scale"); s.DLQ != 1 {
				t.Errorf("/api/sinks dlq = %d, want 1", s.DLQ)
			}

			var rep struct {
				Replayed int `json:"replayed"`
			}
			if code := h.adminDo(http.MethodPost, "/api/dlq/scale/replay", nil, &rep); code != http.StatusOK || rep.Replayed != 1 {
				t.Fatalf("replay: %d replayed %d, want 200 and 1", code, rep.Replayed)
			}
			waitFake(t, "the replayed chunk", func(ctx context.Context) error { return sc.WaitAccepted(ctx, 3) })
			if got := elementIDs(scaleTasksOf(sc, issue)); !slices.Equal(got, frameElements) {
				t.Errorf("scale tasks after replay = %v, want %v", got, frameElements)
			}
			h.eventually(10*time.Second, "the DLQ to empty", func() bool { return len(h.deadLetters("scale")) == 0 })
			h.eventually(10*time.Second, "the queue to empty", func() bool { return h.sink("scale").QueueDepth == 0 })
			if code := h.adminDo(http.MethodPost, "/api/dlq/scale/replay", nil, &rep); code != http.StatusOK || rep.Replayed != 0 {
				t.Errorf("second replay: %d replayed %d, want 200 and 0", code, rep.Replayed)
			}
			if sc.RequestCount() != 4 || sc.Accepted() != 3 || sc.Duplicates() != 0 {
				t.Errorf("scale: %d requests, %d accepted, %d duplicates; want 4 (3 + the failed one), 3 and 0", sc.RequestCount(), sc.Accepted(), sc.Duplicates())
			}
			var e map[string]any
			if code := h.adminDo(http.MethodPost, "/api/dlq/nosuch/replay", nil, &e); code != http.StatusBadRequest {
				t.Errorf("replay of an unknown sink = %d, want 400", code)
			}
		}},
		{"shutdown drains the delivery under way", func(t *testing.T, broker string) {
			ls := vendortest.NewLabelStudio(t, lsToken)
			ls.SetLatency(time.Hour) // held until the test lowers it
			h := startHarness(t, onBroker(t, broker, head("")+labelStudioSink(ls, fastPolicy)))
			body, issue := samplePayload(t, "issue-frames.json")
			h.accept(body)
			waitFake(t, "the delivery to reach the vendor", func(ctx context.Context) error { return ls.WaitArrived(ctx, 1) })
			h.stop()
			h.eventually(5*time.Second, "the pipeline to start draining", func() bool {
				err := h.p.Ready(t.Context())
				return err != nil && strings.Contains(err.Error(), "shutting down")
			})
			select {
			case err := <-h.done:
				h.done <- err
				t.Fatalf("Run returned (%v) while a delivery was still held by the vendor", err)
			default:
			}
			ls.SetLatency(0)
			select {
			case err := <-h.done:
				h.done <- err // for the cleanup
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return after the held delivery finished")
			}
			if got := len(lsTasksOf(ls, issue)); got != 3 || ls.Accepted() != 1 {
				t.Errorf("vendor has %d tasks from %d imports when Run returned, want 3 from the held one", got, ls.Accepted())
			}
		}},
	}
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			for _, broker := range brokers {
				t.Run(broker, func(t *testing.T) { row.run(t, broker) })
			}
		})
	}
}
