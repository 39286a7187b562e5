package sinks_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/labelpipe/labelpipe/internal/vendortest"
	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/resilience"
	"github.com/labelpipe/labelpipe/sinks"
)

// These tests drive each vendor preset, built from YAML the way the
// loader builds it, against its fake vendor over real HTTP.

// built is a preset built from YAML, with the metrics it records.
type built struct {
	sink    pipeline.Sink
	metrics *sdkmetric.ManualReader
	dir     string
}

// buildPreset decodes, validates and builds the one sink in yaml (the
// text below `sinks:`). files are written into the config's directory
// first.
func buildPreset(t *testing.T, yaml string, files map[string]string) built {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := pipeline.ParseConfig(filepath.Join(dir, "pipeline.yaml"), []byte("sinks:\n"+yaml))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, yaml)
	}
	r := registry()
	if err := cfg.Resolve(r); err != nil {
		t.Fatalf("resolve: %v\n%s", err, yaml)
	}
	sc := cfg.Sinks[0]
	st, _ := r.Sink(sc.Type)
	reader := sdkmetric.NewManualReader()
	s, err := st.Build(sc.Options, pipeline.Env{Name: sc.Name, ConfigDir: cfg.Dir(),
		MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))})
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	return built{sink: s, metrics: reader, dir: dir}
}

// skipped reads labelpipe.sink.elements.skipped by reason.
func (b built) skipped(t *testing.T) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := b.metrics.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "labelpipe.sink.elements.skipped" {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				r, _ := dp.Attributes.Value("reason")
				out[r.AsString()] += dp.Value
			}
		}
	}
	return out
}

// render renders payload for export key "key1" and wraps the bodies as
// the router would.
func (b built) render(t *testing.T, payload map[string]any) []*pipeline.Request {
	t.Helper()
	iss := payload["issue"].(map[string]any)
	bodies, err := b.sink.Render(t.Context(), payload, map[string]any{"key": "key1", "id": "exp-1", "issue_id": iss["id"]})
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	out := make([]*pipeline.Request, len(bodies))
	for i, body := range bodies {
		out[i] = &pipeline.Request{Sink: "s", ExportID: "exp-1", ExportKey: "key1", Chunk: i, Chunks: len(bodies), Body: body}
	}
	return out
}

// ---------------------------------------------------------------------------
// Payloads

func issuePayload(id string, elements ...map[string]any) map[string]any {
	els := make([]any, len(elements))
	for i, e := range elements {
		els[i] = e
	}
	return map[string]any{"event": "issue-exported", "project": "peds", "issue": map[string]any{"id": id, "elements": els}}
}

func imageSensor(url string) any {
	return map[string]any{"sensor_id": "cam", "data_urls": map[string]any{"image_url": url}}
}

func lidarSensor(frame string) any {
	return map[string]any{"sensor_id": "lidar", "data_urls": map[string]any{"pointcloud_url": "https://pc/" + frame + ".pcd"}}
}

func label(uuid, class string) any { return map[string]any{"uuid": uuid, "label": class} }

// element is an issue element on frame with the given sensors and labels.
func element(id, typ, frame string, sensors []any, labels ...any) map[string]any {
	return map[string]any{"element_id": id, "element_type": typ, "frame_id": frame, "dataset": "ds",
		"frame_data": map[string]any{"sensor_data": sensors, "label_data": labels}}
}

func imageURL(frame string) string { return "https://img/" + frame + ".jpg" }

// mixedIssue has a frame with two classes, a crop of one label, a frame
// whose point cloud comes first, a lidar-only frame and a frame without
// labels.
func mixedIssue(id string) map[string]any {
	return issuePayload(id,
		element("e1", "frame", "f1", []any{imageSensor(imageURL("f1"))}, label("l1", "car"), label("l2", "pedestrian"), label("l3", "car")),
		element("l2", "crop", "f1", []any{imageSensor(imageURL("f1"))}, label("l1", "car"), label("l2", "pedestrian")),
		element("e3", "frame", "f2", []any{lidarSensor("f2"), imageSensor(imageURL("f2"))}, label("l4", "cyclist")),
		element("e4", "frame", "f3", []any{lidarSensor("f3")}, label("l5", "car")),
		element("e5", "frame", "f4", []any{imageSensor(imageURL("f4"))}),
	)
}

