package pipeline_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/labelpipe/labelpipe/builtin"
	"github.com/labelpipe/labelpipe/configs"
	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/sinks"
)

// loadShipped loads configs/NAME from a copy in a temporary directory, so
// that the file sinks' relative paths (../out) point there and the
// repository is left alone.
func loadShipped(t *testing.T, name string, opts ...pipeline.LoadOption) *pipeline.Config {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "configs", name))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "configs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	opts = append(opts, pipeline.ResolveWith(builtin.Registry()))
	cfg, err := pipeline.ParseConfig(filepath.Join(dir, name), data, opts...)
	if err != nil {
		t.Fatalf("load %s: %v", name, err)
	}
	return cfg
}

func aquariumHeader(secret string) http.Header {
	return http.Header{"Content-Type": {"application/json"}, "X-Aquarium-Secret": {secret}}
}

func verdicts(rep *pipeline.PreviewReport) []string {
	var out []string
	for _, v := range rep.Stages {
		out = append(out, v.Name+":"+v.Verdict.String())
	}
	return out
}

func requestCounts(rep *pipeline.PreviewReport) map[string]int {
	out := map[string]int{}
	for _, s := range rep.Sinks {
		out[s.Name] = len(s.Requests)
	}
	return out
}

type previewCase struct {
	name, payload string
	header        http.Header
	wantStatus    int
	wantAnswer    string // the answer's status field
	wantVerdicts  []string
	wantRequests  map[string]int
	wantViolation string
}

// Preview of the quickstart on every sample payload: what each stage says,
// the answer Aquarium would get, and how many requests each sink would
// send. Nothing is written.
func TestPreviewQuickstart(t *testing.T) {
	t.Setenv("AQ_WEBHOOK_SECRET", "") // the quickstart's default, dev-secret
	cfg := loadShipped(t, "labelpipe.yaml")
	passed := []string{"secret:passed", "schema:passed", "dedupe:passed"}

	tests := []previewCase{
		{name: "frames", payload: "issue-frames.json", header: aquariumHeader("dev-secret"),
			wantStatus: 202, wantAnswer: "accepted", wantVerdicts: passed,
			wantRequests: map[string]int{"labelbox": 1, "scale": 3, "label_studio": 1, "cvat": 1}},
		{name: "crops", payload: "issue-crops.json", header: aquariumHeader("dev-secret"),
			wantStatus: 202, wantAnswer: "accepted", wantVerdicts: passed,
			wantRequests: map[string]int{"labelbox": 1, "scale": 2, "label_studio": 1, "cvat": 1}},
		{name: "mixed spelling", payload: "issue-mixed-spelling.json", header: aquariumHeader("dev-secret"),
			wantStatus: 202, wantAnswer: "accepted", wantVerdicts: passed,
			wantRequests: map[string]int{"labelbox": 1, "scale": 2, "label_studio": 1, "cvat": 1}},
		{name: "10 elements", payload: "issue-10-elements.json", header: aquariumHeader("dev-secret"),
			wantStatus: 202, wantAnswer: "accepted", wantVerdicts: passed,
			wantRequests: map[string]int{"labelbox": 1, "scale": 10, "label_studio": 1, "cvat": 1}},
		{name: "test payload", payload: "test-payload.json", header: aquariumHeader("dev-secret"),
			wantStatus: 200, wantAnswer: "ignored", wantVerdicts: passed,
			wantRequests: map[string]int{}},
		{name: "invalid", payload: "invalid-missing-issue.json", header: aquariumHeader("dev-secret"),
			wantStatus: 422, wantVerdicts: []string{"secret:passed", "schema:rejected"},
			wantRequests: map[string]int{}, wantViolation: "/issue"},
		{name: "no headers: the secret is not checked", payload: "issue-frames.json",
			wantStatus: 202, wantAnswer: "accepted", wantVerdicts: []string{"secret:skipped", "schema:passed", "dedupe:passed"},
			wantRequests: map[string]int{"labelbox": 1, "scale": 3, "label_studio": 1, "cvat": 1}},
		{name: "wrong secret", payload: "issue-frames.json", header: aquariumHeader("nope"),
			wantStatus: 401, wantVerdicts: []string{"secret:rejected"}, wantRequests: map[string]int{}},
	}

	// Every sample payload is covered.
	entries, err := fs.ReadDir(configs.Payloads, "payloads")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !slices.ContainsFunc(tests, func(tt previewCase) bool { return tt.payload == e.Name() }) {
			t.Errorf("no preview case for configs/payloads/%s", e.Name())
		}
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep, err := pipeline.Preview(t.Context(), cfg, pipeline.Options{Registry: builtin.Registry()}, rawPayload(t, tt.payload), tt.header)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Answer.Status != tt.wantStatus || rep.Answer.Body.Status != tt.wantAnswer {
				b, _ := json.Marshal(rep.Answer)
				t.Errorf("answer = %s, want %d %q", b, tt.wantStatus, tt.wantAnswer)
			}
			if got := verdicts(rep); !slices.Equal(got, tt.wantVerdicts) {
				t.Errorf("verdicts = %v, want %v", got, tt.wantVerdicts)
			}
			if got := requestCounts(rep); !mapsEqual(got, tt.wantRequests) {
				t.Errorf("requests per sink = %v, want %v", got, tt.wantRequests)
			}
			if tt.wantStatus >= 400 {
				if rep.Answer.Body.Error == "" {
					t.Error("an error answer without an error message")
				}
				if rep.Stages[len(rep.Stages)-1].Detail == "" {
					t.Error("the rejecting stage gives no detail")
				}
			}
			if tt.wantViolation != "" && !slices.ContainsFunc(rep.Answer.Body.Violations, func(v pipeline.Violation) bool {
				return v.Pointer == tt.wantViolation
			}) {
				t.Errorf("violations = %+v, want one at %s", rep.Answer.Body.Violations, tt.wantViolation)
			}
		})
	}

	// Nothing was written: the file sinks only opened their files.
	matches, _ := filepath.Glob(filepath.Join(filepath.Dir(filepath.Dir(cfg.File())), "out", "*.jsonl"))
	if len(matches) != 4 {
		t.Errorf("want the four quickstart sink files opened under the copy, found %v", matches)
	}
	for _, m := range matches {
		if st, err := os.Stat(m); err != nil || st.Size() != 0 {
			t.Errorf("preview wrote to %s", m)
		}
	}
}

