package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Issue 12, "labelpipe test": the shipped configs' tests pass, offline,
// whatever the environment holds.
func TestShippedConfigTestsPass(t *testing.T) {
	clearVendorEnv(t)
	t.Setenv("AQ_WEBHOOK_SECRET", "something-else") // the test files' env wins
	cliCase{args: []string{"test", "../../configs/tests"}, wantStdout: []string{
		"configs/tests/labelpipe_test.yaml (config ../../configs/labelpipe.yaml)",
		"configs/tests/vendors_test.yaml (config ../../configs/vendors.yaml)",
		"PASS  a frame issue reaches every vendor",
		"PASS  a crop issue becomes one Labelbox batch",
		"ok: all 10 tests passed",
	}, emptyStderr: true}.check(t)
}

// writeTests writes a test file beside a copy of the quickstart.
func writeTests(t *testing.T, text string) string {
	t.Helper()
	cfg, dir := quickstart(t)
	path := filepath.Join(dir, "tests.yaml")
	text = strings.ReplaceAll(text, "PAYLOADS/", mustAbs(t, payloads)+"/")
	if err := os.WriteFile(path, []byte("config: "+cfg+"\n"+text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// A test that does not hold fails, saying where and what was found; the
// exit code is 1.
func TestConfigTestFailuresAreReported(t *testing.T) {
	path := writeTests(t, `tests:
  - name: wrong count
    payload: PAYLOADS/issue-frames.json
    sinks: {scale: {count: 2}}
  - name: wrong value
    payload: PAYLOADS/issue-frames.json
    sinks: {scale: {requests: [{body: {project: other}}]}}
  - name: wrong answer
    payload: PAYLOADS/issue-frames.json
    secret: guess
    answer: {status: 202}
  - name: wrong verdict
    payload: PAYLOADS/invalid-missing-issue.json
    stages: {schema: passed}
  - name: failing check
    payload: PAYLOADS/issue-frames.json
    sinks: {label_studio: {check: (.body | length) == 99}}
  - name: unknown sink
    payload: PAYLOADS/issue-frames.json
    sinks: {scalr: {count: 1}}
  - name: holds
    payload: PAYLOADS/issue-frames.json
    sinks: {scale: {count: 3}}
`)
	cliCase{args: []string{"test", path}, wantCode: 1, wantStdout: []string{
		"FAIL  wrong count\n        sinks.scale: 3 requests, want 2",
		`FAIL  wrong value` + "\n" + `        sinks.scale.requests[0].body.project: "aquarium-relabel", want "other"`,
		"FAIL  wrong answer\n        answer: status 401, want 202",
		"FAIL  wrong verdict\n        stages.schema: rejected, want passed",
		`FAIL  failing check` + "\n" + `        sinks.label_studio.requests[0]: check "(.body | length) == 99" is not true`,
		"FAIL  unknown sink\n        sinks.scalr: the config has no such sink",
		"PASS  holds",
		"FAIL: 6 of 7 tests failed",
	}}.check(t)
}

// A broken test file, a missing one, or none at all is refused clearly.
func TestConfigTestFileErrors(t *testing.T) {
	cliCase{args: []string{"test", writeTests(t, "tests:\n  - name: x\n    payload: PAYLOADS/issue-frames.json\n    sinkz: {}\n")},
		wantCode: 1, wantStderr: []string{`not a test file: json: unknown field "sinkz"`}}.check(t)
	cliCase{args: []string{"test", writeTests(t, "tests: []\n")}, wantCode: 1, wantStderr: []string{"no tests"}}.check(t)
	cliCase{args: []string{"test", "nope.yaml"}, wantCode: 2, wantStderr: []string{"test: stat nope.yaml"}}.check(t)
	t.Chdir(t.TempDir())
	cliCase{args: []string{"test"}, wantCode: 2, wantStderr: []string{"test needs test files (there is no configs/tests here)"}}.check(t)
}
