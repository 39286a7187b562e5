package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/spf13/cobra"

	"github.com/labelpipe/labelpipe/builtin"
	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/stages"
)

// defaultTests is where `labelpipe test` looks without arguments.
const defaultTests = "configs/tests"

// testFile is one YAML file of config unit tests.
type testFile struct {
	// Config is the config under test, relative to the test file; -c
	// overrides it.
	Config string `json:"config"`
	// Env holds the variables the config's ${VAR}s read. The process
	// environment is not read, so that a test gives the same result
	// everywhere; a variable set nowhere stays as written, as in preview.
	Env   map[string]string `json:"env"`
	Tests []testCase        `json:"tests"`
}

// testCase is one payload and what must come of it.
type testCase struct {
	Name string `json:"name"`
	// Payload is a JSON file, relative to the test file; or Body, the
	// payload inline.
	Payload string `json:"payload"`
	Body    any    `json:"body"`
	// Secret is presented as Scheme says (default header), like send;
	// Headers are sent as they are. With neither, secret stages are
	// skipped, as in preview.
	Secret  string            `json:"secret"`
	Scheme  string            `json:"scheme"`
	Headers map[string]string `json:"headers"`
	// Answer is the webhook's answer: its status, and values its body
	// must hold.
	Answer *struct {
		Status int `json:"status"`
		Body   any `json:"body"`
	} `json:"answer"`
	// Stages maps a stage name to its verdict: passed, rejected, dropped,
	// skipped.
	Stages map[string]string `json:"stages"`
	// Sinks maps a sink name to the requests it must receive. A sink not
	// named is not checked.
	Sinks map[string]sinkExpect `json:"sinks"`
}

// sinkExpect is what one sink must send.
type sinkExpect struct {
	// Count is how many requests; absent, not checked.
	Count *int `json:"count"`
	// Requests are, in order, values each request (method, url, headers,
	// body, chunk, idempotency_key) must hold: a mapping holds the keys
	// listed, a list has exactly the items listed, a scalar is equal.
	Requests []any `json:"requests"`
	// Check is a jq predicate every request must make true, e.g.
	// '.body.variables.globalKeys | length <= 100000'.
	Check string `json:"check"`
}