// What preview shows of a request: the body the vendor would get, the
// chunk and the idempotency key.
func TestPreviewRequests(t *testing.T) {
	cfg := loadShipped(t, "labelpipe.yaml")
	rep, err := pipeline.Preview(t.Context(), cfg, pipeline.Options{Registry: builtin.Registry()}, rawPayload(t, "issue-frames.json"), nil)
	if err != nil {
		t.Fatal(err)
	}
	id := rep.Answer.Body.Key
	if len(id) != 32 {
		t.Fatalf("preview answer has no export key: %+v", rep.Answer.Body)
	}
	for _, s := range rep.Sinks {
		if s.Name != "scale" {
			continue
		}
		for i, r := range s.Requests {
			b, _ := json.Marshal(r)
			var req struct {
				Chunk int    `json:"chunk"`
				Key   string `json:"idempotency_key"`
				Body  struct {
					UniqueID string `json:"unique_id"`
					Geom     struct {
						Box struct {
							Objects []string `json:"objects_to_annotate"`
						} `json:"box"`
					} `json:"geometries"`
				} `json:"body"`
			}
			if err := json.Unmarshal(b, &req); err != nil {
				t.Fatalf("request %d: %v: %s", i, err, b)
			}
			if req.Chunk != i || req.Key != fmt.Sprintf("%s.scale.%d", id, i) {
				t.Errorf("request %d: chunk %d key %q, want %d and %s.scale.%d", i, req.Chunk, req.Key, i, id, i)
			}
			if !strings.HasPrefix(req.Body.UniqueID, id+"-") || len(req.Body.Geom.Box.Objects) == 0 {
				t.Errorf("request %d body = %+v, want a unique_id from the export key and labels to annotate", i, req.Body)
			}
		}
	}
}

// Preview of configs/vendors.yaml shows the vendor requests with every key
// redacted; no key appears anywhere in its output.
func TestPreviewRedactsSecrets(t *testing.T) {
	// vendors.yaml keeps dedupe keys and breakers in Redis, and the
	// library's Preview builds them (the CLI's preview swaps them for
	// in-process ones; see cmd/labelpipe).
	t.Setenv("REDIS_URL", redistest.Start(t).URL())
	keys := map[string]string{
		"AQ_WEBHOOK_SECRET":    "aq-whsecret-0001",
		"LABELBOX_API_KEY":     "lb-apikey-0002",
		"SCALE_API_KEY":        "scale-apikey-0003",
		"LABEL_STUDIO_API_KEY": "ls-apitoken-0004",
		"CVAT_TOKEN":           "cvat-token-0005",
	}
	for k, v := range keys {
		t.Setenv(k, v)
	}
	t.Setenv("CVAT_URL", "")
	t.Setenv("CVAT_PROJECT_ID", "3")
	t.Setenv("LABELBOX_PROJECT_ID", "lb-project")
	t.Setenv("SCALE_PROJECT", "relabel")
	t.Setenv("LABEL_STUDIO_PROJECT_ID", "42")
	cfg := loadShipped(t, "vendors.yaml", pipeline.AllowUnsetEnv())

	rep, err := pipeline.Preview(t.Context(), cfg, pipeline.Options{Registry: builtin.Registry()},
		rawPayload(t, "issue-frames.json"), aquariumHeader(keys["AQ_WEBHOOK_SECRET"]))
	if err != nil {
		t.Fatal(err)
	}
	out, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if rep.Answer.Status != http.StatusAccepted {
		t.Fatalf("answer %d, want 202:\n%s", rep.Answer.Status, out)
	}
	forbidden := []string{base64.StdEncoding.EncodeToString([]byte(keys["SCALE_API_KEY"] + ":"))}
	for _, v := range keys {
		forbidden = append(forbidden, v)
	}
	for _, secret := range forbidden {
		if strings.Contains(string(out), secret) {
			t.Errorf("preview output contains the secret %q:\n%s", secret, out)
		}
	}

	want := map[string]string{
		"labelbox":     "https://api.labelbox.com/graphql",
		"scale":        "https://api.scale.com/v1/task/imageannotation",
		"label_studio": "http://127.0.0.1:8081/api/projects/42/import",
		"cvat":         "https://app.cvat.ai/api/tasks/{id}/data/", // after the task lookup and create
	}
	for _, s := range rep.Sinks {
		if len(s.Requests) == 0 {
			t.Errorf("sink %s: no requests (%s%s)", s.Name, s.Skipped, s.Error)
			continue
		}
		for _, r := range s.Requests {
			if r["url"] != want[s.Name] {
				t.Errorf("sink %s url = %v, want %s", s.Name, r["url"], want[s.Name])
			}
			headers, _ := r["headers"].(map[string]string)
			if headers["Authorization"] != sinks.Redacted {
				t.Errorf("sink %s Authorization = %q, want %q", s.Name, headers["Authorization"], sinks.Redacted)
			}
		}
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}
