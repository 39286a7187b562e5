package archtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// The fixtures, listed by explicit path: ./... does not match testdata.
const (
	stagePlugin = Module + "/internal/archtest/testdata/stageplugin"
	badPlugin   = Module + "/internal/archtest/testdata/badplugin"
)

// tree is the dependency graph go list reports for some packages.
type tree struct {
	deps    Graph               // transitive dependencies (Deps)
	imports map[string][]string // direct imports (Imports)
	matched []string            // packages the patterns named (not DepOnly)
	errs    map[string]string   // go list's error per package, if any
}

// goList runs go list -e -deps on patterns from the module root and returns
// the graph, non-test imports only. A package that does not exist comes
// back with an error and no dependencies.
func goList(t *testing.T, patterns ...string) tree {
	t.Helper()
	out := run(t, "", "go", "list", "-m", "-f", "{{.Dir}}\t{{.Path}}")
	root, mod, _ := strings.Cut(strings.TrimSpace(string(out)), "\t")
	if root == "" || mod != Module {
		t.Fatalf("go list -m: want module %s with a directory, got %q", Module, out)
	}
	args := append([]string{"list", "-e", "-deps", "-json=ImportPath,Imports,Deps,DepOnly,Error"}, patterns...)
	out = run(t, root, "go", args...)

	tr := tree{deps: Graph{}, imports: map[string][]string{}, errs: map[string]string{}}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct {
			ImportPath string
			Imports    []string
			Deps       []string
			DepOnly    bool
			Error      *struct{ Err string }
		}
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go list: decoding its output: %v", err)
		}
		tr.deps[p.ImportPath] = p.Deps
		tr.imports[p.ImportPath] = p.Imports
		if !p.DepOnly {
			tr.matched = append(tr.matched, p.ImportPath)
		}
		if p.Error != nil {
			tr.errs[p.ImportPath] = p.Error.Err
		}
	}
	return tr
}

func run(t *testing.T, dir, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.Bytes())
	}
	return out
}

// report fails t with one line per violation, dropping those another one
// implies (see Outermost) and naming the import chain when it is indirect.
func report(t *testing.T, tr tree, vs []Violation) {
	t.Helper()
	shown := Outermost(tr.deps, vs)
	for _, v := range shown {
		msg := v.String()
		if path := ImportPath(tr.imports, v.From, v.To); len(path) > 2 {
			msg += " (via " + strings.Join(path[1:len(path)-1], " → ") + ")"
		}
		t.Error(msg)
	}
	if n := len(vs) - len(shown); n > 0 {
		t.Logf("%d more violations, implied by those above, not shown", n)
	}
}

// TestArchitecture checks the rules on the real tree: every package of the
// module (./...) plus the stage-only plugin fixture.
func TestArchitecture(t *testing.T) {
	tr := goList(t, "./...", "./internal/archtest/testdata/stageplugin")

	for _, p := range tr.matched {
		if err, ok := tr.errs[p]; ok {
			t.Errorf("go list: %s: %s (its dependencies may be incomplete)", p, err)
		}
	}
	// These exist today; the test must at least check them.
	for _, p := range []string{Pipeline, Stages, Sinks, stagePlugin} {
		if !slices.Contains(tr.matched, p) {
			t.Errorf("package %s was not listed: the rules check nothing for it", p)
		}
	}
	// The fixture must stay a stage-only plugin: nothing of labelpipe
	// but the core.
	for _, d := range tr.deps[stagePlugin] {
		if Under(d, Module) && !IsCore(d) {
			t.Errorf("fixture %s must import only the core, but depends on %s", stagePlugin, d)
		}
	}
	for _, p := range []string{stagePlugin, Pipeline, Stages, Sinks} {
		t.Logf("dependencies of %s: %d", p, len(tr.deps[p]))
	}

	t.Run("core imports only the core", func(t *testing.T) {
		report(t, tr, CoreImports(tr.deps))
	})
	t.Run("stages and sinks do not import each other", func(t *testing.T) {
		report(t, tr, StagesSinks(tr.deps))
	})
	t.Run("nothing imports cmd", func(t *testing.T) {
		report(t, tr, NoCmdImports(tr.deps))
	})
	t.Run("stage and sink plugins stay light", func(t *testing.T) {
		light := append(LightPackages(tr.deps), stagePlugin)
		t.Logf("checked: %s", strings.Join(light, ", "))
		report(t, tr, Light(tr.deps, light))
	})
}

// TestFixturesBuild keeps the fixtures honest: they compile, so the stage
// plugin really is a plugin of today's pipeline API and not just a list of
// imports.
func TestFixturesBuild(t *testing.T) {
	out := run(t, "", "go", "list", "-m", "-f", "{{.Dir}}")
	run(t, strings.TrimSpace(string(out)), "go", "build",
		"./internal/archtest/testdata/stageplugin", "./internal/archtest/testdata/badplugin")
}

