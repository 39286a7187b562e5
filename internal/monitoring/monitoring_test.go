package monitoring

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/goccy/go-yaml"
)

// dir is configs/monitoring, from this package's directory.
const dir = "../../configs/monitoring"

// promtool runs promtool from PATH in wd and returns its output and
// whether it succeeded. A missing promtool fails the test: the monitoring
// files are only tested with it.
func promtool(t *testing.T, wd string, args ...string) (string, bool) {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool is not on PATH (Debian package prometheus; `go tool task deps:promtool` installs it): %v", err)
	}
	cmd := exec.CommandContext(t.Context(), path, args...)
	cmd.Dir = wd
	out, err := cmd.CombinedOutput()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("promtool %s: %v", strings.Join(args, " "), err)
		}
	}
	return string(out), err == nil
}

// ruleFile is the part of a Prometheus rule file the tests read.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// unitTests is the part of a promtool unit test file the tests read.
type unitTests struct {
	RuleFiles []string `yaml:"rule_files"`
	Tests     []struct {
		AlertRuleTest []struct {
			EvalTime  string `yaml:"eval_time"`
			Alertname string `yaml:"alertname"`
			ExpAlerts []struct {
				ExpLabels map[string]string `yaml:"exp_labels"`
			} `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

func readYAML(t *testing.T, name string, v any) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return raw
}

// alerts returns alerts.yaml's alert rules by name, with their expressions.
func alerts(t *testing.T) map[string]string {
	t.Helper()
	var rf ruleFile
	readYAML(t, "alerts.yaml", &rf)
	out := map[string]string{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s has a recording rule %q; alerts.yaml holds alerts only", g.Name, r.Record)
				continue
			}
			if _, dup := out[r.Alert]; dup {
				t.Errorf("alert %s defined twice", r.Alert)
			}
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s lacks a severity label, a summary or a description", r.Alert)
			}
			out[r.Alert] = r.Expr
		}
	}
	return out
}

// The four alerts issue 13 asks for are there, and promtool accepts the file.
func TestAlertRulesCheck(t *testing.T) {
	got := alerts(t)
	want := []string{"LabelpipeBreakerOpen", "LabelpipeDLQGrowing", "LabelpipeNoDeliveries", "LabelpipeOldestPendingHigh"}
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range got {
			if !yield(n) {
				return
			}
		}
	})
	if !slices.Equal(names, want) {
		t.Errorf("alerts.yaml has alerts %v, want %v", names, want)
	}
	out, ok := promtool(t, dir, "check", "rules", "alerts.yaml")
	if !ok || !strings.Contains(out, fmt.Sprintf("SUCCESS: %d rules found", len(got))) {
		t.Errorf("promtool check rules alerts.yaml (ok %v):\n%s", ok, out)
	}
}

// promtool test rules passes, and every alert has a case where it fires
// and one where it does not.
func TestAlertRulesUnitTests(t *testing.T) {
	out, ok := promtool(t, dir, "test", "rules", "alerts_test.yaml")
	if !ok || !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool test rules alerts_test.yaml failed:\n%s", out)
	}
	var ut unitTests
	readYAML(t, "alerts_test.yaml", &ut)
	if !slices.Equal(ut.RuleFiles, []string{"alerts.yaml"}) {
		t.Errorf("alerts_test.yaml tests rule files %v, want [alerts.yaml]", ut.RuleFiles)
	}
	fires, quiet := map[string]int{}, map[string]int{}
	for _, tc := range ut.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname]++
			} else {
				quiet[a.Alertname]++
			}
		}
	}
	for name := range alerts(t) {
		if fires[name] == 0 {
			t.Errorf("alerts_test.yaml has no case where %s fires", name)
		}
		if quiet[name] == 0 {
			t.Errorf("alerts_test.yaml has no case where %s does not fire", name)
		}
		delete(fires, name)
		delete(quiet, name)
	}
	for name := range fires {
		t.Errorf("alerts_test.yaml tests %s, which alerts.yaml does not define", name)
	}
	for name := range quiet {
		t.Errorf("alerts_test.yaml tests %s, which alerts.yaml does not define", name)
	}
}

// The unit tests can fail: with each alert's firing expectation turned
// into "no alert", promtool test rules fails and names that alert.
func TestAlertRulesUnitTestsCatchAWrongExpectation(t *testing.T) {
	rules, err := os.ReadFile(filepath.Join(dir, "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	readYAML(t, "alerts_test.yaml", &doc)
	for name := range alerts(t) {
		t.Run(name, func(t *testing.T) {
			// A deep copy by a JSON round trip, with the first firing case
			// of this alert expecting nothing.
			raw, err := json.Marshal(doc)
			if err != nil {
				t.Fatal(err)
			}
			var mutated map[string]any
			if err := json.Unmarshal(raw, &mutated); err != nil {
				t.Fatal(err)
			}
			changed := false
			for _, tc := range mutated["tests"].([]any) {
				for _, a := range tc.(map[string]any)["alert_rule_test"].([]any) {
					a := a.(map[string]any)
					if exp, _ := a["exp_alerts"].([]any); !changed && a["alertname"] == name && len(exp) > 0 {
						a["exp_alerts"] = []any{}
						changed = true
					}
				}
			}
			if !changed {
				t.Fatalf("no firing case for %s", name)
			}
			out, err := yaml.Marshal(mutated)
			if err != nil {
				t.Fatal(err)
			}
			tmp := t.TempDir()
			for file, b := range map[string][]byte{"alerts.yaml": rules, "alerts_test.yaml": out} {
				if err := os.WriteFile(filepath.Join(tmp, file), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			res, ok := promtool(t, tmp, "test", "rules", "alerts_test.yaml")
			if ok || !strings.Contains(res, "alertname: "+name) {
				t.Errorf("promtool test rules passed (%v) or did not name %s with a firing case expecting nothing:\n%s", ok, name, res)
			}
		})
	}
}

// dashboard is the part of a Grafana dashboard the tests read.
type dashboard struct {
	Inputs []struct {
		Name     string `json:"name"`
		Type     string `json:"type"`
		PluginID string `json:"pluginId"`
	} `json:"__inputs"`
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string     `json:"name"`
			Datasource datasource `json:"datasource"`
			Definition string     `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID         int         `json:"id"`
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Datasource *datasource `json:"datasource"`
	Targets    []struct {
		RefID      string      `json:"refId"`
		Datasource *datasource `json:"datasource"`
		Expr       string      `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	return d
}

// allPanels flattens rows.
func (d dashboard) allPanels() []panel {
	var out []panel
	for _, p := range d.Panels {
		out = append(out, p)
		out = append(out, p.Panels...)
	}
	return out
}

// labelValues is Grafana's label_values(selector, label) variable query.
var labelValues = regexp.MustCompile(`^label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$`)

// queries returns every PromQL expression of the dashboard: its panels'
// targets and the selectors of its label_values variables, keyed by where
// each is.
func (d dashboard) queries(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, p := range d.allPanels() {
		for _, tg := range p.Targets {
			out[fmt.Sprintf("panel %q target %s", p.Title, tg.RefID)] = tg.Expr
		}
	}
	for _, v := range d.Templating.List {
		m := labelValues.FindStringSubmatch(v.Definition)
		if m == nil {
			t.Errorf("variable %s: definition %q is not label_values(selector, label)", v.Name, v.Definition)
			continue
		}
		out["variable "+v.Name] = m[1]
	}
	return out
}

// The dashboard is importable as a shared dashboard: a ${DS_PROMETHEUS}
// input used by every panel, target and variable; every panel shows
// something; and it covers what the issue lists.
func TestDashboardShape(t *testing.T) {
	d := readDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard uid %q title %q: want both", d.UID, d.Title)
	}
	if len(d.Inputs) != 1 || d.Inputs[0].Name != "DS_PROMETHEUS" || d.Inputs[0].Type != "datasource" || d.Inputs[0].PluginID != "prometheus" {
		t.Errorf("__inputs = %+v, want one Prometheus datasource input DS_PROMETHEUS", d.Inputs)
	}
	const ds = "${DS_PROMETHEUS}"
	ids := map[int]bool{}
	for _, p := range d.allPanels() {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != ds {
			t.Errorf("panel %q: datasource %+v, want uid %s", p.Title, p.Datasource, ds)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" || tg.Datasource == nil || tg.Datasource.UID != ds {
				t.Errorf("panel %q target %s: expr %q datasource %+v", p.Title, tg.RefID, tg.Expr, tg.Datasource)
			}
		}
	}
	for _, v := range d.Templating.List {
		if v.Datasource.UID != ds {
			t.Errorf("variable %s: datasource %+v, want uid %s", v.Name, v.Datasource, ds)
		}
	}
	// What the issue asks the dashboard to show, by the metric showing it.
	named := map[string]bool{}
	for _, expr := range d.queries(t) {
		for _, m := range ParseQuery(expr).Metrics() {
			named[m] = true
		}
	}
	for what, metric := range map[string]string{
		"intake rate and answers": "labelpipe_webhook_requests_total",
		"per-sink delivery rate":  "labelpipe_sink_deliveries_total",
		"attempts by outcome":     "labelpipe_sink_attempts_total",
		"queue depth":             "labelpipe_sink_queue_depth",
		"oldest pending age":      "labelpipe_sink_oldest_pending_age_seconds",
		"breaker state":           "labelpipe_sink_breaker_state",
		"DLQ size":                "labelpipe_sink_dlq_size",
		"delivery latency":        "labelpipe_sink_delivery_latency_seconds_bucket",
		"stage latency":           "labelpipe_stage_duration_seconds_bucket",
		"webhook request latency": "http_server_request_duration_seconds_bucket",
	} {
		if !named[metric] {
			t.Errorf("the dashboard shows no %s (%s)", what, metric)
		}
	}
}

// grafanaVars are the dashboard's variables and Grafana's built-ins, with
// values that make a valid PromQL expression for promtool.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h", "$job", ".*", "$sink", ".*")

// promtool accepts every dashboard query, as a recording rule once the
// Grafana variables are substituted.
func TestDashboardQueriesParse(t *testing.T) {
	d := readDashboard(t)
	type rule struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var rules []rule
	for where, expr := range d.queries(t) {
		e := grafanaVars.Replace(expr)
		if strings.Contains(e, "$") {
			t.Errorf("%s: %q uses a variable the test does not know", where, expr)
		}
		rules = append(rules, rule{Record: fmt.Sprintf("dashboard:q%d", len(rules)), Expr: e})
	}
	raw, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	if err := os.WriteFile(filepath.Join(tmp, "dashboard_rules.yaml"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	out, ok := promtool(t, tmp, "check", "rules", "dashboard_rules.yaml")
	if !ok || !strings.Contains(out, fmt.Sprintf("SUCCESS: %d rules found", len(rules))) {
		t.Errorf("promtool check rules on the dashboard's %d queries (ok %v):\n%s\n%s", len(rules), ok, out, raw)
	}
}

// Every metric the alerts and the dashboard name is on the /metrics of a
// real pipeline that has delivered an export, dead-lettered one and
// opened a breaker; so are the labels they match and group by, and the
// values they match exactly.
func TestMetricsExistInScrape(t *testing.T) {
	exprs := map[string]string{}
	for name, expr := range alerts(t) {
		exprs["alert "+name] = expr
	}
	for where, expr := range readDashboard(t).queries(t) {
		exprs[where] = expr
	}
	s := livePipeline(t)

	// Labels and values seen per sample name.
	labels := map[string]map[string]map[string]bool{}
	pair := regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
	for series := range s.samples {
		name, rest, _ := strings.Cut(series, "{")
		if labels[name] == nil {
			labels[name] = map[string]map[string]bool{}
		}
		for _, m := range pair.FindAllStringSubmatch(rest, -1) {
			if labels[name][m[1]] == nil {
				labels[name][m[1]] = map[string]bool{}
			}
			labels[name][m[1]][m[2]] = true
		}
	}
	// Target labels Prometheus adds at scrape time, and the bucket bound.
	scrapeLabels := map[string]bool{"job": true, "instance": true}

	checked := 0
	for where, expr := range exprs {
		q := ParseQuery(expr)
		if len(q.Selectors) == 0 {
			t.Errorf("%s: no metric found in %q", where, expr)
		}
		for _, sel := range q.Selectors {
			checked++
			if !s.names[sel.Metric] {
				t.Errorf("%s: metric %s is not in /metrics", where, sel.Metric)
				continue
			}
			for _, m := range sel.Matchers {
				if scrapeLabels[m.Label] {
					continue
				}
				vals, ok := labels[sel.Metric][m.Label]
				if !ok {
					t.Errorf("%s: %s has no label %s in /metrics", where, sel.Metric, m.Label)
					continue
				}
				if m.Op == "=" && !vals[m.Value] {
					t.Errorf("%s: %s{%s=%q}: /metrics has values %v for %s", where, sel.Metric, m.Label, m.Value, slices.Sorted(func(yield func(string) bool) {
						for v := range vals {
							if !yield(v) {
								return
							}
						}
					}), m.Label)
				}
			}
		}
		for _, l := range q.Grouping {
			if scrapeLabels[l] {
				continue
			}
			found := false
			for _, m := range q.Metrics() {
				if _, ok := labels[m][l]; ok {
					found = true
				}
			}
			if !found {
				t.Errorf("%s: groups by %s, which none of %v carries in /metrics", where, l, q.Metrics())
			}
		}
	}
	if checked < len(exprs) {
		t.Errorf("checked %d metric references in %d expressions", checked, len(exprs))
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", s.raw)
	}
}

func TestParseQuery(t *testing.T) {
	for _, tc := range []struct {
		expr     string
		metrics  []string
		grouping []string
		matchers []Matcher // of the first selector
	}{
		{expr: `max by (sink) (delta(labelpipe_sink_dlq_size[15m])) > 0`,
			metrics: []string{"labelpipe_sink_dlq_size"}, grouping: []string{"sink"}},
		{expr: `sum(increase(a_total{answer="accepted"}[15m])) > 0 unless on () sum(increase(b_total{outcome="delivered"}[15m])) > 0`,
			metrics: []string{"a_total", "b_total"}, matchers: []Matcher{{"answer", "=", "accepted"}}},
		{expr: `histogram_quantile(0.99, sum by (le, sink) (rate(x_bucket{job=~"$job", sink=~"$sink"}[$__rate_interval])))`,
			metrics: []string{"x_bucket"}, grouping: []string{"le", "sink"},
			matchers: []Matcher{{"job", "=~", "$job"}, {"sink", "=~", "$sink"}}},
		{expr: `sum(rate(r_total{status=~"[45]..", a!="b,}"}[5m])) without (instance) / on(job) group_left(x) y offset 5m`,
			metrics: []string{"r_total", "y"}, grouping: []string{"instance", "job", "x"},
			matchers: []Matcher{{"status", "=~", "[45].."}, {"a", "!=", "b,}"}}},
		{expr: `max by (sink) (m) >= 1 and bool 2e3 or vector(1)`,
			metrics: []string{"m"}, grouping: []string{"sink"}},
		{expr: `label_values(q, sink)`, metrics: []string{"q", "sink"}}, // why variables strip label_values first
	} {
		q := ParseQuery(tc.expr)
		if got := q.Metrics(); !slices.Equal(got, tc.metrics) {
			t.Errorf("%s: metrics %v, want %v", tc.expr, got, tc.metrics)
		}
		if !slices.Equal(q.Grouping, tc.grouping) {
			t.Errorf("%s: grouping %v, want %v", tc.expr, q.Grouping, tc.grouping)
		}
		if tc.matchers != nil && (len(q.Selectors) == 0 || !slices.Equal(q.Selectors[0].Matchers, tc.matchers)) {
			t.Errorf("%s: selectors %+v, want the first with matchers %+v", tc.expr, q.Selectors, tc.matchers)
		}
	}
}

// CI runs `go tool task test` on a fresh machine: the test task installs
// promtool (deps:promtool) before it runs the tests, which fail without it.
func TestTaskfileInstallsPromtool(t *testing.T) {
	raw, err := os.ReadFile("../../Taskfile.yml")
	if err != nil {
		t.Fatal(err)
	}
	var tf struct {
		Tasks map[string]struct {
			Status []string `yaml:"status"`
			Cmds   []any    `yaml:"cmds"`
		} `yaml:"tasks"`
	}
	if err := yaml.Unmarshal(raw, &tf); err != nil {
		t.Fatal(err)
	}
	dep, ok := tf.Tasks["deps:promtool"]
	if !ok {
		t.Fatal("Taskfile.yml has no deps:promtool task")
	}
	if !slices.Equal(dep.Status, []string{"command -v promtool"}) || !strings.Contains(fmt.Sprint(dep.Cmds), "apt-get install") ||
		!strings.Contains(fmt.Sprint(dep.Cmds), " prometheus") {
		t.Errorf("deps:promtool: status %v cmds %v; want it to apt-get install prometheus unless promtool is on PATH", dep.Status, dep.Cmds)
	}
	installs, tests := -1, -1
	for i, c := range tf.Tasks["test"].Cmds {
		switch c := c.(type) {
		case map[string]any:
			if c["task"] == "deps:promtool" {
				installs = i
			}
		case string:
			if strings.HasPrefix(c, "go test") && tests < 0 {
				tests = i
			}
		}
	}
	if installs < 0 || tests < 0 || installs > tests {
		t.Errorf("the test task runs deps:promtool at step %d and go test at step %d; want deps:promtool first", installs, tests)
	}
}
