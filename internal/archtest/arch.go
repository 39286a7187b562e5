package archtest

import (
	"cmp"
	"maps"
	"slices"
	"strings"
)

// Module is labelpipe's module path.
const Module = "github.com/labelpipe/labelpipe"

// Import paths the rules name. Some may not exist yet; a missing package
// is just absent from the graph.
const (
	Pipeline     = Module + "/pipeline"
	Backend      = Pipeline + "/backend"
	Resilience   = Pipeline + "/resilience"
	Field        = Pipeline + "/field"
	CoreInternal = Pipeline + "/internal"
	BackendTest  = Backend + "/backendtest"
	Telemetry    = Pipeline + "/telemetry"
	Builtin      = Module + "/builtin"
	Stages       = Module + "/stages"
	Sinks        = Module + "/sinks"
	Cmd          = Module + "/cmd"
	TestKit      = Module + "/internal"
)

// Graph maps a package's import path to the import paths of every package
// it depends on, directly or not: the Deps of go list -deps. A package not
// in the graph has no dependencies.
type Graph map[string][]string

// Violation is one forbidden dependency.
type Violation struct {
	// Rule says which rule is broken, e.g. "core must not import stages".
	Rule string
	// From is the importing package.
	From string
	// To is the package it must not depend on.
	To string
}

func (v Violation) String() string { return v.Rule + ": " + v.From + " → " + v.To }

// Under reports whether path is root or below it.
func Under(path, root string) bool {
	return path == root || strings.HasPrefix(path, root+"/")
}

// IsCore reports whether path is part of the core: pipeline,
// pipeline/backend (the contracts, not its subpackages),
// pipeline/resilience, pipeline/field or anything under pipeline/internal.
func IsCore(path string) bool {
	switch path {
	case Pipeline, Backend, Resilience, Field:
		return true
	}
	return Under(path, CoreInternal)
}

// kind names what a labelpipe package outside the core is, for messages.
func kind(path string) string {
	switch {
	case Under(path, Stages):
		return "stages"
	case Under(path, Sinks):
		return "sinks"
	case Under(path, BackendTest):
		return "the backend conformance suite"
	case Under(path, Backend):
		return "backend implementations"
	case Under(path, Telemetry):
		return "telemetry wiring"
	case Under(path, Builtin), Under(path, Pipeline+"/builtin"):
		return "builtin registration"
	case Under(path, Cmd):
		return "cmd"
	case Under(path, TestKit):
		return "the test kit"
	}
	return "non-core packages"
}

// CoreImports checks rule 1: no core package depends on a labelpipe
// package outside the core.
func CoreImports(g Graph) []Violation {
	var vs []Violation
	for _, from := range sortedKeys(g) {
		if !IsCore(from) {
			continue
		}
		for _, to := range g[from] {
			if Under(to, Module) && !IsCore(to) {
				vs = append(vs, Violation{"core must not import " + kind(to), from, to})
			}
		}
	}
	return sortViolations(vs)
}

// StagesSinks checks rule 2: stages (and subpackages) and sinks (and
// subpackages) never depend on each other.
func StagesSinks(g Graph) []Violation {
	var vs []Violation
	for _, from := range sortedKeys(g) {
		for _, to := range g[from] {
			switch {
			case Under(from, Stages) && Under(to, Sinks):
				vs = append(vs, Violation{"stages must not import sinks", from, to})
			case Under(from, Sinks) && Under(to, Stages):
				vs = append(vs, Violation{"sinks must not import stages", from, to})
			}
		}
	}
	return sortViolations(vs)
}

// NoCmdImports checks rule 3: nothing depends on a package under cmd/,
// except a package of the same command's tree (cmd/labelpipe/x may be
// imported by cmd/labelpipe).
func NoCmdImports(g Graph) []Violation {
	var vs []Violation
	for _, from := range sortedKeys(g) {
		for _, to := range g[from] {
			if Under(to, Cmd) && command(from) != command(to) {
				vs = append(vs, Violation{"nothing may import cmd", from, to})
			}
		}
	}
	return sortViolations(vs)
}

