package loadtest

import (
	"encoding/json"
	"fmt"
	"strings"
)

// secret is the webhook secret the senders present and both the daemon and
// the forwarder check.
const secret = "bench-secret"

// The three sinks' bodies, the same in the daemon's config (as jq) and in
// the forwarder (as Go), so both do the same work.
var sinkBodies = []string{
	`{query: "mutation Batch($p: ID!, $name: String!, $keys: [String!]) { project(where:{id:$p}) { createBatchV2(input:{name:$name, globalKeys:$keys}) { batch { id } } } }", variables: {p: .project, name: ("aq-" + .issue.id), keys: [.issue.elements[].frame_id]}}`,
	`{issue: .issue.id, tasks: [.issue.elements[] | {unique_id: (.element_id), attachment: .frame_data.sensor_data[0].data_urls.image_url, project: .dataset}]}`,
	`{issue: .issue.id, tasks: [.issue.elements[] | {data: {image: .frame_data.sensor_data[0].data_urls.image_url}, meta: {frame_id: .frame_id, element_id: .element_id}}]}`,
}

// daemonConfig is the daemon's YAML config for one run: the webhook on addr,
// the admin server (pprof) on admin, the secret, schema and dedupe stages,
// and one http sink per vendor URL.
func daemonConfig(addr, admin, prefix string, o Options, vendorURLs []string) string {
	var b strings.Builder
	// pprof only when a profile is asked for: it is what --cpuprofile and
	// --memprofile fetch, and it costs nothing otherwise.
	pprof := o.CPUProfile != "" || o.MemProfile != ""
	fmt.Fprintf(&b, "server: {addr: %q, path: /webhook, max_body_bytes: %d}\nadmin: {addr: %q, pprof: %t}\nlog: {level: warn}\n", addr, 256<<20, admin, pprof)
	if o.Broker == "redis" {
		fmt.Fprintf(&b, "broker: {type: redis, prefix: %q}\nredis: {url: %q, key_prefix: %q}\n", prefix, o.RedisURL, prefix)
	} else {
		b.WriteString("broker: {type: memory}\n")
	}
	if o.NoHistory {
		b.WriteString("history: {enabled: false}\n")
	}
	b.WriteString("stages:\n  - {type: secret, secrets: [" + secret + "]}\n  - {type: schema, schema: issue-exported}\n  - {type: dedupe, store: memory, ttl: 1h}\nsinks:\n")
	for i, u := range vendorURLs {
		body, _ := json.Marshal(sinkBodies[i])
		fmt.Fprintf(&b, "  - {name: vendor%d, type: http, url: %q, max_in_flight: %d, body: %s}\n", i, u, o.MaxInFlight, body)
	}
	return b.String()
}