// timedOutThenDone makes one attempt that times out after the vendor got
// the request, lets the vendor finish it, and waits until it has.
func timedOutThenDone(t *testing.T, srv *vendortest.Server, s pipeline.Sink, r *pipeline.Request) error {
	t.Helper()
	before := srv.RequestCount()
	srv.SetLatency(time.Hour)
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		if srv.WaitArrived(ctx, before+1) == nil {
			cancel()
		}
	}()
	err := s.Send(ctx, r)
	cancel()
	srv.SetLatency(0) // the held request is carried out
	waitCtx, stop := context.WithTimeout(t.Context(), 10*time.Second)
	defer stop()
	if werr := srv.WaitRequests(waitCtx, before+1); werr != nil {
		t.Fatal(werr)
	}
	return err
}

func wantDeliveryError(t *testing.T, err error, retry bool, contains ...string) *pipeline.DeliveryError {
	t.Helper()
	var de *pipeline.DeliveryError
	if !errors.As(err, &de) {
		t.Fatalf("error %v (%T), want a *pipeline.DeliveryError", err, err)
	}
	if de.Retry != retry {
		t.Errorf("Retry = %v, want %v: %v", de.Retry, retry, err)
	}
	for _, c := range contains {
		if !strings.Contains(err.Error(), c) {
			t.Errorf("error %q does not say %q", err, c)
		}
	}
	return de
}

// prefixProxy serves backend under prefix, as a reverse proxy with a
// path prefix does.
func prefixProxy(t *testing.T, backend, prefix string) string {
	t.Helper()
	u, err := url.Parse(backend)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.StripPrefix(prefix, rp))
	t.Cleanup(srv.Close)
	return srv.URL + prefix
}

// ---------------------------------------------------------------------------
// Labelbox

func labelboxYAML(base, key, extra string) string {
	return fmt.Sprintf("  - {name: lb, type: labelbox, url: %q, api_key: %q, project_id: proj-1%s}\n", base, key, extra)
}

