package pipeline_test

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/builtin"
	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/sinks"
	"github.com/labelpipe/labelpipe/stages"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

// errPos is the start of every positioned config error line.
var errPos = regexp.MustCompile(`^([^:]+):(\d+):(\d+): `)

// unpositioned are problems of the whole file, which have no line.
var unpositioned = []string{"at least one sink is required", "config is empty"}

// Each testdata/config/NAME.yaml is broken on purpose; NAME.golden holds
// every error it gets, as `labelpipe validate` prints them. The table
// below names what each file must report, so that a golden file written
// with -update cannot silently lose an error.
func TestConfigErrors(t *testing.T) {
	t.Setenv("LP_TEST_SET_SECRET", "set")
	t.Setenv("LP_TEST_UNSET_SECRET", "") // empty counts as unset
	t.Setenv("LP_TEST_UNSET_KEY", "")
	t.Setenv("LP_TEST_UNSET_TOKEN", "")
	t.Setenv("LP_TEST_ADDR", "")

	want := map[string][]string{
		"unknown-keys": {
			`:4:3: server: unknown field "max_body_byte"`,
			`:6:1: unknown key "logging"`,
			`stages[0] "dedupe": unknown field "stor"`,
			`sinks[0] "archive": unknown field "envelop"`,
			// An unknown key does not hide the entry's other problems.
			`sinks[0] "archive": body: invalid jq`,
			`:22:7: sinks[1] "scale": retry: unknown field "max_attempt"`,
		},
		"bad-durations": {
			`server: shutdown_timeout: bad duration`,
			`stages[0] "dedupe": ttl: bad duration`,
			`sinks[0] "archive": timeout: bad duration`,
			`sinks[0] "archive": retry.initial_interval: bad duration`,
		},
		"invalid-jq": {
			`:6:11: stages[0] "filter": expr: invalid jq`,
			`:8:11: stages[1] "transform": expr: invalid jq`,
			`:13:11: sinks[0] "archive": body: invalid jq`,
			`:17:13: sinks[1] "scale": filter: invalid jq`,
			`sinks[2] "labelbox": variables: invalid jq`,
		},
		"unknown-types": {
			`:7:11: stages[1] "sigv4": unknown stage type "sigv4" (known: dedupe, filter, rate_limit, schema, secret, transform)`,
			`:13:11: sinks[1] "kafka": unknown sink type "kafka" (known: cvat, file, graphql, http, label_studio, labelbox, scale)`,
		},
		"env": {
			`:7:15: environment variable LP_TEST_UNSET_SECRET is not set`,
			`:12:30: environment variable LP_TEST_UNSET_KEY is not set`,
			`:20:16: environment variable LP_TEST_UNSET_TOKEN is not set`,
		},
		"retry-zero": {
			`sinks[1] "scale": retry.max_attempts: must be ≥ 1`,
			`sinks[1] "scale": retry.max_interval: must be ≥ retry.initial_interval`,
			`sinks[1] "scale": breaker.failure_ratio: must be between 0 and 1`,
			`sinks[1] "scale": rate_limit.per_second: must be ≥ 0`,
		},
		"duplicate-names": {
			`stages[1] "only_issues": name is used by an earlier stage`,
			`sinks[1] "vendor": name is used by an earlier sink`,
			`sinks[2] "bad name!": name may hold only letters, digits, _ and -`,
			`sinks[3]: name is required`,
		},
		"wrong-types": {
			`:6:14: stages[0] "secret": secrets: mapping was used where sequence is expected`,
			`:10:10: sinks[0] "scale": url: cannot unmarshal`,
			`:11:27: sinks[0] "scale": success_status[1]: 999 is not an HTTP status`,
			`:15:15: sinks[1] "archive": envelope: cannot unmarshal`,
			`:16:20: sinks[1] "archive": max_in_flight: cannot unmarshal`,
		},
		"pairings": {
			`:7:12: stages[0] "dedupe": store: store redis keeps keys after a crash, but broker memory loses the exports they name`,
			`stages[1] "quick": hold: must be longer than broker.queue_wait (10s)`,
			`sinks[0] "archive": queue.max_requests: must be ≥ 1`,
			`sinks[0] "archive": queue.on_full: unknown action "drop" (want dead_letter or backpressure)`,
		},
		// A vendor preset missing its key, project or url says so, at the
		// entry when the key is absent.
		"presets": {
			`:4:9: sinks[0] "labelbox": api_key: is required (or api_key_file)`,
			`:4:9: sinks[0] "labelbox": project_id: is required`,
			`:6:15: sinks[0] "labelbox": priority: must be 1 (highest) to 5`,
			`:7:9: sinks[1] "scale": project: is required`,
			`:10:19: sinks[1] "scale": api_key_file: conflicts with api_key`,
			`:11:10: sinks[1] "scale": url: must be an absolute http:// or https:// URL`,
			`:12:9: sinks[2] "label_studio": url: is required`,
			`:14:14: environment variable LP_TEST_UNSET_KEY is not set`,
			`:15:17: sinks[2] "label_studio": project_id: must be the project's numeric id`,
		},
		// Issue 12, observations 3 and 4: what run rejected or silently
		// ignored, validate reports.
		"events-and-log": {
			`:5:10: log: level: unknown level "inf" (want debug, info, warn, error)`,
			`:6:11: log: format: unknown format "jsn" (want text or json)`,
			`:7:32: custom_events[1]: "model-trained" is declared twice`,
			`stages[0] "schema": schema: unknown built-in schema "issue-exportd" (known: issue-exported`,
			`:11:30: stages[0] "schema": events[1]: unknown event "dataset-completed" (did you mean "dataset-complete"?)`,
			`:16:14: sinks[0] "archive": events[0]: unknown event "issue_exported" (did you mean "issue-exported"?); Aquarium sends issue-exported, issues-created, issue-update, dataset-complete, dataset-failed; declare any other in custom_events`,
			`:20:29: sinks[1] "models": events[1]: unknown event "model-trainde" (did you mean "model-trained"?)`,
		},
		"server-limits": {
			`:5:23: server: max_inflight_bytes: must be ≥ max_body_bytes`,
		},
		"admin-open": {
			`:5:9: admin: addr: ":9090" is reachable from other machines`,
			`set admin.token (e.g. ${LABELPIPE_ADMIN_TOKEN}) or admin.token_file, or bind 127.0.0.1`,
		},
		"admin-token": {
			`:6:10: admin: token: is shorter than 16 characters`,
			`:7:15: admin: token_file: set admin.token or admin.token_file, not both`,
			`admin: allowed_hosts[1]: "https://admin.example.internal/" is not a host name`,
			`admin: allowed_hosts[2]: "*.example.internal" is not a host name`,
		},
		"admin-token-file": {
			`:6:15: admin: token_file: open testdata/config/secrets/missing-token: no such file`,
		},
		"no-sinks": {
			`broker: type: unknown broker "kafka"`,
			`sinks: at least one sink is required`,
		},
		// Errors found while reading the file and errors found in the
		// stage and sink types' own options come out together.
		"everything": {
			`server: max_body_bytes: must be > 0`,
			`server: unknown field "read_timout"`,
			`environment variable LP_TEST_UNSET_SECRET is not set`,
			`stages[1] "filter": expr: invalid jq`,
			`stages[2] "sigv4": unknown stage type`,
			`sinks[0] "labelbox": variables: invalid jq`,
			`sinks[0] "labelbox": timeout: bad duration`,
			// The unknown key beside it does not hide max_attempts: 0.
			`:21:21: sinks[0] "labelbox": retry.max_attempts: must be ≥ 1`,
			`:22:7: sinks[0] "labelbox": retry: unknown field "max_attempt"`,
			`sinks[1] "labelbox": name is used by an earlier sink`,
			`sinks[1] "labelbox": unknown sink type "kafka"`,
			`sinks[2] "scale": filter: invalid jq`,
			`sinks[2] "scale": retry.initial_interval: bad duration`,
		},
	}

	files, err := filepath.Glob("testdata/config/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no test configs: %v", err)
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".yaml")
		t.Run(name, func(t *testing.T) {
			_, err := pipeline.LoadConfig(file, pipeline.ResolveWith(builtin.Registry()))
			if err == nil {
				t.Fatal("config loaded without errors")
			}
			var ces pipeline.ConfigErrors
			if !errors.As(err, &ces) {
				t.Fatalf("error is %T, want pipeline.ConfigErrors: %v", err, err)
			}
			got := err.Error() + "\n"
			checkGolden(t, strings.TrimSuffix(file, ".yaml")+".golden", got)

			wants, ok := want[name]
			if !ok {
				t.Fatalf("add %s to the table of what each file must report", name)
			}
			for _, w := range wants {
				if !strings.Contains(got, w) {
					t.Errorf("errors do not report %q; got:\n%s", w, got)
				}
			}
			// Every error names the file and a line and column, in file order.
			prevLine, prevCol := 0, 0
			for _, line := range strings.Split(strings.TrimSpace(got), "\n") {
				m := errPos.FindStringSubmatch(line)
				if m == nil {
					if !containsAny(line, unpositioned) {
						t.Errorf("error has no file:line:col: %q", line)
					}
					continue
				}
				ln, _ := strconv.Atoi(m[2])
				col, _ := strconv.Atoi(m[3])
				if m[1] != file || ln < 1 || col < 1 {
					t.Errorf("error position %s:%d:%d, want %s and a line and column ≥ 1: %q", m[1], ln, col, file, line)
				}
				if ln < prevLine || (ln == prevLine && col < prevCol) {
					t.Errorf("errors are not in file order at %q", line)
				}
				prevLine, prevCol = ln, col
			}
		})
	}
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

