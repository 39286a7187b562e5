package pipeline_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/builtin"
	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/internal/vendortest"
	"github.com/labelpipe/labelpipe/pipeline"
)

// The vendor presets (sink types labelbox, scale, label_studio, cvat) in one
// pipeline, against the fake vendors, with failures injected: every
// element reaches every vendor, and repeats are only the vendors'
// idempotent answers.

// presetExport is one generated export and what each vendor must get.
type presetExport struct {
	issue string
	body  []byte
	// frames are the unique frame_ids with an image (Labelbox's keys);
	// tasks the elements with an image and labels (Scale); images the
	// elements with an image (Label Studio).
	frames, tasks, images []string
	// key is the export key the webhook answered.
	key string
}

// genExport builds export i: mixed sizes (a few large), frames and crops,
// multi-sensor frames with the point cloud first, lidar-only frames and
// frames without labels, and frames shared by several elements.
func genExport(t *testing.T, i int) *presetExport {
	t.Helper()
	n := 1 + (i*7)%12
	if i%10 == 0 {
		n = 100
	}
	ex := &presetExport{issue: fmt.Sprintf("preset_issue_%03d_%d", i, issueSeq.Add(1))}
	var els []any
	seenFrame := map[string]bool{}
	for j := range n {
		id := fmt.Sprintf("el-%d-%d", i, j)
		frame := fmt.Sprintf("fr-%d-%d", i, j)
		img := map[string]any{"sensor_id": "cam", "data_urls": map[string]any{"image_url": "https://img.example/" + frame + ".jpg"}}
		pc := map[string]any{"sensor_id": "lidar", "data_urls": map[string]any{"pointcloud_url": "https://pc.example/" + frame + ".pcd"}}
		lab := func(uuid, class string) any {
			return map[string]any{"uuid": uuid, "label": class, "label_type": "BBOX_2D"}
		}
		typ := "frame"
		sensors := []any{img}
		labels := []any{lab(id+"-a", "car"), lab(id+"-b", "pedestrian")}
		hasImage, hasLabels := true, true
		switch (i + j) % 6 {
		case 1: // a crop: the label it points at has the element's id
			typ = "crop"
			labels = []any{lab(id, "cyclist"), lab(id+"-b", "car")}
		case 2: // point cloud first
			sensors = []any{pc, img}
		case 3: // lidar only
			sensors = []any{pc}
			hasImage = false
		case 4: // no labels
			labels = []any{}
			hasLabels = false
		case 5: // a crop of the previous element's frame
			if j > 0 {
				frame = fmt.Sprintf("fr-%d-%d", i, j-1)
				img = map[string]any{"sensor_id": "cam", "data_urls": map[string]any{"image_url": "https://img.example/" + frame + ".jpg"}}
				sensors = []any{img}
			}
			typ = "crop"
			labels = []any{lab(id, "truck")}
		}
		els = append(els, map[string]any{"element_id": id, "element_type": typ, "frame_id": frame, "dataset": "ds",
			"issue_name": "mixed", "frame_data": map[string]any{"sensor_data": sensors, "label_data": labels}})
		if hasImage {
			ex.images = append(ex.images, id)
			if !seenFrame[frame] {
				seenFrame[frame] = true
				ex.frames = append(ex.frames, frame)
			}
			if hasLabels {
				ex.tasks = append(ex.tasks, id)
			}
		}
	}
	b, err := json.Marshal(map[string]any{"event": "issue-exported", "project": "presets",
		"issue": map[string]any{"id": ex.issue, "elements": els}})
	if err != nil {
		t.Fatal(err)
	}
	ex.body = b
	slices.Sort(ex.frames) // Labelbox's keys are sent sorted
	return ex
}

// presetVendor is one row of the combined test: a preset's sink entry,
// the failures injected into its fake, and the check that every element
// got there.
type presetVendor struct {
	name string
	sink string
	// srv is the fake, held (SetLatency) at the start so that attempts
	// time out after the vendor got them.
	srv *vendortest.Server
	// inject queues failures (injected of them) while work is queued.
	inject   func()
	injected int
	// done reports whether every export reached the vendor.
	done func(exports []*presetExport) bool
	// check asserts what the vendor holds and logs its repeats.
	check func(t *testing.T, exports []*presetExport)
}