func TestLabelboxPresetQueuesTheFramesOnce(t *testing.T) {
	lb := vendortest.NewLabelbox(t, "lb-key")
	b := buildPreset(t, labelboxYAML(lb.URL, "lb-key", ", priority: 2"), nil)
	reqs := b.render(t, mixedIssue("iss-1"))
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	for range 2 { // the second is answered "already exists": delivered
		if err := b.sink.Send(t.Context(), reqs[0]); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	batches := lb.Batches("proj-1")
	if len(batches) != 1 {
		t.Fatalf("%d batches, want 1: %+v", len(batches), batches)
	}
	got := batches[0]
	// f1 once (frame and crop), f2 whose image is not its first sensor,
	// f4 without labels (Labelbox needs none); not the lidar-only f3.
	if want := []string{"f1", "f2", "f4"}; !slices.Equal(got.GlobalKeys, want) || got.Name != "aquarium-iss-1-key1-0" || got.Priority != 2 {
		t.Errorf("batch %+v, want name aquarium-iss-1-key1-0, keys %v, priority 2", got, want)
	}
	if c := lb.CountsFor(got.Name); c.Accepted != 1 || c.Duplicates != 1 {
		t.Errorf("counts for the batch name %+v, want 1 accepted and 1 duplicate", c)
	}
	if s := b.skipped(t); s[sinks.SkipNoImage] != 1 || len(s) != 1 {
		t.Errorf("skipped %v, want 1 no_image", s)
	}
}

func TestLabelboxPresetErrorClasses(t *testing.T) {
	tests := []struct {
		name   string
		inject func(lb *vendortest.Labelbox)
		retry  bool
		status int
		after  time.Duration
		says   string
	}{
		{"internal error in a 200", func(lb *vendortest.Labelbox) { lb.FailNextGraphQL(1, "INTERNAL_SERVER_ERROR", "boom") }, true, 200, 0, "INTERNAL_SERVER_ERROR"},
		{"rate limit in a 200", func(lb *vendortest.Labelbox) { lb.RateLimitNext(1) }, true, 200, 0, "exceeded"},
		{"rate limit worded only", func(lb *vendortest.Labelbox) { lb.FailNextGraphQL(1, "", vendortest.LabelboxRateLimitMessage) }, true, 200, 0, "exceeded"},
		{"validation failed", func(lb *vendortest.Labelbox) { lb.FailNextGraphQL(1, "GRAPHQL_VALIDATION_FAILED", "bad field") }, false, 200, 0, "GRAPHQL_VALIDATION_FAILED"},
		{"not authorized", func(lb *vendortest.Labelbox) { lb.FailNextGraphQL(1, "AUTHORIZATION_ERROR", "no access") }, false, 200, 0, "AUTHORIZATION_ERROR"},
		{"malformed", func(lb *vendortest.Labelbox) { lb.FailNextGraphQL(1, "MALFORMED_REQUEST", "bad") }, false, 200, 0, "MALFORMED_REQUEST"},
		{"unknown code", func(lb *vendortest.Labelbox) { lb.FailNextGraphQL(1, "SOMETHING_NEW", "new") }, false, 200, 0, "SOMETHING_NEW"},
		{"503 with Retry-After", func(lb *vendortest.Labelbox) { lb.FailNext(1, 503, "3") }, true, 503, 3 * time.Second, "503"},
		{"429", func(lb *vendortest.Labelbox) { lb.FailNext(1, 429, "") }, true, 429, 0, "429"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lb := vendortest.NewLabelbox(t, "lb-key")
			b := buildPreset(t, labelboxYAML(lb.URL, "lb-key", ""), nil)
			r := b.render(t, mixedIssue("iss-2"))[0]
			tt.inject(lb)
			de := wantDeliveryError(t, b.sink.Send(t.Context(), r), tt.retry, tt.says)
			if de.Status != tt.status || de.After != tt.after {
				t.Errorf("status %d after %v, want %d after %v", de.Status, de.After, tt.status, tt.after)
			}
			if len(lb.Batches("proj-1")) != 0 {
				t.Fatal("a batch was created by a failed request")
			}
			// The next attempt gets through.
			if err := b.sink.Send(t.Context(), r); err != nil {
				t.Fatalf("second attempt: %v", err)
			}
			if n := len(lb.Batches("proj-1")); n != 1 {
				t.Errorf("%d batches, want 1", n)
			}
		})
	}
}

func TestLabelboxPresetWrongKeyIsPermanent(t *testing.T) {
	lb := vendortest.NewLabelbox(t, "lb-key")
	b := buildPreset(t, labelboxYAML(lb.URL, "other-key", ""), nil)
	err := b.sink.Send(t.Context(), b.render(t, mixedIssue("iss-3"))[0])
	wantDeliveryError(t, err, false, "AUTHENTICATION_ERROR")
	if strings.Contains(err.Error(), "other-key") {
		t.Errorf("the error shows the key: %v", err)
	}
}

// failedDataRowIds: the batch is created without those keys; the next
// attempt queues them as a batch of their own, and until they are
// queued the request is not delivered.
func TestLabelboxPresetRetriesFailedKeys(t *testing.T) {
	lb := vendortest.NewLabelbox(t, "lb-key")
	b := buildPreset(t, labelboxYAML(lb.URL, "lb-key", ""), nil)
	r := b.render(t, mixedIssue("iss-4"))[0]
	lb.FailGlobalKeys(2, "f2") // refused by the batch and by the first retry

	wantDeliveryError(t, b.sink.Send(t.Context(), r), true, `"f2"`, "not queued")
	wantDeliveryError(t, b.sink.Send(t.Context(), r), true, `"f2"`, "not queued")
	if err := b.sink.Send(t.Context(), r); err != nil {
		t.Fatalf("third attempt: %v", err)
	}
	batches := lb.Batches("proj-1")
	var queued []string
	for _, bt := range batches {
		queued = append(queued, bt.GlobalKeys...)
	}
	slices.Sort(queued)
	if !slices.Equal(queued, []string{"f1", "f2", "f4"}) || len(batches) != 3 {
		t.Fatalf("batches %+v: want f1, f2, f4 queued once each, f2 in a retry batch", batches)
	}
	if batches[1].Name != batches[0].Name+"-retry1" || batches[2].Name != batches[0].Name+"-retry2" {
		t.Errorf("retry batches %q, %q are not named after %q and their round", batches[1].Name, batches[2].Name, batches[0].Name)
	}
	// Delivered: a repeat changes nothing.
	if err := b.sink.Send(t.Context(), r); err != nil {
		t.Fatalf("repeat: %v", err)
	}
	if n := len(lb.Batches("proj-1")); n != 3 {
		t.Errorf("%d batches after a repeat, want 3", n)
	}
}

