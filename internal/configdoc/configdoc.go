// Package configdoc derives the config's JSON Schema and its reference
// tables from one source: the config structs (their yaml keys, Go types and
// defaults, by reflection, including each registered stage and sink type's
// own config) and the doc comments on their fields (read from the source).
// The generated files, configs/labelpipe.schema.json and the README's
// reference, are checked against it by a test that rewrites them with
// -update, so they cannot drift.
package configdoc

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"time"

	"github.com/labelpipe/labelpipe/pipeline"
)

// Field is one key of a section of the config.
type Field struct {
	Key     string // dotted below its section, e.g. "retry.max_attempts"
	Type    string // as the reference shows it: string, integer, duration, list of string, …
	Default string // "" when there is none worth showing
	Doc     string
	schema  map[string]any
}

// Docs holds the doc comments of the config structs' fields, keyed
// "pkgpath.Type.Field".
type Docs map[string]string

// ReadDocs parses the packages that hold config structs, under the module
// root, and returns their fields' doc comments.
func ReadDocs() (Docs, error) {
	_, self, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(self), "..", "..")
	docs := Docs{}
	for _, dir := range []string{"pipeline", "pipeline/resilience", "stages", "sinks"} {
		fset := token.NewFileSet()
		pkgs, err := parser.ParseDir(fset, filepath.Join(root, dir), func(fi fs.FileInfo) bool {
			return !strings.HasSuffix(fi.Name(), "_test.go")
		}, parser.ParseComments)
		if err != nil {
			return nil, err
		}
		for _, pkg := range pkgs {
			for _, f := range pkg.Files {
				collect(docs, "github.com/labelpipe/labelpipe/"+dir, f)
			}
		}
	}
	return docs, nil
}

func collect(docs Docs, pkgPath string, f *ast.File) {
	ast.Inspect(f, func(n ast.Node) bool {
		ts, ok := n.(*ast.TypeSpec)
		if !ok {
			return true
		}
		st, ok := ts.Type.(*ast.StructType)
		if !ok {
			return true
		}
		prev := ""
		for _, fl := range st.Fields.List {
			doc := ""
			if fl.Doc != nil {
				doc = clean(fl.Doc.Text())
			}
			for _, name := range fl.Names {
				d := doc
				// "CertFile and KeyFile are PEM files": the second field
				// shares the first one's comment.
				if d == "" && strings.Contains(prev, name.Name) {
					d = prev
				}
				docs[pkgPath+"."+ts.Name.Name+"."+name.Name] = d
			}
			if doc != "" {
				prev = doc
			}
		}
		return true
	})
}

// clean joins a comment's lines into one paragraph.
func clean(s string) string { return strings.Join(strings.Fields(s), " ") }

var durationType = reflect.TypeOf(time.Duration(0))

// fields lists the yaml keys of struct type t (a value v with defaults),
// below prefix, depth first.
func (d Docs) fields(t reflect.Type, v reflect.Value, prefix string) []Field {
	var out []Field
	for i := range t.NumField() {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		tag := sf.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		fv := v.Field(i)
		if opts == "inline" {
			out = append(out, d.fields(sf.Type, fv, prefix)...)
			continue
		}
		if name == "" {
			continue
		}
		key := prefix + name
		doc := d[t.PkgPath()+"."+t.Name()+"."+sf.Name]
		ft := sf.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
			if !fv.IsNil() {
				fv = fv.Elem()
			} else {
				fv = reflect.Zero(ft)
			}
		}
		if ft.Kind() == reflect.Struct && ft != durationType {
			sub := d.fields(ft, fv, key+".")
			out = append(out, Field{Key: key, Type: "mapping", Doc: doc, schema: object(sub, doc)})
			out = append(out, sub...)
			continue
		}
		f := Field{Key: key, Type: typeName(ft), Default: defaultOf(fv), Doc: doc}
		f.schema = schemaOf(ft, fv, doc)
		out = append(out, f)
	}
	return out
}

func typeName(t reflect.Type) string {
	switch {
	case t == durationType:
		return "duration"
	case t.Kind() == reflect.Slice:
		return "list of " + typeName(t.Elem())
	case t.Kind() == reflect.Map:
		return "mapping of " + typeName(t.Elem())
	case t.Kind() == reflect.Bool:
		return "boolean"
	case t.Kind() == reflect.String:
		return "string"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		return "integer"
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		return "number"
	case t.Kind() == reflect.Interface:
		return "any"
	}
	return t.String()
}

