package stages_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/labelpipe/labelpipe/pipeline"
)

func TestTransform(t *testing.T) {
	frames := samplePayload(t, "issue-frames.json")
	tests := []struct {
		name    string
		expr    string
		want    string // JSON of the new payload
		wantErr string // prefix of a 422 message
	}{
		{"pick fields", `{project, issue: .issue.id, frames: [.issue.elements[].frame_id]}`,
			`{"frames":["frame_000481","frame_000482","frame_000517"],"issue":"issue_7f3c2a9e","project":"pedestrian_detection"}`, ""},
		{"sees $export", `{id: $export.id, hook: $export.attrs.webhook_id}`, `{"hook":"msg_1","id":"EXPORT_ID"}`, ""},
		{"scalar result", `.issue.elements | length`, `3`, ""},
		{"no value", `empty`, "", "transform shape failed: the expression yielded 0 values, want exactly one"},
		{"several values", `.issue.elements[]`, "", "transform shape failed: the expression yielded 3 values, want exactly one"},
		{"run-time error", `.issue.id + 1`, "", "transform shape failed: jq: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustBuild(t, "transform", "expr: '"+tt.expr+"'", pipeline.Env{Name: "shape"})
			e := newExport(t, frames, nil)
			e.SetAttr("webhook_id", "msg_1")
			err := s.Process(t.Context(), e)
			if tt.wantErr != "" {
				se := stageErr(t, err)
				if se.Status != http.StatusUnprocessableEntity || !strings.HasPrefix(se.Msg, tt.wantErr) {
					t.Fatalf("error = %d %q, want 422 %q…", se.Status, se.Msg, tt.wantErr)
				}
				if string(mustJSON(t, e.Payload)) != string(mustJSON(t, newExport(t, frames, nil).Payload)) {
					t.Fatal("a failed transform changed the payload")
				}
				return
			}
			passed(t, e, err)
			want := strings.ReplaceAll(tt.want, "EXPORT_ID", e.ID)
			if got := string(mustJSON(t, e.Payload)); got != want {
				t.Fatalf("payload = %s, want %s", got, want)
			}
		})
	}
}

// TestTransformNormalisesSpelling chains a transform and the schema stage:
// a payload with both spellings of the label coordinate frame comes out
// with one, and still matches the schema.
func TestTransformNormalisesSpelling(t *testing.T) {
	norm := mustBuild(t, "transform", `expr: |
  .issue.elements[].frame_data.label_data[] |=
    (.label_coordinate_frame //= .label_coorindate_frame | del(.label_coorindate_frame))`, pipeline.Env{})
	schema := mustBuild(t, "schema", "", pipeline.Env{})
	e := newExport(t, samplePayload(t, "issue-mixed-spelling.json"), nil)
	for _, s := range []pipeline.Stage{norm, schema} {
		err := s.Process(t.Context(), e)
		passed(t, e, err)
	}
	got := string(mustJSON(t, e.Payload))
	if strings.Contains(got, "label_coorindate_frame") || strings.Count(got, `"label_coordinate_frame":"cam_front"`) != 2 {
		t.Fatalf("payload not normalised: %s", got)
	}
}

func TestTransformValidate(t *testing.T) {
	tests := []struct{ name, opts, want string }{
		{"ok", "expr: .issue", ""},
		{"missing", "", "expr: is required"},
		{"bad jq", "expr: '{'", "expr: invalid jq: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decode(t, "transform", tt.opts)
			got := strings.Join(fieldErrors(t, err), "\n")
			if (tt.want == "") != (got == "") || !strings.HasPrefix(got, tt.want) {
				t.Fatalf("Validate() = %q, want %q…", got, tt.want)
			}
		})
	}
}
