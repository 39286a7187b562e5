package loadtest

import (
	"bytes"
	"fmt"
	"strconv"
)

// approxElementBytes is about the size in bytes of one element in
// makeExport's payload; Options.ExportMB divides by it.
const approxElementBytes = 1100

// issueID is the issue id of export i; the warm-up export is -1.
func issueID(i int) string { return "bench-issue-" + strconv.Itoa(i) }

// makeExport builds a schema-valid issue-exported payload.
func makeExport(i, elements int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, `{"event":"issue-exported","project":"bench","issue":{"id":%q,"elements":[`, issueID(i))
	for e := 0; e < elements; e++ {
		if e > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"dataset":"ds-1","inference_set":"inf-1","issue_name":"bench","element_id":"el-%d-%d","element_type":"frame","frame_id":"fr-%d-%d",`+
			`"frame_data":{"coordinate_frames":[{"coordinate_frame_id":"cam","coordinate_frame_type":"IMAGE"}],"custom_metrics":{},`+
			`"date_captured":"2026-11-27T12:00:00Z","device_id":"dev-1","geo_data":{"lat":37.77,"lon":-122.41},`+
			`"label_data":[{"attributes":{"confidence":0.9},"label":"car","label_coordinate_frame":"cam","label_type":"BBOX_2D","linked_labels":[],"uuid":"lb-%d-%d-a"},`+
			`{"attributes":{"confidence":0.7},"label":"person","label_coorindate_frame":"cam","label_type":"BBOX_2D","linked_labels":[],"uuid":"lb-%d-%d-b"}],`+
			`"sensor_data":[{"coordinate_frame":"cam","data_urls":{"image_url":"https://images.example.com/%d/%d.jpg"},"date_captured":"2026-11-27T12:00:00Z","sensor_id":"cam","sensor_metadata":{},"sensor_type":"IMAGE"}],`+
			`"task_id":"t-%d","weather":"sunny"}}`, i, e, i, e, i, e, i, e, i, e, i)
	}
	b.WriteString("]}}")
	return b.Bytes()
}