func newTestCmd() *cobra.Command {
	var cfgPath string
	cmd := &cobra.Command{
		Use:   "test [TESTFILE.yaml|DIR ...]",
		Short: "Run config unit tests: payloads and what each sink must receive",
		Long: `Run config unit tests offline, through the real stage chain and the sinks'
renderers (as preview does): nothing is sent and nothing is stored. A test
file names a config and lists payloads, each with the answer the webhook
must give, the stages' verdicts, and the requests each sink must receive.
Without arguments, the files in configs/tests are run. The exit code is 1 if
any test fails.

  config: ../labelpipe.yaml           # relative to the test file; -c overrides
  env: {SCALE_PROJECT: demo}          # what the config's ${VAR}s read
  tests:
    - name: a frame issue reaches every vendor
      payload: ../payloads/issue-frames.json     # or body: {event: ..., ...}
      secret: dev-secret                         # scheme: header (default),
                                                 #   github or standard_webhooks
      answer: {status: 202, body: {status: accepted}}
      stages: {secret: passed, schema: passed}
      sinks:
        scale:
          count: 3
          requests:
            - body: {project: aquarium-relabel, metadata: {element_type: frame}}
          check: .body.unique_id | test("^[0-9a-f]{32}-")
        labelbox: {count: 1}`,
		Example: `  labelpipe test                                   # configs/tests/*.yaml
  labelpipe test configs/tests/vendors_test.yaml
  labelpipe test -c my-pipeline.yaml configs/tests/labelpipe_test.yaml`,
		Args: cobra.ArbitraryArgs,
		ValidArgsFunction: func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			return []string{"yaml", "yml"}, cobra.ShellCompDirectiveFilterFileExt
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			override := ""
			if cmd.Flags().Changed("config") {
				override = cfgPath
			}
			files, err := testFiles(args)
			if err != nil {
				return err
			}
			return code(runTests(files, override, cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	addConfigFlag(cmd.Flags(), cmd, &cfgPath)
	return cmd
}

// testFiles expands the arguments: a directory stands for its .yaml files.
func testFiles(args []string) ([]string, error) {
	if len(args) == 0 {
		if _, err := os.Stat(defaultTests); err != nil {
			return nil, usageErrorf("test needs test files (there is no %s here)", defaultTests)
		}
		args = []string{defaultTests}
	}
	var files []string
	for _, a := range args {
		st, err := os.Stat(a)
		if err != nil {
			return nil, usageErrorf("test: %v", err)
		}
		if !st.IsDir() {
			files = append(files, a)
			continue
		}
		for _, pat := range []string{"*.yaml", "*.yml"} {
			m, _ := filepath.Glob(filepath.Join(a, pat))
			files = append(files, m...)
		}
	}
	if len(files) == 0 {
		return nil, usageErrorf("test: no .yaml test files in %s", strings.Join(args, ", "))
	}
	return files, nil
}

// runTests runs every test of every file and prints one line per test.
func runTests(files []string, override string, stdout, stderr io.Writer) int {
	passed, failed := 0, 0
	for _, f := range files {
		p, fl, err := runTestFile(f, override, stdout, stderr)
		if err != nil {
			fmt.Fprintf(stderr, "labelpipe test: %s: %v\n", f, err)
			return exitFailed
		}
		passed, failed = passed+p, failed+fl
	}
	if failed > 0 {
		fmt.Fprintf(stdout, "FAIL: %d of %d tests failed\n", failed, passed+failed)
		return exitFailed
	}
	fmt.Fprintf(stdout, "ok: all %d tests passed\n", passed)
	return 0
}

// readTestFile decodes a test file strictly.
func readTestFile(path string) (*testFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, err
	}
	var tf testFile
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&tf); err != nil {
		return nil, fmt.Errorf("not a test file: %w", err)
	}
	if len(tf.Tests) == 0 {
		return nil, fmt.Errorf("no tests")
	}
	return &tf, nil
}

func runTestFile(path, override string, stdout, stderr io.Writer) (passed, failed int, err error) {
	tf, err := readTestFile(path)
	if err != nil {
		return 0, 0, err
	}
	dir := filepath.Dir(path)
	cfgPath := override
	if cfgPath == "" {
		if tf.Config == "" {
			return 0, 0, fmt.Errorf("names no config (config: FILE, or -c)")
		}
		cfgPath = relTo(dir, tf.Config)
	}
	reg := builtin.Registry()
	cfg, err := loadConfig(cfgPath, stderr, pipeline.AllowUnsetEnv(), pipeline.ResolveWith(reg),
		pipeline.LookupEnv(func(name string) (string, bool) { v, ok := tf.Env[name]; return v, ok }))
	if err != nil {
		return 0, 0, fmt.Errorf("config %s does not load", cfgPath)
	}
	fmt.Fprintf(stdout, "%s (config %s)\n", path, cfgPath)
	for i, tc := range tf.Tests {
		name := tc.Name
		if name == "" {
			name = fmt.Sprintf("tests[%d]", i)
		}
		problems := runTestCase(cfg, reg, dir, tc)
		if len(problems) == 0 {
			passed++
			fmt.Fprintf(stdout, "  PASS  %s\n", name)
			continue
		}
		failed++
		fmt.Fprintf(stdout, "  FAIL  %s\n", name)
		for _, p := range problems {
			fmt.Fprintf(stdout, "        %s\n", p)
		}
	}
	return passed, failed, nil
}

// runTestCase previews one payload and returns what differs from the
// expectations.
func runTestCase(cfg *pipeline.Config, reg *pipeline.Registry, dir string, tc testCase) []string {
	var body []byte
	switch {
	case tc.Payload != "" && tc.Body != nil:
		return []string{"set payload or body, not both"}
	case tc.Payload != "":
		b, err := os.ReadFile(relTo(dir, tc.Payload))
		if err != nil {
			return []string{err.Error()}
		}
		body = b
	case tc.Body != nil:
		b, err := json.Marshal(tc.Body)
		if err != nil {
			return []string{err.Error()}
		}
		body = b
	default:
		return []string{"no payload or body"}
	}
	var h http.Header
	if tc.Secret != "" || len(tc.Headers) > 0 {
		h = http.Header{"Content-Type": {"application/json"}}
		for k, v := range tc.Headers {
			h.Set(k, v)
		}
		if tc.Secret != "" {
			scheme := tc.Scheme
			if scheme == "" {
				scheme = stages.SchemeHeader
			}
			if err := stages.Sign(h, scheme, "", tc.Secret, body, time.Now()); err != nil {
				return []string{"secret: " + err.Error()}
			}
		}
	}
	rep, err := pipeline.Preview(context.Background(), cfg, pipeline.Options{Registry: reg}, body, h)
	if err != nil {
		return []string{err.Error()}
	}
	// As JSON, so that expectations from YAML compare like for like.
	var got struct {
		Answer struct {
			Status int `json:"status"`
			Body   any `json:"body"`
		} `json:"answer"`
		Stages []struct{ Name, Verdict, Detail string } `json:"stages"`
		Sinks  []struct {
			Name     string `json:"name"`
			Skipped  string `json:"skipped"`
			Error    string `json:"error"`
			Requests []any  `json:"requests"`
		} `json:"sinks"`
	}
	j, _ := json.Marshal(rep)
	if err := json.Unmarshal(j, &got); err != nil {
		return []string{err.Error()}
	}
	var problems []string
	if a := tc.Answer; a != nil {
		if a.Status != 0 && a.Status != got.Answer.Status {
			problems = append(problems, fmt.Sprintf("answer: status %d, want %d (%s)", got.Answer.Status, a.Status, compact(got.Answer.Body)))
		}
		problems = append(problems, contains(got.Answer.Body, a.Body, "answer.body")...)
	}
	verdicts := map[string]string{}
	for _, s := range got.Stages {
		verdicts[s.Name] = s.Verdict
	}
	for _, name := range sortedKeys(tc.Stages) {
		if v, ok := verdicts[name]; !ok {
			problems = append(problems, fmt.Sprintf("stages.%s: not reached", name))
		} else if v != tc.Stages[name] {
			problems = append(problems, fmt.Sprintf("stages.%s: %s, want %s", name, v, tc.Stages[name]))
		}
	}
	for _, name := range sortedKeys(tc.Sinks) {
		want := tc.Sinks[name]
		var reqs []any
		known := slices.ContainsFunc(cfg.Sinks, func(s pipeline.SinkConfig) bool { return s.Name == name })
		if !known {
			problems = append(problems, fmt.Sprintf("sinks.%s: the config has no such sink", name))
			continue
		}
		for _, s := range got.Sinks {
			if s.Name == name {
				reqs = s.Requests
				if s.Error != "" {
					problems = append(problems, fmt.Sprintf("sinks.%s: %s", name, s.Error))
				}
			}
		}
		if want.Count != nil && len(reqs) != *want.Count {
			problems = append(problems, fmt.Sprintf("sinks.%s: %d requests, want %d", name, len(reqs), *want.Count))
		}
		for i, w := range want.Requests {
			if i >= len(reqs) {
				problems = append(problems, fmt.Sprintf("sinks.%s.requests[%d]: missing (%d requests)", name, i, len(reqs)))
				continue
			}
			problems = append(problems, contains(reqs[i], w, fmt.Sprintf("sinks.%s.requests[%d]", name, i))...)
		}
		if want.Check != "" {
			jq, err := pipeline.CompileJQ(want.Check)
			if err != nil {
				problems = append(problems, fmt.Sprintf("sinks.%s.check: %v", name, err))
				continue
			}
			for i, r := range reqs {
				ok, err := jq.Bool(context.Background(), r, nil)
				if err != nil || !ok {
					problems = append(problems, fmt.Sprintf("sinks.%s.requests[%d]: check %q is not true (%v)", name, i, want.Check, err))
				}
			}
		}
	}
	return problems
}

// relTo is p relative to dir, unless absolute.
func relTo(dir, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// contains reports where got does not hold want: a mapping holds the
// keys of want (and more), a list has want's items exactly, a scalar is
// equal.
func contains(got, want any, path string) []string {
	switch w := want.(type) {
	case nil:
		return nil
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: %s, want a mapping", path, compact(got))}
		}
		var out []string
		for _, k := range sortedKeys(w) {
			v, ok := g[k]
			if !ok {
				out = append(out, fmt.Sprintf("%s.%s: missing", path, k))
				continue
			}
			out = append(out, contains(v, w[k], path+"."+k)...)
		}
		return out
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return []string{fmt.Sprintf("%s: %s, want %d items", path, compact(got), len(w))}
		}
		var out []string
		for i := range w {
			out = append(out, contains(g[i], w[i], fmt.Sprintf("%s[%d]", path, i))...)
		}
		return out
	}
	if !reflect.DeepEqual(got, want) {
		return []string{fmt.Sprintf("%s: %s, want %s", path, compact(got), compact(want))}
	}
	return nil
}

// compact is v as short JSON.
func compact(v any) string {
	b, _ := json.Marshal(v)
	if len(b) > 200 {
		return string(b[:200]) + "…"
	}
	return string(b)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
