package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/internal/testutil"
)

// labelpipe runs the CLI in process and returns its exit code and output.
func labelpipe(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// quickstart copies configs/labelpipe.yaml into a temporary tree, with its
// listeners on free loopback ports, so that its file sinks write under
// dir/out and not into the repository.
func quickstart(t *testing.T) (cfgPath, dir string) {
	t.Helper()
	data, err := os.ReadFile("../../configs/labelpipe.yaml")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(string(data), "addr: 127.0.0.1:8080", "addr: 127.0.0.1:0", 1)
	text = strings.Replace(text, "addr: 127.0.0.1:9090", "addr: 127.0.0.1:0", 1)
	if text == string(data) {
		t.Fatal("quickstart listeners not found; update the test")
	}
	dir = t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "configs"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfgPath = filepath.Join(dir, "configs", "labelpipe.yaml")
	if err := os.WriteFile(cfgPath, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfgPath, dir
}

const payloads = "../../configs/payloads/"

func TestCommands(t *testing.T) {
	t.Setenv("AQ_WEBHOOK_SECRET", "")
	cfg, _ := quickstart(t)
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout []string
		wantStderr []string
	}{
		{"no command", nil, 2, nil, []string{"Usage:", "Available Commands:"}},
		{"unknown command", []string{"deploy"}, 2, nil, []string{`unknown command "deploy"`, "for usage"}},
		{"help", []string{"help"}, 0, []string{"labelpipe run", "labelpipe validate", "labelpipe preview", "labelpipe send"}, nil},
		{"version", []string{"version"}, 0, []string{"labelpipe dev"}, nil},
		{"validate the quickstart", []string{"validate", "-c", cfg}, 0, []string{"ok (3 stages, 4 sinks, broker memory)"}, nil},
		{"validate a missing file", []string{"validate", "-c", filepath.Join(t.TempDir(), "nope.yaml")}, 1, nil, []string{"nope.yaml"}},
		{"validate with a bad flag", []string{"validate", "--nope"}, 2, nil, []string{"unknown flag: --nope"}},
		{"preview without a payload", []string{"preview", "-c", cfg}, 2, nil, []string{"preview needs a payload file"}},
		{"preview a missing payload", []string{"preview", "-c", cfg, "nope.json"}, 1, nil, []string{"nope.json"}},
		{"send without a payload", []string{"send"}, 2, nil, []string{"send needs a payload file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := labelpipe(t, tt.args...)
			if code != tt.wantCode {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.wantCode, stdout, stderr)
			}
			for _, w := range tt.wantStdout {
				if !strings.Contains(stdout, w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout)
				}
			}
			for _, w := range tt.wantStderr {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
		})
	}
}