func TestPresetsDeliverEveryElementToEveryVendor(t *testing.T) {
	const (
		exports     = 50
		maxInFlight = 4
	)
	lb := vendortest.NewLabelbox(t, lbKey)
	sc := vendortest.NewScale(t, scaleKey)
	sc.RequireBatches()
	ls := vendortest.NewLabelStudio(t, lsToken)
	cv := vendortest.NewCVAT(t, "cvat-token", 3)
	policy := fmt.Sprintf(`
    timeout: 300ms
    max_in_flight: %d
    retry: {max_attempts: 30, initial_interval: 5ms, max_interval: 50ms, max_elapsed: 0s}
    breaker: {consecutive_failures: 1000, open_timeout: 200ms}`, maxInFlight)

	rows := []presetVendor{
		{
			name: "labelbox",
			sink: fmt.Sprintf("  - name: labelbox\n    type: labelbox\n    url: %q\n    api_key: %q\n    project_id: %q", lb.URL, lbKey, lbProject),
			srv:  lb.Server,
			inject: func() {
				lb.FailNextGraphQL(2, "INTERNAL_SERVER_ERROR", "try again")
				lb.RateLimitNext(2)
				lb.FailNext(2, 503, "")
			},
			injected: 6,
			done: func(exs []*presetExport) bool {
				return len(lb.Batches(lbProject)) >= countIf(exs, func(e *presetExport) bool { return len(e.frames) > 0 })
			},
			check: func(t *testing.T, exs []*presetExport) {
				byName := map[string]vendortest.LabelboxBatch{}
				for _, b := range lb.Batches(lbProject) {
					if _, dup := byName[b.Name]; dup {
						t.Errorf("labelbox: batch %s created twice", b.Name)
					}
					byName[b.Name] = b
				}
				dups := 0
				for _, e := range exs {
					if len(e.frames) == 0 {
						continue
					}
					name := fmt.Sprintf("aquarium-%s-%s-0", e.issue, e.key)
					b, ok := byName[name]
					if !ok || !slices.Equal(b.GlobalKeys, e.frames) {
						t.Errorf("labelbox: batch %s holds %v, want %v", name, b.GlobalKeys, e.frames)
					}
					c := lb.CountsFor(name)
					if c.Accepted != 1 {
						t.Errorf("labelbox: batch %s accepted %d times", name, c.Accepted)
					}
					dups += c.Duplicates
				}
				t.Logf("labelbox: %d batches, %d requests, %d answered \"already exists\"", len(byName), lb.RequestCount(), dups)
			},
		},
		{
			name: "scale",
			sink: fmt.Sprintf("  - name: scale\n    type: scale\n    url: %q\n    api_key: %q\n    project: relabel\n    batch: aq", sc.URL, scaleKey),
			srv:  sc.Server,
			inject: func() {
				sc.FailNext(3, 500, "")
				sc.FailNext(1, 429, "1")
				sc.FailNext(1, 408, "")
			},
			injected: 5,
			done: func(exs []*presetExport) bool {
				want := 0
				for _, e := range exs {
					want += len(e.tasks)
				}
				if len(sc.Tasks()) < want {
					return false
				}
				for _, b := range sc.Batches() {
					if !b.Finalized {
						return false
					}
				}
				return true
			},
			check: func(t *testing.T, exs []*presetExport) {
				tasks := map[string]int{}
				for _, tk := range sc.Tasks() {
					tasks[tk.UniqueID]++
				}
				batches := map[string]bool{}
				for _, b := range sc.Batches() {
					batches[b.Name] = b.Finalized
				}
				dups, want := 0, 0
				for _, e := range exs {
					for _, el := range e.tasks {
						uid := e.key + "-" + el
						want++
						if tasks[uid] != 1 {
							t.Errorf("scale: %d tasks for %s, want 1", tasks[uid], uid)
						}
						c := sc.CountsFor(uid)
						if c.Accepted != 1 {
							t.Errorf("scale: %s accepted %d times", uid, c.Accepted)
						}
						dups += c.Duplicates
					}
					if len(e.tasks) > 0 && !batches[fmt.Sprintf("aq-%s-%s", e.issue, e.key)] {
						t.Errorf("scale: batch of %s missing or not finalized", e.issue)
					}
				}
				if len(tasks) != want {
					t.Errorf("scale: %d tasks, want %d", len(tasks), want)
				}
				t.Logf("scale: %d tasks, %d requests, %d task requests answered 409, %d requests in all repeated earlier work (batches included)", len(tasks), sc.RequestCount(), dups, sc.Duplicates())
			},
		},
		{
			name: "label_studio",
			sink: fmt.Sprintf("  - name: label_studio\n    type: label_studio\n    url: %q\n    api_key: %q\n    project_id: %d", ls.URL, lsToken, lsProject),
			srv:  ls.Server,
			inject: func() {
				ls.FailNext(2, 502, "")
				ls.FailNext(1, 500, "")
			},
			injected: 3,
			done: func(exs []*presetExport) bool {
				counts := ls.CountsByKey()
				for _, e := range exs {
					for _, el := range e.images {
						if counts[vendortest.LabelStudioKey(e.issue, el)].Accepted == 0 {
							return false
						}
					}
				}
				return true
			},
			check: func(t *testing.T, exs []*presetExport) {
				twice, total := 0, 0
				for _, e := range exs {
					for _, el := range e.images {
						total++
						c := ls.CountsFor(vendortest.LabelStudioKey(e.issue, el))
						switch {
						case c.Accepted == 0:
							t.Errorf("label_studio: %s/%s never imported", e.issue, el)
						case c.Accepted > 1:
							twice++
						}
					}
				}
				imports := countIf(exs, func(e *presetExport) bool { return len(e.images) > 0 })
				t.Logf("label_studio: %d of %d tasks imported more than once (%.1f%%); %d imports for %d exports; %d import requests counted duplicate",
					twice, total, 100*float64(twice)/float64(max(total, 1)), ls.Accepted(), imports, ls.Duplicates())
			},
		},
		{
			name: "cvat",
			sink: fmt.Sprintf("  - name: cvat\n    type: cvat\n    url: %q\n    api_key: cvat-token\n    project_id: 3", cv.URL),
			srv:  cv.Server,
			inject: func() {
				cv.FailNext(2, 503, "")
				cv.FailNext(1, 429, "1")
				cv.FailNext(1, 500, "")
			},
			injected: 4,
			done: func(exs []*presetExport) bool {
				finished := 0
				for _, tk := range cv.Tasks() {
					if tk.Import == "finished" {
						finished++
					}
				}
				return finished >= countIf(exs, func(e *presetExport) bool { return len(e.frames) > 0 })
			},
			check: func(t *testing.T, exs []*presetExport) {
				want := 0
				for _, e := range exs {
					if len(e.frames) == 0 {
						continue
					}
					want++
					name := "aquarium " + e.key + ".cvat.0"
					tasks := cv.TasksNamed(name)
					if len(tasks) != 1 {
						t.Errorf("cvat: %d tasks named %s, want 1", len(tasks), name)
						continue
					}
					var images []string
					for _, f := range e.frames {
						images = append(images, "https://img.example/"+f+".jpg")
					}
					got := slices.Sorted(slices.Values(tasks[0].RemoteFiles))
					if tasks[0].Import != "finished" || !slices.Equal(got, images) {
						t.Errorf("cvat: task %s import %q with %v, want finished with %v", name, tasks[0].Import, got, images)
					}
					for _, k := range []string{vendortest.CVATTaskKey(name), vendortest.CVATAttachKey(name)} {
						if c := cv.CountsFor(k); c.Accepted != 1 || c.Duplicates != 0 {
							t.Errorf("cvat: %q: %+v, want done once, never repeated", k, c)
						}
					}
				}
				if n := len(cv.Tasks()); n != want {
					t.Errorf("cvat: %d tasks, want %d (one per export with an image)", n, want)
				}
				t.Logf("cvat: %d tasks, %d requests, %d repeats (second tasks or attaches)", len(cv.Tasks()), cv.RequestCount(), cv.Duplicates())
			},
		},
	}

	cfg := head(`  - {type: dedupe, store: memory, ttl: 1h}`)
	for _, r := range rows {
		cfg += r.sink + policy + "\n"
		r.srv.SetLatency(time.Hour) // the first attempts time out at the vendor
	}
	h := startHarness(t, cfg)

	all := make([]*presetExport, exports)
	for i := range all {
		all[i] = genExport(t, i)
		all[i].key = h.accept(all[i].body).Key
	}
	// Once twice as many attempts arrived as can be in flight, at least
	// max_in_flight of them timed out and were retried while the vendor
	// still held them: let them all through, so that the vendor carries
	// out both. Then inject the failures, into the work still queued.
	const held = 2 * maxInFlight
	for _, r := range rows {
		waitFake(t, r.name+" retried attempts", func(ctx context.Context) error { return r.srv.WaitArrived(ctx, held) })
	}
	for _, r := range rows {
		r.srv.SetLatency(0)
		waitFake(t, r.name+" held attempts", func(ctx context.Context) error { return r.srv.WaitRequests(ctx, held) })
		r.inject()
	}
	for _, r := range rows {
		h.eventually(90*time.Second, r.name+" to have every element", func() bool { return r.done(all) })
	}
	for _, r := range rows {
		h.eventually(30*time.Second, r.name+"'s queue to drain", func() bool { return h.sink(r.name).QueueDepth == 0 })
		if dl := h.deadLetters(r.name); len(dl) != 0 {
			t.Errorf("%s: %d dead letters, first: %+v", r.name, len(dl), dl[0])
		}
		injected := 0
		for _, q := range r.srv.Requests() {
			if q.Outcome == vendortest.Injected {
				injected++
			}
		}
		if injected != r.injected {
			t.Errorf("%s: %d injected failures answered, want %d", r.name, injected, r.injected)
		}
		r.check(t, all)
	}
}

