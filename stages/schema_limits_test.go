package stages_test

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"testing"
	"time"

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