// Keys that never get in exhaust the retries and are dead-lettered by
// name.
func TestLabelboxPresetDeadLettersFailedKeysByName(t *testing.T) {
	lb := vendortest.NewLabelbox(t, "lb-key")
	b := buildPreset(t, labelboxYAML(lb.URL, "lb-key", ""), nil)
	lb.FailGlobalKeys(100, "f1", "f4")
	p := fastPolicy(t, func(c *resilience.Config) { c.Breaker.ConsecutiveFailures = 50 }, resilience.Options{Name: "lb"})
	n, _, err := deliver(t.Context(), p, b.sink, b.render(t, mixedIssue("iss-5"))[0], seconds(5))
	if err == nil || n != 6 {
		t.Fatalf("%d attempts, err %v; want 6 attempts and an error", n, err)
	}
	for _, k := range []string{`"f1"`, `"f4"`, "2 of 2 global keys"} {
		if !strings.Contains(err.Error(), k) {
			t.Errorf("final error %q does not name %s", err, k)
		}
	}
}

func TestLabelboxPresetRetryAfterATimeoutThatSucceeded(t *testing.T) {
	lb := vendortest.NewLabelbox(t, "lb-key")
	b := buildPreset(t, labelboxYAML(lb.URL, "lb-key", ""), nil)
	r := b.render(t, mixedIssue("iss-6"))[0]
	wantDeliveryError(t, timedOutThenDone(t, lb.Server, b.sink, r), true, "no answer")
	if err := b.sink.Send(t.Context(), r); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if n := len(lb.Batches("proj-1")); n != 1 {
		t.Fatalf("%d batches, want 1", n)
	}
	if c := lb.CountsFor("aquarium-iss-6-key1-0"); c.Requests != 2 || c.Accepted != 1 || c.Duplicates != 1 {
		t.Errorf("counts %+v, want 2 requests: 1 accepted, 1 already exists", c)
	}
}

// url keeps a proxy's path prefix; api_key_file is read relative to the
// config file.
func TestLabelboxPresetProxyAndKeyFile(t *testing.T) {
	lb := vendortest.NewLabelbox(t, "lb-key")
	base := prefixProxy(t, lb.URL, "/vendors/labelbox")
	b := buildPreset(t, fmt.Sprintf("  - {name: lb, type: labelbox, url: %q, api_key_file: secrets/lb, project_id: proj-1}\n", base),
		map[string]string{"secrets/lb": "lb-key\n"})
	r := b.render(t, mixedIssue("iss-7"))[0]
	if err := b.sink.Send(t.Context(), r); err != nil {
		t.Fatalf("send: %v", err)
	}
	if got := lb.Requests()[0].Path; got != "/graphql" {
		t.Errorf("vendor saw %s", got)
	}
	d := b.sink.(pipeline.Describer).Describe(r)
	out, _ := json.Marshal(d)
	if d["url"] != base+"/graphql" || strings.Contains(string(out), "lb-key") || !strings.Contains(string(out), `"Authorization":"REDACTED"`) {
		t.Errorf("describe: %s", out)
	}
}

// ---------------------------------------------------------------------------
// Scale

func scaleYAML(base, key, extra string) string {
	return fmt.Sprintf("  - {name: scale, type: scale, url: %q, api_key: %q, project: relabel%s}\n", base, key, extra)
}