// TestCheckerFailsOnBadPlugin shows the architecture test can fail: the
// bad plugin fixture pulls in net/http/pprof and an exporter, and the
// checker reports exactly those.
func TestCheckerFailsOnBadPlugin(t *testing.T) {
	tr := goList(t, "./internal/archtest/testdata/badplugin")
	if err, ok := tr.errs[badPlugin]; ok || !slices.Contains(tr.matched, badPlugin) {
		t.Fatalf("go list did not load %s: %s", badPlugin, err)
	}
	t.Logf("dependencies of %s: %d", badPlugin, len(tr.deps[badPlugin]))

	const exporter = "go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	all := Check(tr.deps, []string{badPlugin})
	want := []Violation{
		{"stage/sink-only packages must not pull in OpenTelemetry exporters", badPlugin, exporter},
		{"stage/sink-only packages must not pull in net/http/pprof", badPlugin, "net/http/pprof"},
	}
	if got := Outermost(tr.deps, all); !slices.Equal(got, want) {
		t.Errorf("violations:\n got %v\nwant %v", got, want)
	}
	// The rest are the exporter's own subpackages.
	for _, v := range all {
		if !Under(v.To, exporter) && v.To != "net/http/pprof" {
			t.Errorf("unexpected violation %v", v)
		}
	}
	for _, v := range all {
		t.Log(v)
	}
}

// A synthetic graph that keeps every rule. Deps are transitive, as go list
// reports them, but only as far as the cases need.
var clean = Graph{
	Field:                    {"fmt"},
	Resilience:               {Field, "time"},
	Backend:                  {Field, "context"},
	CoreInternal + "/x":      {"sync"},
	Pipeline:                 {Backend, Resilience, Field, CoreInternal + "/x", "context", "go.opentelemetry.io/otel/trace"},
	Backend + "/memory":      {Backend, Pipeline},
	Backend + "/redis":       {Backend, "github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"},
	BackendTest:              {Backend, "testing"},
	Telemetry:                {Pipeline, "google.golang.org/grpc", "go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"},
	Stages:                   {Pipeline, Field, "context"},
	Sinks + "/vendor":        {Pipeline, Resilience},
	Sinks:                    {Pipeline, Sinks + "/vendor"},
	Builtin:                  {Pipeline, Stages, Sinks, Sinks + "/vendor", Backend + "/memory", Backend + "/redis"},
	Cmd + "/labelpipe":       {Builtin, Telemetry, Cmd + "/labelpipe/flags", "net/http/pprof", "github.com/prometheus/client_golang/prometheus"},
	Cmd + "/labelpipe/flags": {"flag"},
	TestKit + "/testutil":    {Pipeline, "testing"},
	"example.com/plugin":     {Pipeline, Field},
}

// with returns a copy of g where from also depends on tos.
func with(g Graph, from string, tos ...string) Graph {
	g = maps.Clone(g)
	g[from] = append(slices.Clone(g[from]), tos...)
	return g
}

// without returns a copy of g without the packages ps.
func without(g Graph, ps ...string) Graph {
	g = maps.Clone(g)
	for _, p := range ps {
		delete(g, p)
	}
	return g
}

