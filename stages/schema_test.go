package stages_test

import (
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/labelpipe/labelpipe/configs"
	"github.com/labelpipe/labelpipe/pipeline"
)

// TestSamplePayloadsMatchSchema keeps configs/payloads and the schema in
// step: every sample but invalid-* passes the default schema stage.
func TestSamplePayloadsMatchSchema(t *testing.T) {
	names, err := fs.Glob(configs.Payloads, "payloads/*.json")
	if err != nil || len(names) < 6 {
		t.Fatalf("sample payloads = %v, %v; want at least 6", names, err)
	}
	s := mustBuild(t, "schema", "", pipeline.Env{})
	for _, name := range names {
		base := filepath.Base(name)
		t.Run(base, func(t *testing.T) {
			e := newExport(t, samplePayload(t, base), nil)
			err := s.Process(t.Context(), e)
			if strings.HasPrefix(base, "invalid-") {
				if err == nil {
					t.Fatal("invalid sample passed the schema")
				}
				return
			}
			passed(t, e, err)
		})
	}
}

func TestSchemaViolations(t *testing.T) {
	frames := samplePayload(t, "issue-frames.json")
	tests := []struct {
		name string
		body []byte
		want []pipeline.Violation
	}{
		{
			name: "missing issue",
			body: samplePayload(t, "invalid-missing-issue.json"),
			want: []pipeline.Violation{{Pointer: "/issue", Message: "required property is missing"}},
		},
		{
			name: "no elements",
			body: mutate(t, frames, `.issue.elements = []`),
			want: []pipeline.Violation{{Pointer: "/issue/elements", Message: "minItems: got 0, want 1"}},
		},
		{
			name: "unknown element type",
			body: mutate(t, frames, `.issue.elements[1].element_type = "polygon"`),
			want: []pipeline.Violation{{Pointer: "/issue/elements/1/element_type", Message: "value must be one of 'frame', 'crop'"}},
		},
		{
			name: "sensor_data as an object (the seed's REST sample)",
			body: mutate(t, frames, `.issue.elements[0].frame_data.sensor_data |= .[0]`),
			want: []pipeline.Violation{{Pointer: "/issue/elements/0/frame_data/sensor_data", Message: "got object, want null or array"}},
		},
		{
			name: "image url not a url",
			body: mutate(t, frames, `.issue.elements[2].frame_data.sensor_data[0].data_urls.image_url = "frame 17.jpg"`),
			want: []pipeline.Violation{{
				Pointer: "/issue/elements/2/frame_data/sensor_data/0/data_urls/image_url",
				Message: `"frame 17.jpg" does not match the pattern ^[A-Za-z][A-Za-z0-9+.-]*://[^\s]+$`,
			}},
		},
		{
			name: "every violation, sorted by pointer",
			body: mutate(t, frames, `del(.project) | .issue.elements[2] |= del(.frame_id, .dataset)
				| .issue.elements[0].frame_data.label_data[1].uuid = 3
				| .issue.id = 42`),
			want: []pipeline.Violation{
				{Pointer: "/issue/elements/0/frame_data/label_data/1/uuid", Message: "got number, want string"},
				{Pointer: "/issue/elements/2/dataset", Message: "required property is missing"},
				{Pointer: "/issue/elements/2/frame_id", Message: "required property is missing"},
				{Pointer: "/issue/id", Message: "got number, want string"},
				{Pointer: "/project", Message: "required property is missing"},
			},
		},
	}
	s := mustBuild(t, "schema", "", pipeline.Env{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Process(t.Context(), newExport(t, tt.body, nil))
			se := stageErr(t, err)
			if se.Verdict != pipeline.VerdictReject || se.Status != http.StatusUnprocessableEntity {
				t.Fatalf("verdict %v status %d, want reject 422", se.Verdict, se.Status)
			}
			if se.Msg != "payload does not match the issue-exported schema" {
				t.Fatalf("message = %q", se.Msg)
			}
			if len(se.Violations) != len(tt.want) {
				t.Fatalf("violations = %+v, want %+v", se.Violations, tt.want)
			}
			for i := range tt.want {
				if se.Violations[i] != tt.want[i] {
					t.Errorf("violation %d = %+v, want %+v", i, se.Violations[i], tt.want[i])
				}
			}
		})
	}
}

func TestSchemaAcceptsQuirks(t *testing.T) {
	frames := samplePayload(t, "issue-frames.json")
	tests := []struct{ name, expr string }{
		{"correct spelling of the label coordinate frame", `.issue.elements[0].frame_data.label_data[0] |= (.label_coordinate_frame = .label_coorindate_frame | del(.label_coorindate_frame))`},
		{"user metadata keys in frame_data", `.issue.elements[0].frame_data += {"customer_tag": "night-shift", "speed_kph": 42.5}`},
		{"optional fields null", `.issue.elements[0] |= (.inference_set = null | .frame_data.task_id = null | .frame_data.custom_metrics = null)`},
		{"optional fields absent", `.issue.elements[0].frame_data = {}`},
		{"extra envelope keys", `. + {"sent_at": "2024-06-02T21:14:05Z"}`},
		{"gs:// image urls", `.issue.elements[0].frame_data.sensor_data[0].data_urls.image_url = "gs://bucket/a.jpg"`},
	}
	s := mustBuild(t, "schema", "", pipeline.Env{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newExport(t, mutate(t, frames, tt.expr), nil)
			err := s.Process(t.Context(), e)
			passed(t, e, err)
		})
	}
}