func TestScalePresetOneTaskPerElement(t *testing.T) {
	sc := vendortest.NewScale(t, "sc-key")
	b := buildPreset(t, scaleYAML(sc.URL, "sc-key", ""), nil)
	reqs := b.render(t, mixedIssue("iss-1"))
	for _, r := range reqs {
		if err := b.sink.Send(t.Context(), r); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	type task struct{ uid, attachment, objects string }
	var got []task
	for _, tk := range sc.Tasks() {
		objs, _ := json.Marshal(tk.Geometries["box"].(map[string]any)["objects_to_annotate"])
		got = append(got, task{tk.UniqueID, tk.Attachment, string(objs)})
		if tk.Project != "relabel" || tk.Metadata["issue_id"] != "iss-1" || !strings.Contains(tk.Instruction, "iss-1") {
			t.Errorf("task %+v", tk)
		}
	}
	want := []task{
		{"key1-e1", imageURL("f1"), `["car","pedestrian"]`},
		{"key1-l2", imageURL("f1"), `["pedestrian"]`}, // the crop: its own label's class only
		{"key1-e3", imageURL("f2"), `["cyclist"]`},    // the image, not the point cloud before it
	}
	if !slices.Equal(got, want) {
		t.Errorf("tasks\n%+v\nwant\n%+v", got, want)
	}
	if s := b.skipped(t); s[sinks.SkipNoImage] != 1 || s[sinks.SkipNoLabels] != 1 {
		t.Errorf("skipped %v, want 1 no_image (e4) and 1 no_labels (e5)", s)
	}
}

func TestScalePresetBatchIsCreatedFirstAndFinalizedLast(t *testing.T) {
	sc := vendortest.NewScale(t, "sc-key")
	sc.RequireBatches()
	b := buildPreset(t, scaleYAML(sc.URL, "sc-key", ", batch: aq"), nil)
	reqs := b.render(t, mixedIssue("iss-2"))
	for i, r := range reqs {
		if err := b.sink.Send(t.Context(), r); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		bs := sc.Batches()
		if len(bs) != 1 || bs[0].Name != "aq-iss-2-key1" || bs[0].Finalized != (i == len(reqs)-1) {
			t.Fatalf("after task %d batches %+v, want aq-iss-2-key1 finalized only after the last task", i, bs)
		}
	}
	if n := len(sc.Tasks()); n != 3 {
		t.Fatalf("%d tasks, want 3", n)
	}
	var paths []string
	for _, r := range sc.Requests() {
		paths = append(paths, r.Path)
	}
	want := []string{"/v1/batches", "/v1/task/imageannotation", "/v1/task/imageannotation", "/v1/task/imageannotation", "/v1/batches/aq-iss-2-key1/finalize"}
	if !slices.Equal(paths, want) {
		t.Errorf("requests %v, want %v", paths, want)
	}
}

func TestScalePresetErrorClasses(t *testing.T) {
	tests := []struct {
		name   string
		key    string
		inject func(sc *vendortest.Scale)
		retry  bool
		status int
	}{
		{"500", "sc-key", func(sc *vendortest.Scale) { sc.FailNext(1, 500, "") }, true, 500},
		{"503", "sc-key", func(sc *vendortest.Scale) { sc.FailNext(1, 503, "") }, true, 503},
		{"408", "sc-key", func(sc *vendortest.Scale) { sc.FailNext(1, 408, "") }, true, 408},
		{"400", "sc-key", func(sc *vendortest.Scale) { sc.FailNext(1, 400, "") }, false, 400},
		{"wrong key", "other-key", func(*vendortest.Scale) {}, false, 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc := vendortest.NewScale(t, "sc-key")
			b := buildPreset(t, scaleYAML(sc.URL, tt.key, ""), nil)
			tt.inject(sc)
			err := b.sink.Send(t.Context(), b.render(t, mixedIssue("iss-3"))[0])
			de := wantDeliveryError(t, err, tt.retry, fmt.Sprint(tt.status))
			if de.Status != tt.status {
				t.Errorf("status %d, want %d", de.Status, tt.status)
			}
			if strings.Contains(err.Error(), tt.key) {
				t.Errorf("the error shows the key: %v", err)
			}
			if len(sc.Tasks()) != 0 {
				t.Error("a task was created")
			}
		})
	}
}

