package stages_test

import (
	"cmp"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/labelpipe/labelpipe/configs"
	"github.com/labelpipe/labelpipe/pipeline"
)

// exportOf builds an issue-exported payload holding n copies of the
// 10-element sample's elements, as a large real export looks.
func exportOf(tb testing.TB, n int) []byte {
	tb.Helper()
	b, err := configs.Payloads.ReadFile("payloads/issue-10-elements.json")
	if err != nil {
		tb.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		tb.Fatal(err)
	}
	issue := doc["issue"].(map[string]any)
	src := issue["elements"].([]any)
	elems := make([]any, 0, n)
	for i := range n {
		elems = append(elems, src[i%len(src)])
	}
	issue["elements"] = elems
	out, err := json.Marshal(doc)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// BenchmarkSchema checks valid exports, the common case, with the default
// schema stage.
func BenchmarkSchema(b *testing.B) {
	st, _ := registry().Stage("schema")
	s, err := st.Build(st.Config(), pipeline.Env{Name: "schema", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range []int{10, 1000} {
		b.Run(fmt.Sprintf("elements=%d", n), func(b *testing.B) {
			body := exportOf(b, n)
			var payload any
			if err := json.Unmarshal(body, &payload); err != nil {
				b.Fatal(err)
			}
			e := &pipeline.Export{ID: "bench", ReceivedAt: time.Now(), Header: http.Header{}, Body: body, Payload: payload}
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if err := s.Process(b.Context(), e); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// elementsOf builds an issue-exported payload whose elements are n copies
// of elem (raw JSON).
func elementsOf(n int, elem string) []byte {
	var b strings.Builder
	b.WriteString(`{"event":"issue-exported","project":"p","issue":{"id":"i","elements":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(elem)
	}
	b.WriteString(`]}}`)
	return []byte(b.String())
}

func TestSchemaMaxViolations(t *testing.T) {
	frames := samplePayload(t, "issue-frames.json")
	five := mutate(t, frames, `del(.project) | .issue.elements[2] |= del(.frame_id, .dataset)
		| .issue.elements[0].frame_data.label_data[1].uuid = 3 | .issue.id = 42`)
	tests := []struct {
		name      string
		opts      string
		body      []byte
		shown     int
		total     int  // exact total; 0 with minTotal
		minTotal  int  // the check stopped early: total is at least this
		truncated bool // and the message says so
	}{
		{name: "300 empty elements", body: elementsOf(300, `{}`), shown: 100, minTotal: 101, truncated: true},
		{name: "one element of 100k bad labels", body: elementsOf(1, `{"element_id":"e","element_type":"frame","frame_id":"f","dataset":"d","frame_data":{"label_data":[`+strings.Repeat(`1,`, 100_000)+`1]}}`),
			shown: 100, minTotal: 101, truncated: true},
		{name: "limit 1, the check stops early", opts: "max_violations: 1", body: elementsOf(300, `{}`), shown: 1, minTotal: 2, truncated: true},
		{name: "limit 1, a small payload is counted in full", opts: "max_violations: 1", body: five, shown: 1, total: 5, truncated: true},
		{name: "limit 1, an envelope", opts: "max_violations: 1", body: []byte(`{"event":"issue-exported"}`), shown: 1, total: 2, truncated: true},
		{name: "exactly the limit", opts: "max_violations: 5", body: five, shown: 5},
		{name: "under the default", body: five, shown: 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustBuild(t, "schema", tt.opts, pipeline.Env{})
			se := stageErr(t, s.Process(t.Context(), newExport(t, tt.body, nil)))
			if se.Status != http.StatusUnprocessableEntity || len(se.Violations) != tt.shown {
				t.Fatalf("status %d, %d violations, want 422 and %d: %+v", se.Status, len(se.Violations), tt.shown, se.Violations)
			}
			if se.ViolationsTruncated != tt.truncated {
				t.Fatalf("truncated = %v, want %v", se.ViolationsTruncated, tt.truncated)
			}
			const plain = "payload does not match the issue-exported schema"
			switch {
			case !tt.truncated:
				if se.Msg != plain || se.ViolationsTotal != 0 {
					t.Fatalf("message %q, total %d; want %q and 0", se.Msg, se.ViolationsTotal, plain)
				}
			case tt.total > 0:
				want := fmt.Sprintf("%s: %d violations, first %d shown (schema.max_violations)", plain, tt.total, tt.shown)
				if se.Msg != want || se.ViolationsTotal != tt.total {
					t.Fatalf("message %q, total %d; want %q and %d", se.Msg, se.ViolationsTotal, want, tt.total)
				}
			default:
				want := fmt.Sprintf("%s: at least %d violations, first %d shown (schema.max_violations)", plain, se.ViolationsTotal, tt.shown)
				if se.Msg != want || se.ViolationsTotal < tt.minTotal {
					t.Fatalf("message %q, total %d; want %q and at least %d", se.Msg, se.ViolationsTotal, want, tt.minTotal)
				}
			}
			for i, v := range se.Violations {
				if v.Pointer == "" || v.Message == "" || (i > 0 && se.Violations[i-1].Pointer > v.Pointer) {
					t.Fatalf("violation %d = %+v: want a pointer and a message, sorted", i, v)
				}
			}
		})
	}
}

// TestSchemaFloodAnswersSmall: 100k elements of {} (half a million
// violations) give a 422 no larger than for a few hundred.
func TestSchemaFloodAnswersSmall(t *testing.T) {
	s := mustBuild(t, "schema", "", pipeline.Env{})
	se := stageErr(t, s.Process(t.Context(), newExport(t, elementsOf(100_000, `{}`), nil)))
	if len(se.Violations) != 100 || !se.ViolationsTruncated {
		t.Fatalf("%d violations, truncated %v; want 100, truncated", len(se.Violations), se.ViolationsTruncated)
	}
	// Found is about what was checked: a few elements, not all of them.
	if se.ViolationsTotal > 1000 || !strings.Contains(se.Msg, "at least ") {
		t.Fatalf("%q, total %d: the check went on past the limit", se.Msg, se.ViolationsTotal)
	}
	// What the webhook answers, field for field.
	answer := mustJSON(t, map[string]any{"error": se.Msg, "violations": se.Violations,
		"violations_total": se.ViolationsTotal, "violations_truncated": se.ViolationsTruncated})
	if len(answer) > 16<<10 {
		t.Fatalf("answer is %d bytes, want at most 16 KiB", len(answer))
	}
	if want := "/issue/elements/0/dataset"; se.Violations[0].Pointer != want {
		t.Fatalf("first violation at %s, want %s", se.Violations[0].Pointer, want)
	}
}

// TestSchemaSplitMatchesWhole: a large export, checked a level at a time,
// reports what its elements report when checked one by one in small
// exports, where the library checks the whole document in one call.
func TestSchemaSplitMatchesWhole(t *testing.T) {
	frames := samplePayload(t, "issue-frames.json")
	mistakes := []string{
		`.issue.elements[0] |= del(.frame_id, .dataset)`,
		`.issue.elements[0].element_type = "polygon"`,
		`.issue.elements[0].frame_data.label_data[1].uuid = 3`,
		`.issue.elements[0].frame_data.sensor_data |= .[0]`,
		`.issue.elements[0].frame_data.sensor_data[0].data_urls.image_url = "frame 17.jpg"`,
		`.issue.elements[0] = 7`,
		`.issue.elements[0].frame_data = {"label_data": [range(200) | {"uuid": .}]}`,
	}
	s := mustBuild(t, "schema", "max_violations: 100000", pipeline.Env{})
	var elems []string
	var want []pipeline.Violation
	for i := range 140 {
		one := mutate(t, frames, `.issue.elements |= .[:1] | `+mistakes[i%len(mistakes)])
		var doc struct {
			Issue struct{ Elements []json.RawMessage }
		}
		if err := json.Unmarshal(one, &doc); err != nil {
			t.Fatal(err)
		}
		elems = append(elems, string(doc.Issue.Elements[0]))
		se := stageErr(t, s.Process(t.Context(), newExport(t, one, nil)))
		for _, v := range se.Violations {
			v.Pointer = strings.Replace(v.Pointer, "/issue/elements/0", fmt.Sprintf("/issue/elements/%d", i), 1)
			want = append(want, v)
		}
	}
	big := []byte(`{"event":"issue-exported","issue":{"id":42,"elements":[` + strings.Join(elems, ",") + `]}}`)
	want = append(want, pipeline.Violation{Pointer: "/issue/id", Message: "got number, want string"},
		pipeline.Violation{Pointer: "/project", Message: "required property is missing"})
	slices.SortFunc(want, func(a, b pipeline.Violation) int {
		return cmp.Or(cmp.Compare(a.Pointer, b.Pointer), cmp.Compare(a.Message, b.Message))
	})
	want = slices.Compact(want)

	se := stageErr(t, s.Process(t.Context(), newExport(t, big, nil)))
	if se.ViolationsTruncated || !slices.Equal(se.Violations, want) {
		t.Fatalf("large export: %d violations (truncated %v), want %d; first difference at %d",
			len(se.Violations), se.ViolationsTruncated, len(want), firstDiff(se.Violations, want))
	}
}

func firstDiff(a, b []pipeline.Violation) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestSchemaFileLimits: a user's schema is split where it can be, and
// otherwise checked whole, its list still cut to the limit.
func TestSchemaFileLimits(t *testing.T) {
	dir := t.TempDir()
	schemas := map[string]string{
		// Draft 7 arrays: items is one schema.
		"draft7.json": `{"$schema": "http://json-schema.org/draft-07/schema#", "required": ["event"],
			"properties": {"rows": {"type": "array", "items": {"type": "integer"}, "additionalItems": false}}}`,
		// A dynamic anchor: checked whole.
		"dynamic.json": `{"$schema": "https://json-schema.org/draft/2020-12/schema", "$dynamicAnchor": "node",
			"properties": {"rows": {"items": {"type": "integer"}}}}`,
	}
	for name, body := range schemas {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	rows := func(n int, v string) []byte {
		return []byte(`{"event": "custom", "rows": [` + strings.TrimSuffix(strings.Repeat(v+",", n), ",") + `]}`)
	}
	tests := []struct {
		name, schema string
		body         []byte
		shown        int
		msgSuffix    string
	}{
		{"draft 7 valid", "draft7.json", rows(1000, "1"), 0, ""},
		{"draft 7 small", "draft7.json", rows(3, `"x"`), 3, "schema"},
		{"draft 7 flood stops early", "draft7.json", rows(10_000, `"x"`), 10, "at least 11 violations, first 10 shown (schema.max_violations)"},
		{"dynamic valid", "dynamic.json", rows(1000, "1"), 0, ""},
		{"dynamic flood counted in full", "dynamic.json", rows(500, `"x"`), 10, ": 500 violations, first 10 shown (schema.max_violations)"},
	}
	env := pipeline.Env{ConfigDir: dir}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustBuild(t, "schema", "schema: "+tt.schema+"\nevents: [custom]\nmax_violations: 10", env)
			e := newExport(t, tt.body, nil)
			err := s.Process(t.Context(), e)
			if tt.shown == 0 {
				passed(t, e, err)
				return
			}
			se := stageErr(t, err)
			if len(se.Violations) != tt.shown || !strings.HasSuffix(se.Msg, tt.msgSuffix) {
				t.Fatalf("%q with %d violations, want %d and a message ending %q", se.Msg, len(se.Violations), tt.shown, tt.msgSuffix)
			}
		})
	}
}

// TestSchemaValidLargeExportsPass: splitting changes nothing for a valid
// export, even with the smallest limit.
func TestSchemaValidLargeExportsPass(t *testing.T) {
	for _, opts := range []string{"", "max_violations: 1"} {
		s := mustBuild(t, "schema", opts, pipeline.Env{})
		for _, n := range []int{1, 10, 1000} {
			e := newExport(t, exportOf(t, n), nil)
			passed(t, e, s.Process(t.Context(), e))
		}
	}
}

func TestSchemaMaxViolationsConfig(t *testing.T) {
	tests := []struct {
		name, opts string
		want       []string
	}{
		{"default", "", nil},
		{"one", "max_violations: 1", nil},
		{"zero", "max_violations: 0", []string{"max_violations: must be ≥ 1"}},
		{"negative", "max_violations: -5", []string{"max_violations: must be ≥ 1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decode(t, "schema", tt.opts)
			if got := fieldErrors(t, err); strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Fatalf("Validate() = %q, want %q", got, tt.want)
			}
		})
	}

	doc := "stages:\n  - type: schema\n    max_violations: 0\nsinks:\n  - name: n\n    type: nop\n"
	cfg, err := pipeline.ParseConfig("pipeline.yaml", []byte(doc))
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	const want = `pipeline.yaml:3:21: stages[0] "schema": max_violations: must be ≥ 1`
	if err := cfg.Resolve(registry()); err == nil || err.Error() != want {
		t.Fatalf("Resolve() = %v, want %s", err, want)
	}
}

// TestSchemaLongMessagesCut: a violation quoting a megabyte string does not
// make a megabyte answer.
func TestSchemaLongMessagesCut(t *testing.T) {
	url := strings.Repeat("é", 500_000)
	body := mutate(t, samplePayload(t, "issue-frames.json"), `.issue.elements[0].frame_data.sensor_data[0].data_urls.image_url = "`+url+`"`)
	s := mustBuild(t, "schema", "", pipeline.Env{})
	se := stageErr(t, s.Process(t.Context(), newExport(t, body, nil)))
	if len(se.Violations) != 1 {
		t.Fatalf("violations = %d, want 1", len(se.Violations))
	}
	msg := se.Violations[0].Message
	if len(msg) > 1100 || !strings.HasSuffix(msg, "… (cut)") || !utf8.ValidString(msg) {
		t.Fatalf("message of %d bytes ending %q, want at most about 1 KiB, valid UTF-8, ending … (cut)", len(msg), msg[max(0, len(msg)-20):])
	}
}
