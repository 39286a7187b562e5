package configdoc

import (
	"encoding/json"
	"fmt"
	"strings"
)

// directProps is the properties of a mapping made of fields: only the
// direct keys (a key with a dot is below one of them).
func directProps(fields []Field) map[string]any {
	props := map[string]any{}
	for _, f := range fields {
		if !strings.Contains(f.Key, ".") {
			props[f.Key] = f.schema
		}
	}
	return props
}

// entrySchema is the schema of one stages[] or sinks[] entry of a type:
// its own keys plus common, with kind ("type") fixed to the type's name.
func entrySchema(typeName string, own []Field, common map[string]any, doc string) map[string]any {
	props := directProps(own)
	for k, v := range common {
		props[k] = v
	}
	props["type"] = map[string]any{"const": typeName}
	return map[string]any{
		"if":   map[string]any{"properties": map[string]any{"type": map[string]any{"const": typeName}}, "required": []string{"type"}},
		"then": map[string]any{"description": doc, "properties": props, "additionalProperties": false},
	}
}

// Schema is the config's JSON Schema (draft 2020-12), for editors through
// yaml-language-server and for any validator. It knows each stage and sink
// type's own keys.
func (r Reference) Schema() ([]byte, error) {
	top := map[string]any{}
	for _, s := range r.Top {
		if len(s.Fields) == 1 && s.Fields[0].Key == s.Name {
			top[s.Name] = s.Fields[0].schema
			continue
		}
		o := map[string]any{"type": "object", "properties": directProps(s.Fields), "additionalProperties": false}
		if s.Doc != "" {
			o["description"] = s.Doc
		}
		top[s.Name] = o
	}
	var stageTypes, sinkTypes []string
	var stageIfs, sinkIfs []any
	stageCommon := map[string]any{"name": map[string]any{"type": "string", "description": "Name tells stages apart in logs and traces; default the type."}}
	for _, s := range r.Stages {
		name := strings.TrimPrefix(s.Name, "stage ")
		stageTypes = append(stageTypes, name)
		stageIfs = append(stageIfs, entrySchema(name, s.Fields, stageCommon, s.Doc))
	}
	sinkCommon := directProps(r.Sink.Fields)
	for _, s := range r.Sinks {
		name := strings.TrimPrefix(s.Name, "sink ")
		sinkTypes = append(sinkTypes, name)
		sinkIfs = append(sinkIfs, entrySchema(name, s.Fields, sinkCommon, s.Doc))
	}
	top["stages"] = map[string]any{
		"description": "Stages run in order, synchronously with the webhook request: {type, name, ...options}.",
		"type":        "array",
		"items": map[string]any{"type": "object", "required": []string{"type"},
			"properties": map[string]any{"type": map[string]any{"enum": stageTypes}}, "allOf": stageIfs},
	}
	top["sinks"] = map[string]any{
		"description": "Sinks each receive every export they subscribe to: {name, type, ...options}.",
		"type":        "array",
		"minItems":    1,
		"items": map[string]any{"type": "object", "required": []string{"name", "type"},
			"properties": map[string]any{"type": map[string]any{"enum": sinkTypes}}, "allOf": sinkIfs},
	}
	doc := map[string]any{
		"$schema":              "https://json-schema.org/draft/2020-12/schema",
		"$id":                  "https://github.com/labelpipe/labelpipe/configs/labelpipe.schema.json",
		"title":                "labelpipe config",
		"description":          "A labelpipe pipeline. Generated from the config structs by `go test ./cmd/labelpipe -run TestConfigReference -update`; print it with `labelpipe config schema`.",
		"type":                 "object",
		"properties":           top,
		"additionalProperties": false,
		"required":             []string{"sinks"},
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	return append(b, '\n'), err
}

// Markdown is the reference as tables: one per top-level section, the
// keys every sink has, and each stage and sink type's options.
func (r Reference) Markdown() string {
	var b strings.Builder
	table := func(title, doc string, fields []Field) {
		fmt.Fprintf(&b, "#### %s\n\n", title)
		if doc != "" {
			fmt.Fprintf(&b, "%s\n\n", doc)
		}
		if len(fields) == 0 {
			b.WriteString("No options.\n\n")
			return
		}
		b.WriteString("| key | type | default | meaning |\n|---|---|---|---|\n")
		for _, f := range fields {
			if f.Type == "mapping" && f.Doc == "" {
				continue
			}
			def := ""
			if f.Default != "" {
				def = "`" + f.Default + "`"
			}
			fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", f.Key, f.Type, def, cell(f.Doc))
		}
		b.WriteString("\n")
	}
	for _, s := range r.Top {
		table("`"+s.Name+"`", s.Doc, s.Fields)
	}
	table("every sink (`sinks[]`)", r.Sink.Doc, r.Sink.Fields)
	for _, s := range r.Stages {
		table("stage `"+strings.TrimPrefix(s.Name, "stage ")+"`", s.Doc, s.Fields)
	}
	for _, s := range r.Sinks {
		table("sink `"+strings.TrimPrefix(s.Name, "sink ")+"`", s.Doc, s.Fields)
	}
	return b.String()
}

// cell makes text safe in a table cell.
func cell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