func TestRules(t *testing.T) {
	const (
		grpc     = "google.golang.org/grpc"
		otlp     = "go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
		prom     = "github.com/prometheus/client_golang/prometheus"
		stream   = "github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
		pprof    = "net/http/pprof"
		plugin   = "example.com/plugin"
		cli      = Cmd + "/labelpipe"
		memory   = Backend + "/memory"
		vendor   = Sinks + "/vendor"
		light    = "stage/sink-only packages must not pull in "
		coreRule = "core must not import "
	)
	for _, c := range []struct {
		name string
		g    Graph
		want []Violation
	}{
		{"clean", clean, nil},
		{"missing packages", without(clean, Pipeline, Stages, Sinks, Backend), nil},
		{"empty graph", Graph{}, nil},

		{"core→stages", with(clean, Pipeline, Stages),
			[]Violation{{coreRule + "stages", Pipeline, Stages}}},
		{"core→sinks subpackage", with(clean, Resilience, vendor),
			[]Violation{{coreRule + "sinks", Resilience, vendor}}},
		{"core→backend implementation", with(clean, Backend, memory),
			[]Violation{{coreRule + "backend implementations", Backend, memory}}},
		{"core→conformance suite", with(clean, Pipeline, BackendTest),
			[]Violation{{coreRule + "the backend conformance suite", Pipeline, BackendTest}}},
		{"core→telemetry", with(clean, Pipeline, Telemetry),
			[]Violation{{coreRule + "telemetry wiring", Pipeline, Telemetry}}},
		{"core→builtin", with(clean, Field, Builtin),
			[]Violation{{coreRule + "builtin registration", Field, Builtin}}},
		{"core internal→test kit", with(clean, CoreInternal+"/x", TestKit+"/testutil"),
			[]Violation{{coreRule + "the test kit", CoreInternal + "/x", TestKit + "/testutil"}}},
		{"core→other labelpipe package", with(clean, Pipeline, Pipeline+"/builtin", Module+"/configs"),
			[]Violation{
				{coreRule + "builtin registration", Pipeline, Pipeline + "/builtin"},
				{coreRule + "non-core packages", Pipeline, Module + "/configs"},
			}},

		{"stages→sinks", with(clean, Stages, vendor),
			[]Violation{{"stages must not import sinks", Stages, vendor}}},
		{"sinks→stages", with(clean, vendor, Stages+"/x"),
			[]Violation{{"sinks must not import stages", vendor, Stages + "/x"}}},

		{"builtin→cmd", with(clean, Builtin, cli),
			[]Violation{{"nothing may import cmd", Builtin, cli}}},
		{"other command→cmd/labelpipe", with(clean, Cmd+"/other", cli+"/flags"),
			[]Violation{{"nothing may import cmd", Cmd + "/other", cli + "/flags"}}},
		{"core→cmd", with(clean, Pipeline, cli),
			[]Violation{
				{coreRule + "cmd", Pipeline, cli},
				{"nothing may import cmd", Pipeline, cli},
			}},

		{"plugin→grpc", with(clean, plugin, grpc, grpc+"/codes"),
			[]Violation{{light + "gRPC", plugin, grpc}, {light + "gRPC", plugin, grpc + "/codes"}}},
		{"core→OTLP exporter", with(clean, Pipeline, otlp),
			[]Violation{{light + "OpenTelemetry exporters", Pipeline, otlp}}},
		{"stages→Prometheus client", with(clean, Stages, prom),
			[]Violation{{light + "the Prometheus client", Stages, prom}}},
		{"sinks subpackage→redisstream", with(clean, vendor, stream),
			[]Violation{{light + "redisstream", vendor, stream}}},
		{"core internal→pprof", with(clean, CoreInternal+"/x", pprof),
			[]Violation{{light + "net/http/pprof", CoreInternal + "/x", pprof}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := Check(c.g, append(LightPackages(c.g), plugin))
			if !slices.Equal(got, c.want) {
				t.Errorf("violations:\n got %v\nwant %v", got, c.want)
			}
			for _, v := range got {
				t.Log(v)
			}
		})
	}
}

func TestViolationString(t *testing.T) {
	v := Violation{"core must not import stages", Pipeline, Stages}
	want := "core must not import stages: github.com/labelpipe/labelpipe/pipeline → github.com/labelpipe/labelpipe/stages"
	if v.String() != want {
		t.Errorf("got %q, want %q", v.String(), want)
	}
}

func TestLightPackages(t *testing.T) {
	got := LightPackages(Graph{
		CoreInternal + "/x": nil,
		Sinks + "/vendor":   nil,
		Stages + "/x":       nil,
		Telemetry:           nil,
		Backend + "/memory": nil,
		Builtin:             nil,
		"example.com/other": nil,
	})
	want := []string{Pipeline, Backend, Field, CoreInternal + "/x", Resilience, Sinks, Sinks + "/vendor", Stages, Stages + "/x"}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
}

func TestOutermost(t *testing.T) {
	const rule, other = "rule", "other rule"
	g := Graph{
		"p":     {"a", "a/sub", "b"},
		"q":     {"a/sub"},
		"a":     {"a/sub"},
		"a/sub": nil,
	}
	vs := []Violation{
		{rule, "p", "a"},
		{rule, "p", "a/sub"}, // implied by p → a
		{rule, "p", "b"},
		{other, "p", "a/sub"}, // another rule: kept
		{rule, "q", "a/sub"},  // another importer: kept
	}
	want := []Violation{vs[0], vs[2], vs[3], vs[4]}
	if got := Outermost(g, vs); !slices.Equal(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
}

func TestImportPath(t *testing.T) {
	imports := map[string][]string{
		"p": {"q", "r"},
		"q": {"s"},
		"r": {"s"},
		"s": {"t"},
	}
	for _, c := range []struct {
		from, to string
		want     []string
	}{
		{"p", "t", []string{"p", "q", "s", "t"}},
		{"p", "q", []string{"p", "q"}},
		{"p", "p", []string{"p"}},
		{"t", "p", nil},
		{"missing", "p", nil},
	} {
		if got := ImportPath(imports, c.from, c.to); !slices.Equal(got, c.want) {
			t.Errorf("ImportPath(%s, %s) = %v, want %v", c.from, c.to, got, c.want)
		}
	}
}