// defaultOf is v as YAML would show it, or "" for a zero value.
func defaultOf(v reflect.Value) string {
	if !v.IsValid() || v.IsZero() {
		return ""
	}
	if v.Type() == durationType {
		return v.Interface().(time.Duration).String()
	}
	switch v.Kind() {
	case reflect.Slice:
		parts := make([]string, v.Len())
		for i := range parts {
			parts[i] = fmt.Sprint(v.Index(i).Interface())
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case reflect.Map:
		return ""
	}
	return fmt.Sprint(v.Interface())
}

// durationPattern is what time.ParseDuration accepts.
const durationPattern = `^[-+]?(0|([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h))+$`

func schemaOf(t reflect.Type, v reflect.Value, doc string) map[string]any {
	s := map[string]any{}
	if doc != "" {
		s["description"] = doc
	}
	switch {
	case t == durationType:
		s["type"] = "string"
		s["pattern"] = durationPattern
	case t.Kind() == reflect.Slice:
		s["type"] = "array"
		s["items"] = schemaOf(t.Elem(), reflect.Zero(t.Elem()), "")
	case t.Kind() == reflect.Map:
		s["type"] = "object"
		s["additionalProperties"] = schemaOf(t.Elem(), reflect.Zero(t.Elem()), "")
	case t.Kind() == reflect.Bool:
		s["type"] = "boolean"
	case t.Kind() == reflect.String:
		s["type"] = "string"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Int64:
		s["type"] = "integer"
	case t.Kind() >= reflect.Uint && t.Kind() <= reflect.Uint64:
		s["type"] = "integer"
		s["minimum"] = 0
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		s["type"] = "number"
	}
	if v.IsValid() && !v.IsZero() && t.Kind() != reflect.Map {
		if t == durationType {
			s["default"] = v.Interface().(time.Duration).String()
		} else {
			s["default"] = v.Interface()
		}
	}
	return s
}

// object is the schema of a mapping whose direct keys are among fields.
func object(fields []Field, doc string) map[string]any {
	// Only direct children: a child's key has no dot after the common
	// prefix.
	direct := map[string]any{}
	prefix := commonPrefix(fields)
	for _, f := range fields {
		rest := strings.TrimPrefix(f.Key, prefix)
		if !strings.Contains(rest, ".") {
			direct[rest] = f.schema
		}
	}
	s := map[string]any{"type": "object", "properties": direct, "additionalProperties": false}
	if doc != "" {
		s["description"] = doc
	}
	return s
}

// commonPrefix is the parent key ("retry.") of a section's fields.
func commonPrefix(fields []Field) string {
	if len(fields) == 0 {
		return ""
	}
	k := fields[0].Key
	if i := strings.LastIndex(k, "."); i >= 0 {
		return k[:i+1]
	}
	return ""
}

// Section is one part of the config with its keys: a top-level section,
// the keys every sink has, or one stage or sink type's options.
type Section struct {
	Name   string // "server", "sinks[]", "stage secret", "sink http"
	Doc    string
	Fields []Field
}

// Reference is every section of the config, derived from reg's types.
type Reference struct {
	Top    []Section // server, admin, …, custom_events
	Sink   Section   // the keys every sink has
	Stages []Section // each stage type's options
	Sinks  []Section // each sink type's options
}

// Build derives the reference from the config structs, the registry's
// stage and sink types and docs.
func Build(reg *pipeline.Registry, docs Docs) Reference {
	var ref Reference
	def := pipeline.DefaultConfig()
	ct := reflect.TypeOf(def)
	cv := reflect.ValueOf(def)
	for i := range ct.NumField() {
		sf := ct.Field(i)
		name, _, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
		if !sf.IsExported() || name == "-" || name == "" {
			continue
		}
		doc := docs[ct.PkgPath()+".Config."+sf.Name]
		if sf.Type.Kind() == reflect.Struct {
			ref.Top = append(ref.Top, Section{Name: name, Doc: doc, Fields: docs.fields(sf.Type, cv.Field(i), "")})
			continue
		}
		ref.Top = append(ref.Top, Section{Name: name, Doc: doc, Fields: []Field{{Key: name, Type: typeName(sf.Type), Doc: doc,
			schema: schemaOf(sf.Type, cv.Field(i), doc)}}})
	}
	sink := pipeline.DefaultSinkConfig()
	ref.Sink = Section{Name: "sinks[]", Doc: docs[ct.PkgPath()+".Config.Sinks"],
		Fields: docs.fields(reflect.TypeOf(sink), reflect.ValueOf(sink), "")}
	for _, name := range reg.StageTypes() {
		t, _ := reg.Stage(name)
		ref.Stages = append(ref.Stages, typeSection(docs, "stage "+name, t.Doc, t.Config()))
	}
	for _, name := range reg.SinkTypes() {
		t, _ := reg.Sink(name)
		ref.Sinks = append(ref.Sinks, typeSection(docs, "sink "+name, t.Doc, t.Config()))
	}
	return ref
}

func typeSection(docs Docs, name, doc string, cfg any) Section {
	v := reflect.ValueOf(cfg).Elem()
	return Section{Name: name, Doc: doc, Fields: docs.fields(v.Type(), v, "")}
}
