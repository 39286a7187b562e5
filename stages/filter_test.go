package stages_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/labelpipe/labelpipe/pipeline"
)

func TestFilter(t *testing.T) {
	frames := samplePayload(t, "issue-frames.json")
	tests := []struct {
		name    string
		expr    string
		body    []byte
		pass    bool
		wantErr string // prefix of a 422 message
	}{
		{"true", `.project == "pedestrian_detection"`, frames, true, ""},
		{"false", `.project == "other"`, frames, false, ""},
		{"null", `.missing`, frames, false, ""},
		{"no output", `empty`, frames, false, ""},
		{"first value decides", `(.issue.elements[] | .element_type == "frame")`, frames, true, ""},
		{"any truthy value passes", `.issue.id`, frames, true, ""},
		{"sees $export", `$export.event == "issue-exported" and $export.issue_id == "issue_7f3c2a9e"`, frames, true, ""},
		{"sees attrs", `$export.attrs.webhook_id == "msg_1"`, frames, true, ""},
		{"crops only", `any(.issue.elements[]; .element_type == "crop")`, frames, false, ""},
		{"crops only, crop payload", `any(.issue.elements[]; .element_type == "crop")`, samplePayload(t, "issue-crops.json"), true, ""},
		{"run-time error", `.issue.elements | keys | .[0] | ascii_downcase`, frames, false, "filter only_frames failed: jq: "},
		{"error()", `error("no elements")`, frames, false, "filter only_frames failed: jq: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustBuild(t, "filter", "expr: '"+tt.expr+"'", pipeline.Env{Name: "only_frames"})
			e := newExport(t, tt.body, nil)
			e.SetAttr("webhook_id", "msg_1")
			err := s.Process(t.Context(), e)
			switch {
			case tt.wantErr != "":
				se := stageErr(t, err)
				if se.Verdict != pipeline.VerdictReject || se.Status != http.StatusUnprocessableEntity || !strings.HasPrefix(se.Msg, tt.wantErr) {
					t.Fatalf("error = %v %d %q, want 422 %q…", se.Verdict, se.Status, se.Msg, tt.wantErr)
				}
			case tt.pass:
				passed(t, e, err)
			default:
				se := stageErr(t, err)
				if se.Verdict != pipeline.VerdictDrop || pipeline.VerdictOf(err) != pipeline.VerdictDrop {
					t.Fatalf("verdict %v (%v), want dropped", se.Verdict, err)
				}
				if se.Msg != "filter only_frames: expression is false" {
					t.Fatalf("drop reason = %q", se.Msg)
				}
			}
		})
	}
}

func TestFilterCancelledContext(t *testing.T) {
	s := mustBuild(t, "filter", `expr: '[range(1e9)] | length > 0'`, pipeline.Env{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err := s.Process(ctx, newExport(t, samplePayload(t, "test-payload.json"), nil))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error = %v, want context.Canceled", err)
	}
	if _, ok := pipeline.AsStageError(err); ok {
		t.Fatal("a cancelled request was answered as the payload's fault")
	}
}

func TestFilterValidate(t *testing.T) {
	tests := []struct{ name, opts, want string }{
		{"ok", "expr: .event == \"issue-exported\"", ""},
		{"missing", "", "expr: is required"},
		{"bad jq", "expr: '.event =='", "expr: invalid jq: "},
		{"unknown function", "expr: 'frobnicate(.)'", "expr: invalid jq: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decode(t, "filter", tt.opts)
			got := strings.Join(fieldErrors(t, err), "\n")
			if (tt.want == "") != (got == "") || !strings.HasPrefix(got, tt.want) {
				t.Fatalf("Validate() = %q, want %q…", got, tt.want)
			}
		})
	}
}
