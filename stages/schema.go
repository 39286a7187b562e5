package stages

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
	"golang.org/x/text/language"
	"golang.org/x/text/message"

	"github.com/labelpipe/labelpipe/configs"
	"github.com/labelpipe/labelpipe/pipeline"
)

// The schema stage checks payloads against a JSON Schema and answers 422
// with every violation (JSON pointer and message) when one does not match.
//
// Only events listed in `events` are checked; others pass untouched, so
// Aquarium's "send test payload" and events no sink wants are not
// rejected. The schema is a built-in name (issue-exported, shipped in the
// binary) or a path to a schema file, relative to the config file.
//
//	- type: schema
//	  schema: issue-exported

// SchemaConfig configures the schema stage.
type SchemaConfig struct {
	// Schema is a built-in schema name (issue-exported) or a path to a
	// JSON Schema file, relative to the config file's directory. Default
	// issue-exported.
	Schema string `yaml:"schema"`
	// Events lists the payload `event` values that are validated; other
	// events pass untouched. Default [issue-exported].
	Events []string `yaml:"events"`
}

// SchemaDefaults returns the schema stage's default config.
func SchemaDefaults() *SchemaConfig {
	return &SchemaConfig{Schema: "issue-exported", Events: []string{"issue-exported"}}
}

// Validate checks the config without I/O; build reads the schema.
func (c *SchemaConfig) Validate() error {
	var errs []error
	if c.Schema == "" {
		errs = append(errs, pipeline.FieldErr("schema", "is required (a built-in name such as issue-exported, or a path to a JSON Schema file)"))
	}
	if len(c.Events) == 0 {
		errs = append(errs, pipeline.FieldErr("events", "must list at least one event"))
	}
	for i, ev := range c.Events {
		if ev == "" {
			errs = append(errs, pipeline.FieldErr(fmt.Sprintf("events[%d]", i), "is empty"))
		}
	}
	return errors.Join(errs...)
}

// BuiltinSchemas lists the names the schema stage knows without a file.
func BuiltinSchemas() []string {
	entries, _ := fs.ReadDir(configs.Schemas, "schemas")
	var names []string
	for _, e := range entries {
		if n, ok := strings.CutSuffix(e.Name(), ".json"); ok {
			names = append(names, n)
		}
	}
	return names
}

// isBuiltinName tells a built-in name from a file path.
func isBuiltinName(s string) bool {
	return !strings.ContainsAny(s, `/\`) && !strings.HasSuffix(s, ".json")
}

func buildSchema(c *SchemaConfig, env pipeline.Env) (pipeline.Stage, error) {
	sch, err := compileSchema(c.Schema, env.ConfigDir)
	if err != nil {
		return nil, err
	}
	label := c.Schema
	if !isBuiltinName(label) {
		label = path.Base(filepath.ToSlash(label))
	}
	return &Schema{schema: sch, events: c.Events, label: label}, nil
}

func compileSchema(name, dir string) (*jsonschema.Schema, error) {
	var data []byte
	var url, what string
	if isBuiltinName(name) {
		b, err := configs.Schemas.ReadFile("schemas/" + name + ".json")
		if err != nil {
			return nil, fmt.Errorf("unknown built-in schema %q (known: %s; or give a path to a .json file)", name, strings.Join(BuiltinSchemas(), ", "))
		}
		data, url, what = b, "mem:///labelpipe/schemas/"+name+".json", "built-in schema "+name
	} else {
		p := name
		if !filepath.IsAbs(p) && dir != "" {
			p = filepath.Join(dir, p)
		}
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, fmt.Errorf("schema file %s: %w", p, err)
		}
		b, err := os.ReadFile(abs)
		if err != nil {
			return nil, fmt.Errorf("read schema file: %w", err)
		}
		data, url, what = b, "file://"+filepath.ToSlash(abs), "schema file "+p
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%s is not valid JSON: %w", what, err)
	}
	comp := jsonschema.NewCompiler()
	comp.DefaultDraft(jsonschema.Draft2020)
	if err := comp.AddResource(url, doc); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	sch, err := comp.Compile(url)
	if err != nil {
		return nil, fmt.Errorf("%s is not a valid JSON Schema: %w", what, err)
	}
	return sch, nil
}

// Schema is the schema stage.
type Schema struct {
	schema *jsonschema.Schema
	events []string
	label  string
}

// Process validates listed events and answers 422 listing every violation.
func (s *Schema) Process(_ context.Context, e *pipeline.Export) error {
	if !slices.Contains(s.events, e.Event()) {
		return nil
	}
	err := s.schema.Validate(e.Payload)
	if err == nil {
		return nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return pipeline.Reject(422, "payload cannot be checked against the %s schema: %v", s.label, err)
	}
	return pipeline.Invalid(fmt.Sprintf("payload does not match the %s schema", s.label), violations(ve))
}

var printer = message.NewPrinter(language.English)

// violations flattens a validation error tree into its leaves, sorted by
// pointer. A missing required property is reported at the property's own
// pointer, which says more than its parent's.
func violations(ve *jsonschema.ValidationError) []pipeline.Violation {
	var out []pipeline.Violation
	var walk func(*jsonschema.ValidationError)
	walk = func(ve *jsonschema.ValidationError) {
		if len(ve.Causes) > 0 {
			for _, c := range ve.Causes {
				walk(c)
			}
			return
		}
		if req, ok := ve.ErrorKind.(*kind.Required); ok {
			for _, m := range req.Missing {
				out = append(out, pipeline.Violation{
					Pointer: jsonPointer(append(slices.Clone(ve.InstanceLocation), m)),
					Message: "required property is missing",
				})
			}
			return
		}
		msg := ve.ErrorKind.LocalizedString(printer)
		if p, ok := ve.ErrorKind.(*kind.Pattern); ok {
			// The library's message escapes the pattern's backslashes.
			msg = fmt.Sprintf("%q does not match the pattern %s", p.Got, p.Want)
		}
		out = append(out, pipeline.Violation{Pointer: jsonPointer(ve.InstanceLocation), Message: msg})
	}
	walk(ve)
	slices.SortStableFunc(out, func(a, b pipeline.Violation) int {
		return cmp.Or(cmp.Compare(a.Pointer, b.Pointer), cmp.Compare(a.Message, b.Message))
	})
	return slices.Compact(out)
}

var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")

// jsonPointer builds an RFC 6901 pointer from reference tokens.
func jsonPointer(tokens []string) string {
	var b strings.Builder
	for _, t := range tokens {
		b.WriteByte('/')
		b.WriteString(pointerEscaper.Replace(t))
	}
	return b.String()
}

var _ pipeline.Stage = (*Schema)(nil)