// validate prints every error of a broken config at once, each with
// file:line:col, and exits 1.
func TestValidateReportsEveryError(t *testing.T) {
	t.Setenv("LP_CLI_TEST_UNSET", "")
	path := filepath.Join(t.TempDir(), "broken.yaml")
	const broken = `server:
  addr: ""
  max_body_bytes: -1
admin: {addr: ""}
stages:
  - type: secret
    secrets: ["${LP_CLI_TEST_UNSET}"]
  - type: filter
    expr: '.event =='
  - type: sigv4
sinks:
  - name: scale
    type: http
    url: http://127.0.0.1:9/v1/task
    timeout: soon
    retry: {max_attempts: 0}
  - name: scale
    type: file
    path: out/a.jsonl
    body: '.['
    bodyy: '.'
`
	if err := os.WriteFile(path, []byte(broken), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := labelpipe(t, "validate", "-c", path)
	if code != 1 {
		t.Fatalf("exit %d, want 1\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	want := []string{
		`:3:19: server: max_body_bytes: must be > 0`,
		`:7:15: environment variable LP_CLI_TEST_UNSET is not set`,
		`:9:11: stages[1] "filter": expr: invalid jq`,
		`:10:11: stages[2] "sigv4": unknown stage type "sigv4"`,
		`:15:14: sinks[0] "scale": timeout: bad duration`,
		`:16:27: sinks[0] "scale": retry.max_attempts: must be ≥ 1`,
		`:17:9: sinks[1] "scale": name is used by an earlier sink`,
		`:20:11: sinks[1] "scale": body: invalid jq`,
		`:21:5: sinks[1] "scale": unknown field "bodyy"`,
	}
	for _, w := range want {
		if !strings.Contains(stderr, path+w) {
			t.Errorf("stderr lacks %q:\n%s", path+w, stderr)
		}
	}
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	pos := regexp.MustCompile(`^` + regexp.QuoteMeta(path) + `:\d+:\d+: `)
	for _, l := range lines[:len(lines)-1] {
		if !pos.MatchString(l) {
			t.Errorf("error line without file:line:col: %q", l)
		}
	}
	if footer := lines[len(lines)-1]; !strings.HasPrefix(footer, fmt.Sprintf("%d error(s) in the config", len(lines)-1)) {
		t.Errorf("last line = %q, want the error count %d", footer, len(lines)-1)
	}
	if stdout != "" {
		t.Errorf("stdout = %q, want nothing", stdout)
	}
}

// preview prints JSON: every stage's verdict and every request each sink
// would send. Its exit code says whether the export would be accepted.
func TestPreview(t *testing.T) {
	t.Setenv("AQ_WEBHOOK_SECRET", "")
	cfg, dir := quickstart(t)
	tests := []struct {
		name         string
		args         []string
		wantCode     int
		wantStatus   int
		wantVerdicts string
		wantRequests map[string]int
	}{
		{"frames", []string{payloads + "issue-frames.json"}, 0, 202,
			"secret:skipped schema:passed dedupe:passed", map[string]int{"labelbox": 1, "scale": 3, "label_studio": 1, "cvat": 1}},
		{"with the secret", []string{"--secret", "dev-secret", payloads + "issue-10-elements.json"}, 0, 202,
			"secret:passed schema:passed dedupe:passed", map[string]int{"labelbox": 1, "scale": 10, "label_studio": 1, "cvat": 1}},
		{"wrong secret", []string{"--secret", "guess", payloads + "issue-frames.json"}, 1, 401,
			"secret:rejected", map[string]int{}},
		{"schema violation", []string{payloads + "invalid-missing-issue.json"}, 1, 422,
			"secret:skipped schema:rejected", map[string]int{}},
		{"test payload", []string{payloads + "test-payload.json"}, 0, 200,
			"secret:skipped schema:passed dedupe:passed", map[string]int{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := labelpipe(t, append([]string{"preview", "-c", cfg}, tt.args...)...)
			if code != tt.wantCode {
				t.Errorf("exit %d, want %d; stderr: %s", code, tt.wantCode, stderr)
			}
			var rep struct {
				Answer struct {
					Status int `json:"status"`
				} `json:"answer"`
				Stages []struct{ Name, Verdict string } `json:"stages"`
				Sinks  []struct {
					Name     string           `json:"name"`
					Requests []map[string]any `json:"requests"`
				} `json:"sinks"`
			}
			if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
				t.Fatalf("stdout is not JSON: %v\n%s", err, stdout)
			}
			if rep.Answer.Status != tt.wantStatus {
				t.Errorf("answer %d, want %d", rep.Answer.Status, tt.wantStatus)
			}
			var vs []string
			for _, s := range rep.Stages {
				vs = append(vs, s.Name+":"+s.Verdict)
			}
			if got := strings.Join(vs, " "); got != tt.wantVerdicts {
				t.Errorf("verdicts %q, want %q", got, tt.wantVerdicts)
			}
			got := map[string]int{}
			for _, s := range rep.Sinks {
				got[s.Name] = len(s.Requests)
				for _, r := range s.Requests {
					if r["body"] == nil {
						t.Errorf("sink %s: a request without a body", s.Name)
					}
				}
			}
			if len(got) != len(tt.wantRequests) {
				t.Errorf("requests per sink %v, want %v", got, tt.wantRequests)
			}
			for k, n := range tt.wantRequests {
				if got[k] != n {
					t.Errorf("requests per sink %v, want %v", got, tt.wantRequests)
				}
			}
		})
	}
	// Nothing was sent or written.
	files, _ := filepath.Glob(filepath.Join(dir, "out", "*"))
	for _, f := range files {
		if st, err := os.Stat(f); err == nil && st.Size() > 0 {
			t.Errorf("preview wrote %s", f)
		}
	}
}

// preview of configs/vendors.yaml needs neither Redis nor the vendors, and
// shows no key it was given.
func TestPreviewVendorsRedactsKeys(t *testing.T) {
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
	t.Setenv("CVAT_PROJECT_ID", "3")
	t.Setenv("REDIS_URL", "redis://127.0.0.1:1/0") // nothing listens there
	code, stdout, stderr := labelpipe(t, "preview", "-c", "../../configs/vendors.yaml", "--secret", keys["AQ_WEBHOOK_SECRET"],
		payloads+"issue-crops.json")
	if code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	for name, v := range keys {
		if strings.Contains(stdout+stderr, v) {
			t.Errorf("the output shows %s", name)
		}
	}
	// One request to Labelbox, one Scale task per element (2), one Label
	// Studio import, and CVAT's four (lookup, create, attach, status):
	// each with its Authorization redacted.
	if n := strings.Count(stdout, `"Authorization": "REDACTED"`); n != 8 {
		t.Errorf("%d redacted Authorization headers, want 8:\n%s", n, stdout)
	}
}

// The quickstart as a new user runs it: `labelpipe run`, then `labelpipe
// send` with a sample payload, which shows up in every quickstart sink;
// SIGTERM drains and exits 0.
func TestRunAndSend(t *testing.T) {
	t.Setenv("AQ_WEBHOOK_SECRET", "")
	t.Setenv("LABELPIPE_URL", "")
	cfg, dir := quickstart(t)
	var stdout, stderr testutil.LockedBuffer
	exited := make(chan int, 1)
	go func() { exited <- run([]string{"run", "-c", cfg}, &stdout, &stderr) }()

	addr := regexp.MustCompile(`listener=webhook addr=(127\.0\.0\.1:\d+)`)
	var url string
	deadline := time.Now().Add(20 * time.Second)
	for url == "" {
		if m := addr.FindStringSubmatch(stderr.String()); m != nil && strings.Contains(stderr.String(), "labelpipe running") {
			url = "http://" + m[1] + "/webhook"
			break
		}
		select {
		case code := <-exited:
			t.Fatalf("run exited %d before listening:\n%s", code, stderr.String())
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("run did not start listening:\n%s", stderr.String())
		}
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped { // a failed test still stops the daemon
			_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
			<-exited
		}
	})

	log := stderr.String()
	for _, w := range []string{"broker is memory", "stage ready", "stage=secret", "stage=schema", "stage=dedupe",
		"sink ready", "sink=labelbox", "sink=scale", "sink=label_studio",
		// Issue 12, observation 4: the events no sink takes are named at start.
		"no sink subscribes to issues-created, issue-update, dataset-complete, dataset-failed"} {
		if !strings.Contains(log, w) {
			t.Errorf("start-up log lacks %q:\n%s", w, log)
		}
	}

	code, out, errOut := labelpipe(t, "send", "--url", url, payloads+"issue-frames.json")
	if code != 0 || !strings.HasPrefix(out, "202 Accepted\n") || !strings.Contains(out, `"status":"accepted"`) {
		t.Fatalf("send: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	var answer struct{ ID, Key string }
	if err := json.Unmarshal([]byte(strings.TrimPrefix(out, "202 Accepted\n")), &answer); err != nil || answer.ID == "" || answer.Key == "" {
		t.Fatalf("202 answer without an id and a key: %q (%v)", out, err)
	}

	code, out, _ = labelpipe(t, "send", "--url", url, "--secret", "guess", payloads+"issue-frames.json")
	if code != 1 || !strings.HasPrefix(out, "401 Unauthorized\n") {
		t.Errorf("send with a wrong secret: exit %d, stdout %q; want 1 and the 401", code, out)
	}
	code, out, _ = labelpipe(t, "send", "--url", url, payloads+"issue-frames.json")
	if code != 0 || !strings.Contains(out, `"status":"duplicate"`) {
		t.Errorf("send again: exit %d, stdout %q; want 0 and duplicate", code, out)
	}

	// Every quickstart sink got the export, named by its id (Label
	// Studio's meta) or its key (Labelbox's batch, Scale's unique_id).
	for sink, name := range map[string]string{"labelbox": answer.Key, "scale": answer.Key, "label_studio": answer.ID} {
		path := filepath.Join(dir, "out", sink+".jsonl")
		deadline := time.Now().Add(10 * time.Second)
		for {
			b, _ := os.ReadFile(path)
			if bytes.Contains(b, []byte(name)) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s has no line for export %q:\n%s", path, name, b)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	stopped = true
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-exited:
		if code != 0 {
			t.Errorf("run exited %d after SIGTERM, want 0:\n%s", code, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not exit after SIGTERM")
	}
	if !strings.Contains(stderr.String(), "drained") {
		t.Errorf("log lacks the drain:\n%s", stderr.String())
	}
}
