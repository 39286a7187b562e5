package stages

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
	"golang.org/x/text/language"
	"golang.org/x/text/message"

	"github.com/labelpipe/labelpipe/configs"
	"github.com/labelpipe/labelpipe/pipeline"
)

// The schema stage checks payloads against a JSON Schema and answers 422
// listing the violations (JSON pointer and message) when one does not
// match: at most max_violations of them, with the total, so a body of a
// million bad elements costs about what one with a few does.
//
// Only events listed in `events` are checked; others pass untouched, so
// Aquarium's "send test payload" and events no sink wants are not
// rejected. The schema is a built-in name (issue-exported, shipped in the
// binary) or a path to a schema file, relative to the config file.
//
//	- type: schema
//	  schema: issue-exported
//	  max_violations: 100

// SchemaConfig configures the schema stage.
type SchemaConfig struct {
	// Schema is a built-in schema name (issue-exported) or a path to a
	// JSON Schema file, relative to the config file's directory. Default
	// issue-exported. A reload rebuilds the stage when the file's content
	// changed.
	Schema string `yaml:"schema"`
	// Events lists the payload `event` values that are validated; other
	// events pass untouched. Default [issue-exported].
	Events []string `yaml:"events"`
	// MaxViolations is the most violations a 422 lists; the answer says
	// how many more were found. The check stops soon after it has found
	// more, since the time and memory it takes grow with each one.
	// Default 100.
	MaxViolations int `yaml:"max_violations"`
}

// SchemaDefaults returns the schema stage's default config.
func SchemaDefaults() *SchemaConfig {
	return &SchemaConfig{Schema: "issue-exported", Events: []string{"issue-exported"}, MaxViolations: 100}
}

// Validate checks the config without I/O; build reads the schema.
func (c *SchemaConfig) Validate() error {
	var errs []error
	switch {
	case c.Schema == "":
		errs = append(errs, pipeline.FieldErr("schema", "is required (a built-in name such as issue-exported, or a path to a JSON Schema file)"))
	case isBuiltinName(c.Schema) && !slices.Contains(BuiltinSchemas(), c.Schema):
		// The built-ins are inside the binary: checking a name is no I/O.
		errs = append(errs, pipeline.FieldErr("schema", "%s", unknownBuiltin(c.Schema)))
	}
	if len(c.Events) == 0 {
		errs = append(errs, pipeline.FieldErr("events", "must list at least one event"))
	}
	for i, ev := range c.Events {
		if ev == "" {
			errs = append(errs, pipeline.FieldErr(fmt.Sprintf("events[%d]", i), "is empty"))
		}
	}
	if c.MaxViolations < 1 {
		errs = append(errs, pipeline.FieldErr("max_violations", "must be ≥ 1"))
	}
	return errors.Join(errs...)
}

// EventNames names the events option, so that the loader checks each one
// is an event Aquarium sends or a declared custom event.
func (c *SchemaConfig) EventNames() (string, []string) { return "events", c.Events }

// unknownBuiltin says that name is no built-in schema.
func unknownBuiltin(name string) string {
	return fmt.Sprintf("unknown built-in schema %q (known: %s; or give a path to a .json file)", name, strings.Join(BuiltinSchemas(), ", "))
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
	sch, doc, err := compileSchema(c.Schema, env)
	if err != nil {
		// Named by its field, so that the error points at schema:.
		return nil, pipeline.FieldErr("schema", "%s", err.Error())
	}
	label := c.Schema
	if !isBuiltinName(label) {
		label = path.Base(filepath.ToSlash(label))
	}
	root := &part{whole: sch}
	if !hasDynamicAnchor(doc) {
		yes, err := trueSchema()
		if err != nil {
			return nil, err
		}
		root = newPart(sch, yes, map[*jsonschema.Schema]*part{})
	}
	return &Schema{root: root, events: c.Events, label: label, max: c.MaxViolations}, nil
}

// compileSchema compiles a built-in or a file schema, and returns its
// document too.
func compileSchema(name string, env pipeline.Env) (*jsonschema.Schema, any, error) {
	var data []byte
	var url, what string
	if isBuiltinName(name) {
		b, err := configs.Schemas.ReadFile("schemas/" + name + ".json")
		if err != nil {
			return nil, nil, errors.New(unknownBuiltin(name))
		}
		data, url, what = b, "mem:///labelpipe/schemas/"+name+".json", "built-in schema "+name
	} else {
		p := env.Path(name)
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, nil, fmt.Errorf("schema file %s: %w", p, err)
		}
		b, err := env.ReadFile(abs)
		if err != nil {
			return nil, nil, fmt.Errorf("read schema file: %w", err)
		}
		data, url, what = b, "file://"+filepath.ToSlash(abs), "schema file "+p
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return nil, nil, fmt.Errorf("%s is not valid JSON: %w", what, err)
	}
	comp := jsonschema.NewCompiler()
	comp.DefaultDraft(jsonschema.Draft2020)
	if err := comp.AddResource(url, doc); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	sch, err := comp.Compile(url)
	if err != nil {
		return nil, nil, fmt.Errorf("%s is not a valid JSON Schema: %w", what, err)
	}
	return sch, doc, nil
}