// command returns the root of the command tree path is in
// (Module/cmd/<name>), or "" when it is not under cmd/.
func command(path string) string {
	if !Under(path, Cmd) {
		return ""
	}
	name, _, _ := strings.Cut(strings.TrimPrefix(path, Cmd+"/"), "/")
	return Cmd + "/" + name
}

// Heavy lists, by import path root, what a stage- or sink-only package must
// not pull in (rule 4), with the name the violation gives it.
var Heavy = []struct{ Root, Name string }{
	{"google.golang.org/grpc", "gRPC"},
	{"go.opentelemetry.io/otel/exporters", "OpenTelemetry exporters"},
	{"github.com/prometheus/client_golang", "the Prometheus client"},
	{"github.com/ThreeDotsLabs/watermill-redisstream", "redisstream"},
	{"net/http/pprof", "net/http/pprof"},
}

// Light checks rule 4 on pkgs: none of them depends on a [Heavy] package.
// A package of pkgs that is not in g has no dependencies.
func Light(g Graph, pkgs []string) []Violation {
	var vs []Violation
	for _, from := range slices.Compact(slices.Sorted(slices.Values(pkgs))) {
		for _, to := range g[from] {
			for _, h := range Heavy {
				if Under(to, h.Root) {
					vs = append(vs, Violation{"stage/sink-only packages must not pull in " + h.Name, from, to})
				}
			}
		}
	}
	return sortViolations(vs)
}

// LightPackages returns the packages rule 4 applies to in the real tree:
// the core (a plugin imports it, so it pulls in whatever the core does),
// stages and sinks and their subpackages. The fixed roots are always
// returned, whether g has them or not.
func LightPackages(g Graph) []string {
	pkgs := []string{Pipeline, Backend, Resilience, Field, Stages, Sinks}
	for p := range g {
		if IsCore(p) || Under(p, Stages) || Under(p, Sinks) {
			pkgs = append(pkgs, p)
		}
	}
	return slices.Compact(slices.Sorted(slices.Values(pkgs)))
}

// Check runs every rule: 1 to 3 on all of g, 4 on light.
func Check(g Graph, light []string) []Violation {
	var vs []Violation
	vs = append(vs, CoreImports(g)...)
	vs = append(vs, StagesSinks(g)...)
	vs = append(vs, NoCmdImports(g)...)
	vs = append(vs, Light(g, light)...)
	return sortViolations(vs)
}

// Outermost drops each violation that another one of the same rule and
// importer implies: v is dropped when some w's forbidden package itself
// depends on v's. It keeps the report short (pipeline → otlptracegrpc,
// not also every package otlptracegrpc pulls in); fixing what it keeps
// may reveal what it dropped, when that is also reached another way.
func Outermost(g Graph, vs []Violation) []Violation {
	var out []Violation
	for _, v := range vs {
		implied := slices.ContainsFunc(vs, func(w Violation) bool {
			return w != v && w.Rule == v.Rule && w.From == v.From && slices.Contains(g[w.To], v.To)
		})
		if !implied {
			out = append(out, v)
		}
	}
	return out
}

// ImportPath returns a shortest chain of direct imports from one package
// to another, both ends included, or nil when there is none. imports maps a
// package to the packages it imports directly (go list's Imports).
func ImportPath(imports map[string][]string, from, to string) []string {
	prev := map[string]string{from: ""}
	queue := []string{from}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if p == to {
			var path []string
			for ; p != ""; p = prev[p] {
				path = append(path, p)
			}
			slices.Reverse(path)
			return path
		}
		for _, q := range imports[p] {
			if _, seen := prev[q]; !seen {
				prev[q] = p
				queue = append(queue, q)
			}
		}
	}
	return nil
}

func sortedKeys(g Graph) []string { return slices.Sorted(maps.Keys(g)) }

// sortViolations sorts by importer, rule and forbidden package, and drops
// repeats.
func sortViolations(vs []Violation) []Violation {
	slices.SortFunc(vs, func(a, b Violation) int {
		return cmp.Or(cmp.Compare(a.From, b.From), cmp.Compare(a.Rule, b.Rule), cmp.Compare(a.To, b.To))
	})
	return slices.Compact(vs)
}