func TestSchemaChecksOnlyListedEvents(t *testing.T) {
	tests := []struct {
		name    string
		opts    string
		body    string
		wantErr bool
	}{
		{"test payload passes untouched", "", string(samplePayload(t, "test-payload.json")), false},
		{"no event passes untouched", "", `{"hello": "world"}`, false},
		{"not an object passes untouched", "", `[1, 2]`, false},
		{"listed other event is checked", "events: [issue-exported, dataset-complete]", string(samplePayload(t, "test-payload.json")), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustBuild(t, "schema", tt.opts, pipeline.Env{})
			e := newExport(t, []byte(tt.body), nil)
			before := string(mustJSON(t, e.Payload))
			err := s.Process(t.Context(), e)
			if tt.wantErr {
				se := stageErr(t, err)
				if len(se.Violations) == 0 || se.Violations[0].Pointer != "/event" {
					t.Fatalf("violations = %+v, want one at /event", se.Violations)
				}
				return
			}
			passed(t, e, err)
			if after := string(mustJSON(t, e.Payload)); after != before {
				t.Fatalf("payload changed: %s -> %s", before, after)
			}
		})
	}
}

func TestSchemaFromFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("schemas/mine.json", `{"$schema": "https://json-schema.org/draft/2020-12/schema",
		"type": "object", "required": ["event", "tag"], "properties": {"tag": {"$ref": "defs.json#/$defs/tag"}},
		"additionalProperties": {"type": "string"}}`)
	write("schemas/defs.json", `{"$defs": {"tag": {"type": "string", "maxLength": 3}}}`)
	write("broken.json", `{"type": `)
	write("notaschema.json", `{"type": 5}`)

	env := pipeline.Env{ConfigDir: dir}
	s := mustBuild(t, "schema", "schema: schemas/mine.json\nevents: [custom]", env)
	good := newExport(t, []byte(`{"event": "custom", "tag": "abc"}`), nil)
	err := s.Process(t.Context(), good)
	passed(t, good, err)

	err = s.Process(t.Context(), newExport(t, []byte(`{"event": "custom", "tag": "abcd"}`), nil))
	se := stageErr(t, err)
	if se.Msg != "payload does not match the mine.json schema" || len(se.Violations) != 1 || se.Violations[0].Pointer != "/tag" {
		t.Fatalf("error = %q %+v, want one violation at /tag from mine.json", se.Msg, se.Violations)
	}

	err = s.Process(t.Context(), newExport(t, []byte(`{"event": "custom", "tag": "abc", "a/b~c": 1}`), nil))
	if se := stageErr(t, err); len(se.Violations) != 1 || se.Violations[0].Pointer != "/a~1b~0c" {
		t.Fatalf("violations = %+v, want one at /a~1b~0c (RFC 6901 escaping)", se.Violations)
	}

	abs := mustBuild(t, "schema", "schema: "+filepath.Join(dir, "schemas/mine.json")+"\nevents: [custom]", pipeline.Env{})
	if err := abs.Process(t.Context(), newExport(t, []byte(`{"event": "custom"}`), nil)); err == nil {
		t.Fatal("absolute schema path: missing tag passed")
	}

	bad := []struct {
		name, opts, want string
	}{
		// Each names the schema field, so that the loader points at it.
		{"missing file", "schema: nope.json", "schema: read schema file: open " + filepath.Join(dir, "nope.json")},
		{"not JSON", "schema: broken.json", "schema: schema file " + filepath.Join(dir, "broken.json") + " is not valid JSON"},
		{"not a schema", "schema: notaschema.json", "schema: schema file " + filepath.Join(dir, "notaschema.json") + " is not a valid JSON Schema"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := build(t, "schema", tt.opts, env)
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("build error = %v, want prefix %q", err, tt.want)
			}
		})
	}
}

func TestSchemaValidate(t *testing.T) {
	tests := []struct {
		name, opts string
		want       []string
	}{
		{"defaults", "", nil},
		{"missing file is not checked at validate", "schema: does/not/exist.json", nil},
		{"empty schema", `schema: ""`, []string{"schema: is required (a built-in name such as issue-exported, or a path to a JSON Schema file)"}},
		{"no events", "events: []", []string{"events: must list at least one event"}},
		{"empty event", `events: [issue-exported, ""]`, []string{"events[1]: is empty"}},
		// The built-ins are in the binary: a misspelled name is caught
		// without I/O, by validate as by run.
		{"unknown built-in", "schema: issue-exportd", []string{`schema: unknown built-in schema "issue-exportd" (known: issue-exported; or give a path to a .json file)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decode(t, "schema", tt.opts)
			if got := fieldErrors(t, err); strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Fatalf("Validate() = %q, want %q", got, tt.want)
			}
		})
	}
}