func countIf[T any](s []T, f func(T) bool) int {
	n := 0
	for _, v := range s {
		if f(v) {
			n++
		}
	}
	return n
}

// The quickstart's file sinks write the bodies the presets send: both
// render the same payload in one preview, on every sample export and on
// an export with a point cloud first, a lidar-only frame and a frame
// without labels.
func TestQuickstartFileSinksMatchThePresets(t *testing.T) {
	t.Setenv("AQ_WEBHOOK_SECRET", "")
	quick, err := os.ReadFile("../configs/labelpipe.yaml")
	if err != nil {
		t.Fatal(err)
	}
	text := string(quick) + `
  - {name: labelbox_preset, type: labelbox, api_key: k, project_id: demo-labelbox-project}
  - {name: scale_preset, type: scale, api_key: k, project: aquarium-relabel}
  - {name: label_studio_preset, type: label_studio, url: "http://127.0.0.1:1", api_key: k, project_id: 1}
  - {name: cvat_preset, type: cvat, api_key: k, project_id: 1}
`
	dir := filepath.Join(t.TempDir(), "configs")
	cfg, err := pipeline.ParseConfig(filepath.Join(dir, "labelpipe.yaml"), []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	payloads := map[string][]byte{"generated": genExport(t, 2).body}
	for _, f := range []string{"issue-frames.json", "issue-crops.json", "issue-mixed-spelling.json", "issue-10-elements.json"} {
		payloads[f] = rawPayload(t, f)
	}
	for name, body := range payloads {
		t.Run(name, func(t *testing.T) {
			rep, err := pipeline.Preview(t.Context(), cfg, pipeline.Options{Registry: builtin.Registry()}, body, nil)
			if err != nil {
				t.Fatal(err)
			}
			bodies := map[string][]any{}
			for _, s := range rep.Sinks {
				if s.Error != "" {
					t.Fatalf("sink %s: %s", s.Name, s.Error)
				}
				for _, r := range s.Requests {
					raw, _ := json.Marshal(r["body"])
					var v any
					if err := json.Unmarshal(raw, &v); err != nil {
						t.Fatal(err)
					}
					bodies[s.Name] = append(bodies[s.Name], v)
				}
			}
			for _, vendor := range []string{"labelbox", "scale", "label_studio", "cvat"} {
				file, preset := bodies[vendor], bodies[vendor+"_preset"]
				if len(preset) == 0 {
					t.Errorf("%s: the preset sends nothing", vendor)
				}
				if !reflect.DeepEqual(file, preset) {
					f, _ := json.MarshalIndent(file, "", " ")
					p, _ := json.MarshalIndent(preset, "", " ")
					t.Errorf("%s: the quickstart writes\n%s\nthe preset sends\n%s", vendor, f, p)
				}
			}
		})
	}
}

// The seed's two recipes over the generic sinks, configs/examples, load
// and send what the seed meant to send.
func TestExampleConfigs(t *testing.T) {
	for k, v := range map[string]string{"LABELING_API_ENDPOINT": "https://api.example.com/v1/batches", "LABELING_API_KEY": "example-key",
		"LABELING_PROJECT_ID": "proj-9", "AQ_WEBHOOK_SECRET": hookSecret, "LABELPIPE_ADDR": ""} {
		t.Setenv(k, v)
	}
	gen := genExport(t, 3) // frames, crops, a point cloud first, lidar only, no labels
	var genPayload map[string]any
	if err := json.Unmarshal(gen.body, &genPayload); err != nil {
		t.Fatal(err)
	}
	// What the generated export must produce: for the relabel, a crop's
	// own label and every label of a frame; for the batch, each frame
	// with an image once, with that image.
	var labelIDs, frames []string
	images := map[string]string{}
	for _, e := range genPayload["issue"].(map[string]any)["elements"].([]any) {
		el := e.(map[string]any)
		fd := el["frame_data"].(map[string]any)
		if el["element_type"] == "crop" {
			labelIDs = append(labelIDs, el["element_id"].(string))
		} else {
			for _, l := range fd["label_data"].([]any) {
				labelIDs = append(labelIDs, l.(map[string]any)["uuid"].(string))
			}
		}
		for _, s := range fd["sensor_data"].([]any) {
			if u, ok := s.(map[string]any)["data_urls"].(map[string]any)["image_url"].(string); ok {
				if _, seen := images[el["frame_id"].(string)]; !seen {
					frames = append(frames, el["frame_id"].(string))
				}
				images[el["frame_id"].(string)] = u
			}
		}
	}
	slices.Sort(labelIDs)
	labelIDs = slices.Compact(labelIDs)
	slices.Sort(frames)

	tests := []struct {
		file  string
		check func(t *testing.T, body map[string]any)
	}{
		{"graphql-relabel.yaml", func(t *testing.T, body map[string]any) {
			vars := body["variables"].(map[string]any)
			var got []string
			for _, id := range vars["labelIds"].([]any) {
				got = append(got, id.(string))
			}
			if vars["projectId"] != "proj-9" || !slices.Equal(got, labelIDs) {
				t.Errorf("variables %v, want projectId proj-9 and labelIds %v", vars, labelIDs)
			}
		}},
		{"rest-batch.yaml", func(t *testing.T, body map[string]any) {
			var got []string
			for _, f := range body["frames"].([]any) {
				fm := f.(map[string]any)
				got = append(got, fm["id"].(string))
				if fm["url"] != images[fm["id"].(string)] {
					t.Errorf("frame %v: url %v, want %s", fm["id"], fm["url"], images[fm["id"].(string)])
				}
			}
			if body["project"] != "presets" || body["name"] != "ds_relabel_mixed" || !slices.Equal(got, frames) {
				t.Errorf("batch %v, want project presets, name ds_relabel_mixed, frames %v", body, frames)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			cfg, err := pipeline.LoadConfig(filepath.Join("..", "configs", "examples", tt.file), pipeline.ResolveWith(builtin.Registry()))
			if err != nil {
				t.Fatal(err)
			}
			rep, err := pipeline.Preview(t.Context(), cfg, pipeline.Options{Registry: builtin.Registry()}, gen.body, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Sinks) != 1 || len(rep.Sinks[0].Requests) != 1 {
				t.Fatalf("want one sink with one request: %+v", rep.Sinks)
			}
			r := rep.Sinks[0].Requests[0]
			if r["url"] != os.Getenv("LABELING_API_ENDPOINT") && tt.file == "rest-batch.yaml" {
				t.Errorf("url %v", r["url"])
			}
			raw, _ := json.Marshal(r["body"])
			var body map[string]any
			if err := json.Unmarshal(raw, &body); err != nil {
				t.Fatal(err)
			}
			tt.check(t, body)
			if out, _ := json.Marshal(rep); strings.Contains(string(out), "example-key") {
				t.Error("the preview shows the API key")
			}
		})
	}
}

// rate_limit.shared on the redis broker keeps the sink's bucket in Redis,
// where every replica draws from it. (A burst of 20 at 1/s lets the
// export's tasks through at once, and keeps the key for seconds after.)
func TestSharedRateLimitIsKeptInRedis(t *testing.T) {
	srv := redistest.Start(t)
	sc := vendortest.NewScale(t, scaleKey)
	cfg := strings.Replace(head(""), "broker: {type: memory}",
		"broker: {type: redis, claim_idle: 200ms}\nredis: {url: \""+srv.URL()+"\", key_prefix: \"lp:\"}", 1) +
		fmt.Sprintf("  - {name: scale, type: scale, url: %q, api_key: %q, project: relabel, rate_limit: {per_second: 1, burst: 20, shared: true}}\n", sc.URL, scaleKey)
	h := startHarness(t, cfg)
	ex := genExport(t, 3)
	h.accept(ex.body)
	h.eventually(20*time.Second, "every task at Scale", func() bool { return len(sc.Tasks()) == len(ex.tasks) })
	keys, err := srv.Client(t).Keys(t.Context(), "*ratelimit*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(keys, "rate:lp:ratelimit:{sink.scale}") {
		t.Errorf("rate limit keys in Redis %v, want the scale sink's", keys)
	}
}
