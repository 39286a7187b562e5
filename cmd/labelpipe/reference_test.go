package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/goccy/go-yaml"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/labelpipe/labelpipe/builtin"
	"github.com/labelpipe/labelpipe/configs"
	"github.com/labelpipe/labelpipe/internal/configdoc"
)

var update = flag.Bool("update", false, "rewrite the generated files: configs/labelpipe.schema.json and the README's reference and help")

// replaceBlock returns text with what lies between the begin and end
// markers replaced by body.
func replaceBlock(t *testing.T, text, name, body string) string {
	t.Helper()
	begin, end := "<!-- "+name+": begin -->\n", "<!-- "+name+": end -->"
	i, j := strings.Index(text, begin), strings.Index(text, end)
	if i < 0 || j < i {
		t.Fatalf("README has no %q … %q block", begin, end)
	}
	return text[:i+len(begin)] + body + text[j:]
}

// checkGenerated compares a generated file with what is committed, or
// rewrites it with -update.
func checkGenerated(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if *update {
		if !bytes.Equal(got, want) {
			if err := os.WriteFile(path, want, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is stale: run go test ./cmd/labelpipe -run 'TestConfigReference|TestREADMEHelp' -update", path)
	}
}

// reference derives the config reference from the structs and docs.
func reference(t *testing.T) configdoc.Reference {
	t.Helper()
	docs, err := configdoc.ReadDocs()
	if err != nil {
		t.Fatal(err)
	}
	return configdoc.Build(builtin.Registry(), docs)
}

// Issue 12, "a config JSON Schema from one source of truth": the schema
// labelpipe config schema prints and the README's configuration reference
// are what the config structs and their docs give now.
func TestConfigReference(t *testing.T) {
	ref := reference(t)
	schema, err := ref.Schema()
	if err != nil {
		t.Fatal(err)
	}
	checkGenerated(t, "../../configs/labelpipe.schema.json", schema)
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	checkGenerated(t, "../../README.md", []byte(replaceBlock(t, string(readme), "config reference", ref.Markdown())))

	// The command prints the embedded copy, which is the committed file.
	cliCase{args: []string{"config", "schema"}, wantStdout: []string{`"title": "labelpipe config"`}, emptyStderr: true}.check(t)
	if !*update && !bytes.Equal(configs.ConfigSchema, schema) {
		t.Error("labelpipe config schema prints a stale schema")
	}
	// Every key of every type is in it: spot-check a type's own keys.
	for _, w := range []string{`"max_violations"`, `"idempotency_header"`, `"already_done"`, `"on_store_error"`, `"custom_events"`, `"sample_ratio"`} {
		if !strings.Contains(string(schema), w) {
			t.Errorf("schema lacks %s", w)
		}
	}
}

// compileSchema compiles the generated config schema.
func compileSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(configs.ConfigSchema))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("labelpipe.schema.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("labelpipe.schema.json")
	if err != nil {
		t.Fatalf("the config schema does not compile: %v", err)
	}
	return sch
}

// yamlDoc decodes YAML into what a JSON Schema validator checks.
func yamlDoc(t *testing.T, text string) any {
	t.Helper()
	j, err := yaml.YAMLToJSON([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(j, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// The schema accepts the shipped configs (as editors will see them) and
// refuses a misspelled key, a key of another type, a bad duration and an
// unknown type.
func TestConfigSchemaChecksConfigs(t *testing.T) {
	sch := compileSchema(t)
	for _, path := range []string{"../../configs/labelpipe.yaml", "../../configs/vendors.yaml"} {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(data), "# yaml-language-server: $schema=labelpipe.schema.json\n") {
			t.Errorf("%s does not point editors at the schema on its first line", path)
		}
		if err := sch.Validate(yamlDoc(t, string(data))); err != nil {
			t.Errorf("%s breaks the schema: %v", path, err)
		}
	}
	base := "sinks: [{name: a, type: file, path: a.jsonl}]\n"
	for name, text := range map[string]string{
		"misspelled key":       "server: {max_body_byte: 1}\n" + base,
		"another type's key":   "stages: [{type: filter, schema: issue-exported}]\n" + base,
		"bad duration":         "sinks: [{name: a, type: file, path: a.jsonl, timeout: soon}]\n",
		"unknown sink type":    "sinks: [{name: a, type: kafka}]\n",
		"unknown top-level":    "logging: {}\n" + base,
		"sink key misspelled":  "sinks: [{name: a, type: http, url: 'http://x', idempotency_heder: X}]\n",
		"custom_events wrong":  "custom_events: model-trained\n" + base,
		"no sinks":             "server: {addr: ''}\n",
		"retry key misspelled": "sinks: [{name: a, type: file, path: a.jsonl, retry: {max_attempt: 1}}]\n",
	} {
		if err := sch.Validate(yamlDoc(t, text)); err == nil {
			t.Errorf("%s: the schema accepts %q", name, text)
		}
	}
	if err := sch.Validate(yamlDoc(t, "custom_events: [model-trained]\nstages: [{type: schema, name: s, schema: issue-exported, max_violations: 5}]\n"+base)); err != nil {
		t.Errorf("a good config breaks the schema: %v", err)
	}
}