func checkGolden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (run go test -update to accept):\n--- got ---\n%s--- want ---\n%s", path, got, want)
	}
}

// Without ResolveWith, the stage and sink options are checked by Resolve
// (New calls it) and report the same errors.
func TestConfigResolveReportsTheSameErrors(t *testing.T) {
	const file = "testdata/config/unknown-types.yaml"
	cfg, err := pipeline.LoadConfig(file)
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	resolveErr := cfg.Resolve(builtin.Registry())
	_, loadErr := pipeline.LoadConfig(file, pipeline.ResolveWith(builtin.Registry()))
	if resolveErr == nil || loadErr == nil || resolveErr.Error() != loadErr.Error() {
		t.Errorf("Resolve:\n%v\nLoadConfig with ResolveWith:\n%v", resolveErr, loadErr)
	}
	if _, err := pipeline.New(cfg, pipeline.Options{Registry: builtin.Registry()}); err == nil || err.Error() != resolveErr.Error() {
		t.Errorf("New = %v, want the resolve errors", err)
	}
}

func TestConfigInterpolation(t *testing.T) {
	t.Setenv("LP_TEST_SECRET", "from-env")
	t.Setenv("LP_TEST_EMPTY", "")
	t.Setenv("LP_TEST_SHAPE", "x\"]\n  injected: true")
	const text = `
server: {addr: "${LP_TEST_NOT_SET_ADDR:-}", path: "${LP_TEST_NOT_SET_PATH:-/hooks/aquarium}"}
admin: {addr: ""}
stages:
  - type: secret
    secrets: ["${LP_TEST_SECRET}", "${LP_TEST_EMPTY:-fallback}", "pre-${LP_TEST_SECRET}-post", "${LP_TEST_SHAPE}"]
sinks:
  - name: labelbox
    type: graphql
    url: "${LP_TEST_NOT_SET_URL:-https://api.labelbox.com/graphql}"
    headers: {Authorization: "Bearer ${LP_TEST_SECRET}"}
    query: 'mutation { ok }'
`
	cfg, err := pipeline.ParseConfig("interp.yaml", []byte(text), pipeline.ResolveWith(builtin.Registry()))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Server.Addr != "" || cfg.Server.Path != "/hooks/aquarium" {
		t.Errorf("server = %+v, want the defaults after :-", cfg.Server)
	}
	sec := cfg.Stages[0].Options.(*stages.SecretConfig)
	wantSecrets := []string{"from-env", "fallback", "pre-from-env-post", "x\"]\n  injected: true"}
	if strings.Join(sec.Secrets, "|") != strings.Join(wantSecrets, "|") {
		t.Errorf("secrets = %q, want %q (a value never changes the document's shape)", sec.Secrets, wantSecrets)
	}
	gql := cfg.Sinks[0].Options.(*sinks.GraphQLConfig)
	if gql.URL != "https://api.labelbox.com/graphql" || gql.Headers["Authorization"] != "Bearer from-env" {
		t.Errorf("graphql sink = url %q, Authorization %q", gql.URL, gql.Headers["Authorization"])
	}

	// preview loads configs without the keys: unset variables stay as
	// written, so the preview shows what is missing.
	const unset = "server: {addr: \"\"}\nadmin: {addr: \"\"}\nsinks:\n  - {name: a, type: file, path: \"out/${LP_TEST_NOT_SET_DIR}a.jsonl\"}\n"
	if _, err := pipeline.ParseConfig("unset.yaml", []byte(unset)); err == nil || !strings.Contains(err.Error(), "unset.yaml:4:") {
		t.Errorf("unset variable without AllowUnsetEnv: %v, want a positioned error", err)
	}
	cfg, err = pipeline.ParseConfig("unset.yaml", []byte(unset), pipeline.AllowUnsetEnv(), pipeline.ResolveWith(builtin.Registry()))
	if err != nil {
		t.Fatalf("AllowUnsetEnv: %v", err)
	}
	if p := cfg.Sinks[0].Options.(*sinks.FileConfig).Path; p != "out/${LP_TEST_NOT_SET_DIR}a.jsonl" {
		t.Errorf("path = %q, want the reference left as written", p)
	}
}