// A 429 slows the whole sink for its Retry-After: another task's request
// waits too, and one whose attempt would end first is not sent at all.
func TestScalePreset429PausesTheSink(t *testing.T) {
	sc := vendortest.NewScale(t, "sc-key")
	b := buildPreset(t, scaleYAML(sc.URL, "sc-key", ""), nil)
	reqs := b.render(t, mixedIssue("iss-4"))
	sc.FailNext(1, 429, "1")
	de := wantDeliveryError(t, b.sink.Send(t.Context(), reqs[0]), true, "429")
	if de.After != time.Second {
		t.Errorf("After = %v, want 1s", de.After)
	}
	short, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	wantDeliveryError(t, b.sink.Send(short, reqs[1]), true, "rate limited")
	if n := sc.RequestCount(); n != 1 {
		t.Fatalf("%d requests reached Scale during the pause, want only the refused one", n)
	}
	if err := b.sink.Send(t.Context(), reqs[1]); err != nil {
		t.Fatal(err)
	}
	all := sc.Requests()
	if gap := all[1].At.Sub(all[0].At); gap < 900*time.Millisecond {
		t.Errorf("the next task reached Scale %v after the 429, want ≥ its Retry-After (1s)", gap)
	}
}

func TestScalePresetRetryAfterATimeoutThatSucceeded(t *testing.T) {
	sc := vendortest.NewScale(t, "sc-key")
	b := buildPreset(t, scaleYAML(sc.URL, "sc-key", ""), nil)
	r := b.render(t, mixedIssue("iss-5"))[0]
	wantDeliveryError(t, timedOutThenDone(t, sc.Server, b.sink, r), true, "no answer")
	if err := b.sink.Send(t.Context(), r); err != nil {
		t.Fatalf("retry: %v", err) // 409: the task exists
	}
	if n := len(sc.Tasks()); n != 1 {
		t.Fatalf("%d tasks, want 1", n)
	}
	if c := sc.CountsFor("key1-e1"); c.Requests != 2 || c.Accepted != 1 || c.Duplicates != 1 {
		t.Errorf("counts %+v, want 1 accepted and one 409", c)
	}
}

// ---------------------------------------------------------------------------
// Label Studio

func labelStudioYAML(base, key string) string {
	return fmt.Sprintf("  - {name: ls, type: label_studio, url: %q, api_key: %q, project_id: 7}\n", base, key)
}

func TestLabelStudioPresetImportsTheElements(t *testing.T) {
	ls := vendortest.NewLabelStudio(t, "ls-token")
	base := prefixProxy(t, ls.URL, "/studio")
	b := buildPreset(t, labelStudioYAML(base, "ls-token"), nil)
	reqs := b.render(t, mixedIssue("iss-1"))
	if len(reqs) != 1 {
		t.Fatalf("%d imports, want 1", len(reqs))
	}
	if err := b.sink.Send(t.Context(), reqs[0]); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tk := range ls.Tasks(7) {
		got = append(got, fmt.Sprintf("%v %v %v", tk.Meta["element_id"], tk.Data["image"], tk.Meta["issue_id"]))
	}
	// Every element with an image (labels are not needed), not e4.
	want := []string{"e1 " + imageURL("f1") + " iss-1", "l2 " + imageURL("f1") + " iss-1", "e3 " + imageURL("f2") + " iss-1", "e5 " + imageURL("f4") + " iss-1"}
	if !slices.Equal(got, want) {
		t.Errorf("tasks %q, want %q", got, want)
	}
	if p := ls.Requests()[0].Path; p != "/api/projects/7/import" {
		t.Errorf("path %s", p)
	}
	if s := b.skipped(t); s[sinks.SkipNoImage] != 1 {
		t.Errorf("skipped %v", s)
	}
}