// trueSchema is the schema that accepts anything. It stands in for the
// children of a part's local schema.
func trueSchema() (*jsonschema.Schema, error) {
	const url = "mem:///labelpipe/schemas/true.json"
	comp := jsonschema.NewCompiler()
	if err := comp.AddResource(url, true); err != nil {
		return nil, fmt.Errorf("true schema: %w", err)
	}
	sch, err := comp.Compile(url)
	if err != nil {
		return nil, fmt.Errorf("true schema: %w", err)
	}
	return sch, nil
}

// part is a schema prepared to be checked one level at a time. The library
// builds a value's whole error tree before it returns: for a body of a
// million bad elements, gigabytes. So a large value is checked against
// local (the schema with its properties and items accepting anything),
// then each child against its own part, and the check can stop once it
// has found more than max_violations. A small value is checked whole, in
// one call, as before.
type part struct {
	whole *jsonschema.Schema
	// local is nil when the schema is always checked whole.
	local    *jsonschema.Schema
	obj, arr bool   // local may check an object, an array
	props    []prop // sorted by name, for a stable answer
	items    *part
	// itemsFrom is the first index items applies to (after prefixItems).
	itemsFrom int
}

type prop struct {
	name string
	part *part
}

// newPart prepares s, and the schemas of its properties and items.
func newPart(s, yes *jsonschema.Schema, seen map[*jsonschema.Schema]*part) *part {
	if p, ok := seen[s]; ok {
		return p
	}
	p := &part{whole: s}
	seen[s] = p
	// These keywords end the check before properties and items are looked
	// at, or (before 2019-09, $ref) hide them, or (unevaluated*) depend on
	// how the children fared: checked apart, a child could report what
	// the whole check does not.
	if s.Bool != nil || s.Const != nil || s.Enum != nil || s.Format != nil ||
		s.UnevaluatedProperties != nil || s.UnevaluatedItems != nil ||
		(s.DraftVersion < 2019 && s.Ref != nil) {
		return p
	}
	local := *s
	if len(s.Properties) > 0 {
		// true, not removed: additionalProperties must still see them.
		local.Properties = make(map[string]*jsonschema.Schema, len(s.Properties))
		for k, c := range s.Properties {
			local.Properties[k] = yes
			p.props = append(p.props, prop{k, newPart(c, yes, seen)})
		}
		slices.SortFunc(p.props, func(a, b prop) int { return cmp.Compare(a.name, b.name) })
	}
	// Removed, not true, so local does not walk a million items to accept
	// each: without unevaluatedItems nothing else depends on them.
	switch it, ok := s.Items.(*jsonschema.Schema); {
	case s.DraftVersion >= 2020 && s.Items2020 != nil:
		local.Items2020 = nil
		p.items, p.itemsFrom = newPart(s.Items2020, yes, seen), len(s.PrefixItems)
	case s.DraftVersion < 2020 && ok:
		// additionalItems is ignored next to a single items schema.
		local.Items, local.AdditionalItems = nil, nil
		p.items = newPart(it, yes, seen)
	}
	if p.props == nil && p.items == nil {
		return p
	}
	p.local = &local
	types := []string{"object", "array"}
	if s.Types != nil && !s.Types.IsEmpty() {
		types = s.Types.ToStrings()
	}
	p.obj = p.props != nil && slices.Contains(types, "object")
	p.arr = p.items != nil && slices.Contains(types, "array")
	return p
}

// hasDynamicAnchor says whether a schema document declares a dynamic or
// recursive anchor. Checked from a child down, a $dynamicRef could then
// resolve elsewhere than from the root, so such a schema is checked whole.
func hasDynamicAnchor(doc any) bool {
	switch v := doc.(type) {
	case map[string]any:
		for k, c := range v {
			if k == "$dynamicAnchor" || k == "$recursiveAnchor" || hasDynamicAnchor(c) {
				return true
			}
		}
	case []any:
		return slices.ContainsFunc(v, hasDynamicAnchor)
	}
	return false
}

// Schema is the schema stage.
type Schema struct {
	root   *part
	events []string
	label  string
	max    int
}

