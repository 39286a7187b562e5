package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// writeConfig writes a config into a fresh directory and returns its path.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pipeline.yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// minimal is a config with no listeners, so that a run that got past the
// config would not take a port; %s is spliced in before the stages.
const minimal = `server: {addr: ""}
admin: {addr: ""}
%s
sinks:
  - name: archive
    type: file
    path: out/archive.jsonl
    events: [%s]
`

// Issue 12, observations 3 and 4: what run rejects, validate rejects too,
// with the same file:line:col error; and what run used to accept and then
// silently ignore (a misspelled log setting or event), both reject.
func TestValidateCatchesWhatRunRejects(t *testing.T) {
	tests := []struct {
		name, extra, events string
		want                string
	}{
		{"misspelled built-in schema", "stages: [{type: schema, schema: issue-exportd}]", "issue-exported",
			`:3:33: stages[0] "schema": schema: unknown built-in schema "issue-exportd"`},
		{"missing schema file", "stages: [{type: schema, schema: schemas/mine.json}]", "issue-exported",
			`:3:33: stages[0] "schema": schema: read schema file: open `},
		{"log level", "log: {level: inf}", "issue-exported", `:3:14: log: level: unknown level "inf" (want debug, info, warn, error)`},
		{"log format", "log: {format: jsn}", "issue-exported", `:3:15: log: format: unknown format "jsn" (want text or json)`},
		{"misspelled event", "", "issue_exported", `:8:14: sinks[0] "archive": events[0]: unknown event "issue_exported" (did you mean "issue-exported"?)`},
		{"undeclared custom event", "", "issue-exported, model-trained", `:8:30: sinks[0] "archive": events[1]: unknown event "model-trained"`},
		{"schema stage event", "stages: [{type: schema, events: [dataset-completed]}]", "issue-exported",
			`:3:34: stages[0] "schema": events[0]: unknown event "dataset-completed" (did you mean "dataset-complete"?)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, strings.Replace(strings.Replace(minimal, "%s", tt.extra, 1), "%s", tt.events, 1))
			for _, cmd := range []string{"validate", "run"} {
				code, stdout, stderr := labelpipe(t, cmd, "-c", path)
				if code != 1 || !strings.Contains(stderr, path+tt.want) {
					t.Errorf("%s: exit %d, want 1 and %q\nstdout: %s\nstderr: %s", cmd, code, path+tt.want, stdout, stderr)
				}
			}
		})
	}
	// Declared, a custom event is fine.
	path := writeConfig(t, strings.Replace(strings.Replace(minimal, "%s", "custom_events: [model-trained]", 1), "%s", "issue-exported, model-trained", 1))
	cliCase{args: []string{"validate", "-c", path}, wantStdout: []string{"ok (0 stages, 1 sinks"}}.check(t)
}

// Issue 12, observation 4: validate names every event no sink subscribes
// to (the webhook answers them 200 ignored), and run logs it at start.
func TestValidateWarnsAboutUnsubscribedEvents(t *testing.T) {
	path := writeConfig(t, strings.Replace(strings.Replace(minimal, "%s", "custom_events: [model-trained]", 1), "%s", "issue-exported, dataset-failed", 1))
	cliCase{args: []string{"validate", "-c", path}, wantStdout: []string{": ok"},
		wantStderr: []string{path + ": warning: no sink subscribes to issues-created, issue-update, dataset-complete, model-trained: the webhook answers them 200 ignored"}}.check(t)

	all := "issue-exported, issues-created, issue-update, dataset-complete, dataset-failed"
	path = writeConfig(t, strings.Replace(strings.Replace(minimal, "%s", "", 1), "%s", all, 1))
	cliCase{args: []string{"validate", "-c", path}, wantStdout: []string{": ok"}, emptyStderr: true}.check(t)
}

// clearVendorEnv unsets every variable configs/vendors.yaml reads, as on a
// fresh machine, and returns their names.
func clearVendorEnv(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile("../../configs/vendors.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	ref := regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)`)
	for line := range strings.SplitSeq(string(data), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		for _, m := range ref.FindAllStringSubmatch(line, -1) {
			if !slices.Contains(names, m[1]) {
				names = append(names, m[1])
			}
		}
	}
	if len(names) < 7 {
		t.Fatalf("found only %v in configs/vendors.yaml", names)
	}
	for _, n := range names {
		t.Setenv(n, "") // empty counts as unset
	}
	return names
}

// Issue 12, observation 5: on a fresh machine, validate of vendors.yaml
// names what is missing and how to check without secrets; --env-file with
// the shipped example and --no-env check its shape; the README and the
// example list every variable it reads.
func TestValidateWithoutSecrets(t *testing.T) {
	names := clearVendorEnv(t)
	const vendors = "../../configs/vendors.yaml"
	cliCase{args: []string{"validate", "-c", vendors}, wantCode: 1, emptyStdout: true,
		wantStderr: []string{"environment variable AQ_WEBHOOK_SECRET is not set", "9 error(s) in the config; to check it without its secrets: labelpipe validate --no-env, or --env-file FILE"}}.check(t)
	cliCase{args: []string{"validate", "-c", vendors, "--no-env"}, wantStdout: []string{"ok (3 stages, 4 sinks, broker redis)"}}.check(t)
	cliCase{args: []string{"validate", "-c", vendors, "--env-file", "../../configs/vendors.env.example"},
		wantStdout: []string{"ok (3 stages, 4 sinks, broker redis)"}}.check(t)
	// The file wins over the environment, and a missing file is an error.
	cliCase{args: []string{"validate", "-c", vendors, "--env-file", filepath.Join(t.TempDir(), "nope.env")}, wantCode: 1,
		wantStderr: []string{"--env-file: open"}}.check(t)
	// --no-env ignores what is set: a bad value in the environment does not
	// count.
	t.Setenv("LABELPIPE_ADMIN_ADDR", "0.0.0.0:9090")
	cliCase{args: []string{"validate", "-c", vendors}, wantCode: 1, wantStderr: []string{`admin: addr: "0.0.0.0:9090" is reachable`}}.check(t)
	cliCase{args: []string{"validate", "-c", vendors, "--no-env"}, wantStdout: []string{": ok"}}.check(t)

	example, err := os.ReadFile("../../configs/vendors.env.example")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if !regexp.MustCompile(`(?m)^` + n + `=`).Match(example) {
			t.Errorf("configs/vendors.env.example lacks %s", n)
		}
		if !strings.Contains(string(readme), "| `"+n+"` |") {
			t.Errorf("the README's table of vendors.yaml's variables lacks %s", n)
		}
	}
}

// Issue 12, observation 12: run outside the repository, where the default
// config is not, suggests -c.
func TestRunOutsideTheRepositorySuggestsConfigFlag(t *testing.T) {
	t.Chdir(t.TempDir())
	for _, cmd := range []string{"run", "validate"} {
		cliCase{args: []string{cmd}, wantCode: 1, emptyStdout: true,
			wantStderr: []string{"open configs/labelpipe.yaml", "name yours with -c FILE"}}.check(t)
	}
}