func TestLabelStudioPresetChunks(t *testing.T) {
	ls := vendortest.NewLabelStudio(t, "ls-token")
	b := buildPreset(t, labelStudioYAML(ls.URL, "ls-token"), nil)
	var els []map[string]any
	for i := range 2500 {
		f := fmt.Sprintf("f%d", i)
		els = append(els, element(fmt.Sprintf("e%d", i), "frame", f, []any{imageSensor(imageURL(f))}))
	}
	reqs := b.render(t, issuePayload("big", els...))
	if len(reqs) != 3 {
		t.Fatalf("%d imports, want 3 (1,000 tasks each at most)", len(reqs))
	}
	for _, r := range reqs {
		if err := b.sink.Send(t.Context(), r); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(ls.Tasks(7)); n != 2500 {
		t.Errorf("%d tasks, want 2500", n)
	}
}

func TestLabelStudioPresetErrorClasses(t *testing.T) {
	tests := []struct {
		name   string
		key    string
		inject func(ls *vendortest.LabelStudio)
		retry  bool
		says   string
	}{
		{"500", "ls-token", func(ls *vendortest.LabelStudio) { ls.FailNext(1, 500, "") }, true, "500"},
		{"429", "ls-token", func(ls *vendortest.LabelStudio) { ls.FailNext(1, 429, "") }, true, "429"},
		{"wrong token", "other", func(*vendortest.LabelStudio) {}, false, "401"},
		{"fewer tasks imported", "ls-token", func(ls *vendortest.LabelStudio) {
			ls.AnswerNext(1, 201, map[string]any{"task_count": 1})
		}, false, "imported 1 of the 4 tasks"},
		{"no task_count", "ls-token", func(ls *vendortest.LabelStudio) { ls.AnswerNext(1, 201, map[string]any{}) }, false, "no task_count"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ls := vendortest.NewLabelStudio(t, "ls-token")
			b := buildPreset(t, labelStudioYAML(ls.URL, tt.key), nil)
			tt.inject(ls)
			err := b.sink.Send(t.Context(), b.render(t, mixedIssue("iss-2"))[0])
			wantDeliveryError(t, err, tt.retry, tt.says)
			if strings.Contains(err.Error(), "ls-token") {
				t.Errorf("the error shows the token: %v", err)
			}
		})
	}
}

// Label Studio has no idempotency key: a retry after an attempt that timed
// out but was carried out imports the tasks again. The fake counts it.
func TestLabelStudioPresetRetryAfterATimeoutImportsTwice(t *testing.T) {
	ls := vendortest.NewLabelStudio(t, "ls-token")
	b := buildPreset(t, labelStudioYAML(ls.URL, "ls-token"), nil)
	r := b.render(t, mixedIssue("iss-3"))[0]
	wantDeliveryError(t, timedOutThenDone(t, ls.Server, b.sink, r), true, "no answer")
	if err := b.sink.Send(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	if n := len(ls.Tasks(7)); n != 8 {
		t.Errorf("%d tasks, want 8: the 4 imported twice", n)
	}
	if c := ls.CountsFor(vendortest.LabelStudioKey("iss-3", "e1")); c.Accepted != 2 || c.Duplicates != 1 {
		t.Errorf("counts %+v, want 2 imports, 1 a duplicate", c)
	}
}

func TestPresetRateLimitDefault(t *testing.T) {
	yaml := `sinks:
  - {name: lb, type: labelbox, api_key: k, project_id: p}
  - {name: lb2, type: labelbox, api_key: k, project_id: p, rate_limit: {per_second: 2}}
  - {name: sc, type: scale, api_key: k, project: p}
`
	cfg, err := pipeline.ParseConfig(filepath.Join(t.TempDir(), "p.yaml"), []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Resolve(registry()); err != nil {
		t.Fatal(err)
	}
	if rl := cfg.Sinks[0].RateLimit; rl.PerSecond != 25 || rl.Burst != 25 {
		t.Errorf("labelbox default rate limit %+v, want 1,500 a minute", rl)
	}
	if rl := cfg.Sinks[1].RateLimit; rl.PerSecond != 2 {
		t.Errorf("configured rate limit %+v, want the file's 2/s", rl)
	}
	if rl := cfg.Sinks[2].RateLimit; rl.PerSecond != 0 {
		t.Errorf("scale rate limit %+v, want none (none documented)", rl)
	}
}
