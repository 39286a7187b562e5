package main

import (
	"slices"
	"strings"
	"testing"
)

// cliCase is one command line and what it must do.
type cliCase struct {
	name       string
	args       []string
	wantCode   int
	wantStdout []string
	wantStderr []string
	// emptyStdout/emptyStderr: that stream must stay empty.
	emptyStdout, emptyStderr bool
}

func (tt cliCase) check(t *testing.T) {
	t.Helper()
	code, stdout, stderr := labelpipe(t, tt.args...)
	if code != tt.wantCode {
		t.Errorf("labelpipe %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(tt.args, " "), code, tt.wantCode, stdout, stderr)
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
	if tt.emptyStdout && stdout != "" {
		t.Errorf("stdout = %q, want nothing", stdout)
	}
	if tt.emptyStderr && stderr != "" {
		t.Errorf("stderr = %q, want nothing", stderr)
	}
}

// Issue 12, observation 7: help is consistent (stdout, exit 0, with
// examples and the positional arguments), whichever way it is asked for.
func TestHelpIsOnStdoutAndExitsZero(t *testing.T) {
	cmds := map[string]string{
		"run": "labelpipe run [flags]", "validate": "labelpipe validate [flags]",
		"preview": "labelpipe preview PAYLOAD.json [flags]", "send": "labelpipe send PAYLOAD.json [flags]",
		"bench": "labelpipe bench [flags]", "dlq": "labelpipe dlq [command]", "version": "labelpipe version [flags]",
		"config": "labelpipe config [command]", "config schema": "labelpipe config schema [flags]",
	}
	var tests []cliCase
	tests = append(tests,
		cliCase{name: "-h", args: []string{"-h"}, wantStdout: []string{"Usage:", "Examples:", "Available Commands:", "completion"}, emptyStderr: true},
		cliCase{name: "--help", args: []string{"--help"}, wantStdout: []string{"Usage:"}, emptyStderr: true},
		cliCase{name: "help", args: []string{"help"}, wantStdout: []string{"Usage:"}, emptyStderr: true},
	)
	for c, usage := range cmds {
		words := strings.Fields(c)
		for _, args := range [][]string{append(slices.Clone(words), "-h"), append(slices.Clone(words), "--help"), append([]string{"help"}, words...)} {
			tests = append(tests, cliCase{name: strings.Join(args, " "), args: args,
				wantStdout: []string{"\n  " + usage + "\n", "Examples:\n  labelpipe " + c}, emptyStderr: true})
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.check)
	}
}

// Issue 12, observations 2, 7 and 8: a wrong command line is a usage
// error: exit 2, a message naming what is wrong on stderr, nothing on
// stdout, and nothing run.
func TestUsageErrorsExitTwo(t *testing.T) {
	tests := []cliCase{
		{name: "validate with the config as an argument", args: []string{"validate", "configs/vendors.yaml"},
			wantStderr: []string{`unexpected argument "configs/vendors.yaml"`, "labelpipe validate -c configs/vendors.yaml"}},
		{name: "run with the config as an argument", args: []string{"run", "configs/vendors.yaml"},
			wantStderr: []string{`unexpected argument "configs/vendors.yaml"`, "labelpipe run -c configs/vendors.yaml"}},
		{name: "run with an extra argument", args: []string{"run", "now"}, wantStderr: []string{`unexpected argument "now"`}},
		{name: "preview with two payloads", args: []string{"preview", payloads + "issue-frames.json", payloads + "issue-crops.json"},
			wantStderr: []string{"preview takes one payload file, got 2 arguments"}},
		{name: "send with two payloads", args: []string{"send", "a.json", "b.json"}, wantStderr: []string{"send takes one payload file"}},
		{name: "bench with an argument", args: []string{"bench", "fast"}, wantStderr: []string{`unexpected argument "fast"`}},
		{name: "version with an argument", args: []string{"version", "x"}, wantStderr: []string{`unexpected argument "x"`}},
		{name: "unknown flag", args: []string{"run", "--nope"}, wantStderr: []string{"unknown flag: --nope", "labelpipe run --help"}},
		{name: "unknown shorthand", args: []string{"send", "-z", "a.json"}, wantStderr: []string{"unknown shorthand flag: 'z'"}},
		{name: "flag without its value", args: []string{"validate", "-c"}, wantStderr: []string{"flag needs an argument"}},
		{name: "unknown command", args: []string{"deploy"}, wantStderr: []string{`unknown command "deploy"`}},
		{name: "bench -n -5", args: []string{"bench", "-n", "-5"}, wantStderr: []string{"-n/--exports -5: must be ≥ 1"}},
		{name: "bench -n 0", args: []string{"bench", "-n", "0"}, wantStderr: []string{"must be ≥ 1"}},
		{name: "bench --concurrency 0", args: []string{"bench", "--concurrency", "0"}, wantStderr: []string{"--concurrency 0: must be ≥ 1"}},
		{name: "bench -C -1", args: []string{"bench", "-C", "-1"}, wantStderr: []string{"--concurrency -1: must be ≥ 1"}},
		{name: "bench --elements 0", args: []string{"bench", "--elements", "0"}, wantStderr: []string{"--elements 0: must be ≥ 1"}},
		{name: "bench --export-mb -1", args: []string{"bench", "--export-mb", "-1"}, wantStderr: []string{"--export-mb -1: must be ≥ 0"}},
		{name: "bench --max-in-flight 0", args: []string{"bench", "--max-in-flight", "0"}, wantStderr: []string{"--max-in-flight 0: must be ≥ 1"}},
		{name: "bench --rounds 0", args: []string{"bench", "--rounds", "0"}, wantStderr: []string{"--rounds 0: must be ≥ 1"}},
		{name: "bench --timeout 0", args: []string{"bench", "--timeout", "0s"}, wantStderr: []string{"--timeout 0s: must be > 0"}},
		{name: "bench --vendor-latency -1s", args: []string{"bench", "--vendor-latency", "-1s"}, wantStderr: []string{"--vendor-latency -1s: must be ≥ 0"}},
		{name: "bench --broker kafka", args: []string{"bench", "--broker", "kafka"}, wantStderr: []string{`--broker "kafka": unknown broker (want memory or redis)`}},
		{name: "bench --broker redis without a URL", args: []string{"bench", "--broker", "redis"}, wantStderr: []string{"needs --redis-url"}},
		{name: "bench --fault", args: []string{"bench", "--fault", "melt"}, wantStderr: []string{`unknown fault "melt"`}},
		{name: "bench -c means config, not concurrency", args: []string{"bench", "-c", "32"}, wantStderr: []string{"unknown shorthand flag: 'c'"}},
		{name: "dlq without a subcommand", args: []string{"dlq"}, wantStderr: []string{"list, show, replay or purge"}},
		{name: "dlq show without --id", args: []string{"dlq", "show", "--sink", "scale"}, wantStderr: []string{"needs --sink and one --id"}},
		{name: "dlq replay with --id and --all", args: []string{"dlq", "replay", "--sink", "scale", "--id", "1-0", "--all"}, wantStderr: []string{"either --id (repeatable) or --all"}},
		{name: "dlq list --limit -1", args: []string{"dlq", "list", "--limit", "-1"}, wantStderr: []string{"must be ≥ 0"}},
		{name: "completion for an unknown shell", args: []string{"completion", "tcsh"}, wantStderr: []string{`unknown command "tcsh"`}},
		{name: "completion without a shell", args: []string{"completion"}, wantStderr: []string{"completion needs a shell"}},
	}
	for _, tt := range tests {
		tt.wantCode = 2
		tt.emptyStdout = true
		t.Run(tt.name, tt.check)
	}
}

// Issue 12, "shell completion": each shell's script is printed.
func TestCompletion(t *testing.T) {
	for shell, want := range map[string]string{
		"bash": "# bash completion V2 for labelpipe", "zsh": "#compdef labelpipe", "fish": "complete -c labelpipe",
		"powershell": "Register-ArgumentCompleter",
	} {
		t.Run(shell, cliCase{args: []string{"completion", shell}, wantStdout: []string{want}, emptyStderr: true}.check)
	}
	// The config flag completes YAML files, a payload JSON files.
	cliCase{args: []string{"__complete", "validate", "-c", ""}, wantStdout: []string{"yaml\nyml\n:8"}}.check(t)
	cliCase{args: []string{"__complete", "preview", ""}, wantStdout: []string{"json\n:8"}}.check(t)
	cliCase{args: []string{"__complete", "bench", "--broker", ""}, wantStdout: []string{"memory\nredis\n:4"}}.check(t)
}
