package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Issue 12, observation 12: preview prints clean JSON: an unset variable
// as written (not URL-escaped), and empty lists rather than null.
func TestPreviewPrintsCleanJSON(t *testing.T) {
	clearVendorEnv(t)
	code, stdout, stderr := labelpipe(t, "preview", "-c", "../../configs/vendors.yaml", payloads+"issue-crops.json")
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	if strings.Contains(stdout, "%7B") || strings.Contains(stdout, "%7D") {
		t.Errorf("preview shows a URL-escaped variable:\n%s", stdout)
	}
	if !strings.Contains(stdout, `"url": "http://127.0.0.1:8081/api/projects/${LABEL_STUDIO_PROJECT_ID}/import"`) {
		t.Errorf("preview does not show the unset variable as written:\n%s", stdout)
	}
	cfg, _ := quickstart(t)
	code, stdout, _ = labelpipe(t, "preview", "-c", cfg, payloads+"invalid-missing-issue.json")
	if code != 1 || !strings.Contains(stdout, `"sinks": []`) || strings.Contains(stdout, "null") {
		t.Errorf("refused payload: exit %d, want 1 and \"sinks\": [] with no null:\n%s", code, stdout)
	}
}

// goModVersion is the go line of go.mod.
func goModVersion(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(data)
	if m == nil {
		t.Fatal("go.mod has no go line")
	}
	return string(m[1])
}

// Issue 12, observations 11 and 12: the README names go.mod's Go version,
// documents go install (stamped with -buildvcs=true) for production and go
// run for the quick start, and says why SIGTERM to go run orphans the
// daemon.
func TestREADMEInstallAndGoVersion(t *testing.T) {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(data)
	for _, w := range []string{
		"Go " + goModVersion(t) + " or newer",
		"go install -buildvcs=true github.com/labelpipe/labelpipe/cmd/labelpipe@latest",
		"go install -buildvcs=true ./cmd/labelpipe",
		"`go run` does not pass SIGTERM on",
	} {
		if !strings.Contains(readme, w) {
			t.Errorf("README lacks %q", w)
		}
	}
	if strings.Contains(readme, "Go (1.26+)") {
		t.Error("README still says Go 1.26+")
	}
	task, err := os.ReadFile("../../Taskfile.yml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(task), "go build -buildvcs=true") || !strings.Contains(string(task), "go install -buildvcs=true") {
		t.Error("Taskfile's build and install tasks do not stamp the version (-buildvcs=true)")
	}
}

// Issue 12, observation 12: a binary built as the README says (with
// -buildvcs=true, which overrides this machine's GOFLAGS=-buildvcs=false)
// shows the module version, the commit and its time, not "dev".
func TestVersionOfAStampedBuild(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatal("git is needed to stamp a build:", err)
	}
	rev, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatalf("git rev-parse HEAD: %v (the test runs in a git checkout)", err)
	}
	top, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Fatal(err)
	}
	// A clone, as a user has: go stamps nothing in a git worktree (its .git
	// is a file), which is how some of us work.
	clone := filepath.Join(t.TempDir(), "labelpipe")
	if out, err := exec.Command("git", "clone", "--quiet", strings.TrimSpace(string(top)), clone).CombinedOutput(); err != nil {
		t.Fatalf("git clone: %v\n%s", err, out)
	}
	bin := filepath.Join(t.TempDir(), "labelpipe")
	build := exec.Command("go", "build", "-buildvcs=true", "-o", bin, "./cmd/labelpipe")
	build.Dir = clone
	build.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false") // as on these machines
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build -buildvcs=true: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("labelpipe version: %v\n%s", err, out)
	}
	text := string(out)
	head := strings.TrimSpace(string(rev))
	for _, re := range []string{
		`(?m)^labelpipe v0\.0\.0-\d{14}-` + head[:12] + `(\+dirty)?$`,
		`(?m)^commit: +` + head + `( \(with uncommitted changes\))?$`,
		`(?m)^time: +\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`,
	} {
		if !regexp.MustCompile(re).MatchString(text) {
			t.Errorf("labelpipe version does not match %s:\n%s", re, text)
		}
	}
	if strings.Contains(text, "labelpipe dev") {
		t.Errorf("a stamped build says dev:\n%s", text)
	}
	// --version says the same on one line.
	out, err = exec.Command(bin, "--version").Output()
	if err != nil || !strings.Contains(string(out), "(commit "+head) {
		t.Errorf("labelpipe --version = %q, %v; want the commit", out, err)
	}
}