func TestConfigDefaults(t *testing.T) {
	cfg, err := pipeline.ParseConfig("min.yaml", []byte("sinks:\n  - {name: a, type: file, path: a.jsonl}\n"), pipeline.ResolveWith(builtin.Registry()))
	if err != nil {
		t.Fatal(err)
	}
	s, c := cfg.Server, cfg.Sinks[0]
	checks := []struct {
		what      string
		got, want any
	}{
		{"server.addr", s.Addr, "127.0.0.1:8080"},
		{"server.path", s.Path, "/webhook"},
		{"server.max_body_bytes", s.MaxBodyBytes, int64(32 << 20)},
		{"server.shutdown_timeout", s.ShutdownTimeout, 30 * time.Second},
		{"admin.addr", cfg.Admin.Addr, "127.0.0.1:9090"},
		{"broker.type", cfg.Broker.Type, "memory"},
		{"sinks[0].events", strings.Join(c.Events, ","), "issue-exported"},
		{"sinks[0].timeout", c.Timeout, 30 * time.Second},
		{"sinks[0].max_in_flight", c.MaxInFlight, 4},
		{"sinks[0].retry.max_attempts", c.Retry.MaxAttempts, 8},
		{"sinks[0].breaker.consecutive_failures", c.Breaker.ConsecutiveFailures, uint32(5)},
		{"sinks[0] file body", c.Options.(*sinks.FileConfig).Body, "."},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s = %v, want %v", ck.what, ck.got, ck.want)
		}
	}
}

