package sinks_test

import (
	"encoding/json"
	"os"
	"testing"

	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/sinks"
)

// BenchmarkRender measures the render path of the http and graphql sinks on
// the 10-element sample payload, as the router runs it once per export and
// sink: go test -bench Render -benchmem ./sinks
func BenchmarkRender(b *testing.B) {
	raw, err := os.ReadFile("../configs/payloads/issue-10-elements.json")
	if err != nil {
		b.Fatal(err)
	}
	var payload any
	if err := json.Unmarshal(raw, &payload); err != nil {
		b.Fatal(err)
	}
	export := map[string]any{"id": "01J0EXPORT", "received_at": "2024-06-04T10:00:00Z", "event": "issue-exported",
		"project": "pedestrian_detection", "issue_id": "issue_10elements", "sink": "bench"}
	env := pipeline.Env{Name: "bench"}

	scale := sinks.HTTPDefaults()
	scale.URL = "https://api.scale.com/v1/task/imageannotation"
	scale.Body = `.issue.elements[] | {
	  project: $export.project, batch: "aquarium-\($export.issue_id)", instruction: "Relabel: \(.issue_name)",
	  attachment: .frame_data.sensor_data[0].data_urls.image_url,
	  unique_id: "\($export.issue_id).\(.element_id)",
	  geometries: {box: {objects_to_annotate: [.frame_data.label_data[].label] | unique}},
	  metadata: {aquarium_export: $export.id, frame_id: .frame_id, dataset: .dataset}}`
	httpSink, err := sinks.NewHTTP(scale, env)
	if err != nil {
		b.Fatal(err)
	}

	labelbox := sinks.GraphQLDefaults()
	labelbox.URL = "https://api.labelbox.com/graphql"
	labelbox.Query = batchMutation
	labelbox.Variables = `{projectId: "clx0project", input: {name: "aquarium-\($export.issue_id)", priority: 1,
	  globalKeys: [.issue.elements[].frame_id]}}`
	gqlSink, err := sinks.NewGraphQL(labelbox, env)
	if err != nil {
		b.Fatal(err)
	}

	for _, bc := range []struct {
		name string
		sink pipeline.Sink
		want int
	}{
		{"http_per_element", httpSink, 10},
		{"graphql_batch", gqlSink, 1},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				bodies, err := bc.sink.Render(b.Context(), payload, export)
				if err != nil || len(bodies) != bc.want {
					b.Fatalf("Render = %d bodies, %v", len(bodies), err)
				}
			}
		})
	}
}