// Process validates listed events and answers 422 listing at most max
// violations, and how many there were when that is more.
func (s *Schema) Process(_ context.Context, e *pipeline.Export) error {
	if !slices.Contains(s.events, e.Event()) {
		return nil
	}
	f := findings{max: s.max}
	if err := f.check(s.root, e.Payload, nil); err != nil {
		return pipeline.Reject(422, "payload cannot be checked against the %s schema: %v", s.label, err)
	}
	if len(f.found) == 0 {
		return nil
	}
	vs := sortViolations(f.found)
	msg := fmt.Sprintf("payload does not match the %s schema", s.label)
	if !f.stopped && len(vs) <= s.max {
		return pipeline.Invalid(msg, vs)
	}
	total, shown, atLeast := len(vs), min(len(vs), s.max), ""
	if f.stopped {
		atLeast = "at least "
	}
	err := pipeline.Invalid(fmt.Sprintf("%s: %s%d violations, first %d shown (schema.max_violations)", msg, atLeast, total, shown), vs[:shown])
	se, _ := pipeline.AsStageError(err)
	se.ViolationsTotal, se.ViolationsTruncated = total, true
	return err
}

// smallValues is the size below which a value is checked whole: its
// error tree is small, and one call is faster.
const smallValues = 128

// small says whether v holds fewer than *left values that p could check
// apart. Values only a whole check reaches are not counted: splitting
// does not bound them. It looks up properties rather than walk objects,
// which costs less than the check itself.
func (p *part) small(v any, left *int) bool {
	if *left--; *left <= 0 {
		return false
	}
	switch v := v.(type) {
	case map[string]any:
		if !p.obj {
			return true
		}
		for _, c := range p.props {
			if cv, ok := v[c.name]; ok && !c.part.small(cv, left) {
				return false
			}
		}
	case []any:
		if !p.arr {
			return true
		}
		for _, item := range v[min(p.itemsFrom, len(v)):] {
			if !p.items.small(item, left) {
				return false
			}
		}
	}
	return true
}

// findings collects violations until there are more than max.
type findings struct {
	max     int
	found   []pipeline.Violation
	stopped bool // values were left unchecked
}

func (f *findings) full() bool { return len(f.found) > f.max }

// check checks v, found at loc, against p.
func (f *findings) check(p *part, v any, loc []string) error {
	local := p.local
	switch v.(type) {
	case map[string]any:
		if !p.obj {
			local = nil
		}
	case []any:
		if !p.arr {
			local = nil
		}
	default:
		local = nil
	}
	if left := smallValues; local == nil || p.small(v, &left) {
		return f.validate(p.whole, v, loc)
	}
	if err := f.validate(local, v, loc); err != nil {
		return err
	}
	switch v := v.(type) {
	case map[string]any:
		for _, c := range p.props {
			cv, ok := v[c.name]
			if !ok {
				continue
			}
			if f.full() {
				f.stopped = true
				return nil
			}
			if err := f.check(c.part, cv, append(loc, c.name)); err != nil {
				return err
			}
		}
	case []any:
		for i := min(p.itemsFrom, len(v)); i < len(v); i++ {
			if f.full() {
				f.stopped = true
				return nil
			}
			if err := f.check(p.items, v[i], append(loc, strconv.Itoa(i))); err != nil {
				return err
			}
		}
	}
	return nil
}

// validate checks v against sch with the library and adds what it finds.
func (f *findings) validate(sch *jsonschema.Schema, v any, loc []string) error {
	err := sch.Validate(v)
	if err == nil {
		return nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return err
	}
	f.found = appendViolations(f.found, ve, loc)
	return nil
}

var printer = message.NewPrinter(language.English)

// appendViolations flattens a validation error tree of the value at loc
// into its leaves. A missing required property is reported at the
// property's own pointer, which says more than its parent's.
func appendViolations(out []pipeline.Violation, ve *jsonschema.ValidationError, loc []string) []pipeline.Violation {
	at := func(tokens ...string) string {
		return jsonPointer(append(slices.Clip(loc), tokens...))
	}
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
					Pointer: at(append(slices.Clone(ve.InstanceLocation), m)...),
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
		out = append(out, pipeline.Violation{Pointer: at(ve.InstanceLocation...), Message: clip(msg)})
	}
	walk(ve)
	return out
}

// maxMessage bounds a violation's message: one quoting a megabyte string,
// or naming every key of a huge object, would make the answer that large.
const maxMessage = 1024

// clip cuts msg to maxMessage bytes, on a rune boundary, and says so.
func clip(msg string) string {
	if len(msg) <= maxMessage {
		return msg
	}
	cut := maxMessage
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + "… (cut)"
}

// sortViolations sorts violations by pointer and drops repeats.
func sortViolations(out []pipeline.Violation) []pipeline.Violation {
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