// The shipped configs load; vendors.yaml without its keys names exactly
// the variables to set, each where it is used.
func TestShippedConfigs(t *testing.T) {
	for _, v := range []string{"AQ_WEBHOOK_SECRET", "LABELBOX_API_KEY", "LABELBOX_PROJECT_ID", "SCALE_API_KEY",
		"SCALE_PROJECT", "LABEL_STUDIO_PROJECT_ID", "LABEL_STUDIO_API_KEY", "CVAT_TOKEN", "CVAT_PROJECT_ID",
		// With defaults in the configs; a developer's shell must not change the result.
		"LABELPIPE_ADDR", "LABELPIPE_ADMIN_ADDR", "LABELPIPE_ADMIN_TOKEN", "REDIS_URL", "LABELPIPE_TRACING", "CVAT_URL"} {
		t.Setenv(v, "")
	}
	if _, err := pipeline.LoadConfig("../configs/labelpipe.yaml", pipeline.ResolveWith(builtin.Registry())); err != nil {
		t.Errorf("quickstart: %v", err)
	}
	// preview needs no keys.
	if _, err := pipeline.LoadConfig("../configs/vendors.yaml", pipeline.AllowUnsetEnv(), pipeline.ResolveWith(builtin.Registry())); err != nil {
		t.Errorf("vendors.yaml with AllowUnsetEnv: %v", err)
	}
	_, err := pipeline.LoadConfig("../configs/vendors.yaml", pipeline.ResolveWith(builtin.Registry()))
	var ces pipeline.ConfigErrors
	if !errors.As(err, &ces) {
		t.Fatalf("vendors.yaml without keys: %v, want config errors", err)
	}
	for _, ce := range ces {
		if !strings.Contains(ce.Msg, "environment variable") && !strings.Contains(ce.Msg, "is empty") {
			t.Errorf("unexpected error: %v", ce)
		}
		if ce.Line < 1 {
			t.Errorf("error without a line: %v", ce)
		}
	}
}

// Problems only building finds (a schema file that cannot be read, a file
// sink that cannot be opened) are errors from New, positioned at the stage
// or sink, and New cleans up after itself.
func TestBuildErrors(t *testing.T) {
	dir := t.TempDir()
	notJSON := filepath.Join(dir, "broken.json")
	if err := os.WriteFile(notJSON, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	blocker := filepath.Join(dir, "blocker")
	if err := os.WriteFile(blocker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, stage, sink string
		want              []string
	}{
		{
			name:  "schema file missing",
			stage: `{type: schema, schema: schemas/missing.json}`,
			want:  []string{`build.yaml:5:28: stages[0] "schema": schema: `, "missing.json"},
		},
		{
			name:  "schema file is not JSON",
			stage: `{type: schema, schema: ` + strconv.Quote(notJSON) + `}`,
			want:  []string{`stages[0] "schema": `, "not valid JSON"},
		},
		{
			name: "file sink cannot be opened",
			sink: `{name: archive, type: file, path: ` + strconv.Quote(filepath.Join(blocker, "out.jsonl")) + `}`,
			want: []string{`sinks[1] "archive": `, "blocker"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stage := cmpOr(tt.stage, `{type: filter, expr: "true"}`)
			sink := cmpOr(tt.sink, `{name: other, type: file, path: other.jsonl}`)
			text := "server: {addr: \"\"}\nadmin: {addr: \"\"}\n\nstages:\n  - " + stage +
				"\nsinks:\n  - {name: first, type: file, path: first.jsonl}\n  - " + sink + "\n"
			cfg, err := pipeline.ParseConfig(filepath.Join(dir, "build.yaml"), []byte(text), pipeline.ResolveWith(builtin.Registry()))
			if err != nil {
				t.Fatalf("the config itself is fine, got: %v", err)
			}
			p, err := pipeline.New(cfg, pipeline.Options{Registry: builtin.Registry()})
			if err == nil {
				p.Close()
				t.Fatal("New succeeded")
			}
			if p != nil {
				t.Error("New returned a pipeline with its error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}
