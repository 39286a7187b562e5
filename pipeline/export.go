package pipeline

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"slices"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// Attributes the core reads (see Export.Key).
const (
	// AttrDedupeKey holds the key the last dedupe stage reserved.
	AttrDedupeKey = "dedupe_key"
	// AttrWebhookID holds the sender's verified webhook-id (Standard
	// Webhooks), which the secret stage reads.
	AttrWebhookID = "webhook_id"
)

// Export is one webhook delivery as it moves through the ingress stages.
// The webhook decodes the body once; stages read and replace Payload.
type Export struct {
	// ID is assigned on arrival and names the export everywhere after.
	ID string
	// ReceivedAt is when the webhook read the request.
	ReceivedAt time.Time
	// Header holds the webhook request's headers; ingress stages only.
	Header http.Header
	// Body is the raw request body as received.
	Body []byte
	// Payload is the decoded JSON document. A stage that changes it
	// assigns a new value and never edits the old one in place: the
	// webhook publishes the raw Body when Payload is still the value it
	// decoded.
	Payload any
	// Attrs carries values one stage leaves for a later one (for example
	// the webhook id the secret stage read). jq programs of stages see them
	// as $export.attrs.
	Attrs map[string]string

	orig any    // Payload as decoded, to tell whether a stage replaced it
	key  string // Key as published
}

// Info is the `$export` value the stages' jq programs see: the export's
// facts and the attributes earlier stages left.
func (e *Export) Info() map[string]any {
	v := exportVar(e.metadata())
	attrs := make(map[string]any, len(e.Attrs))
	for k, a := range e.Attrs {
		attrs[k] = a
	}
	v["attrs"] = attrs
	return v
}

// Key names the export by what it is rather than when it arrived, as 32
// hex digits. The vendors' idempotency keys derive from it (with the sink
// and chunk), so an export accepted twice still maps to the same vendor
// task: a caller's retry accepted again after a crash lapsed its dedupe
// hold, or the same issue exported again after the dedupe ttl. It is a
// hash of, in order of preference: the key the last dedupe stage reserved
// (the user's own notion of "the same export"), the sender's webhook-id
// once its signature verified it, or ContentKey of the payload. An
// unsigned webhook-id header is ignored: anyone could send one, and two
// exports sharing it would map to one vendor task, the second silently
// "already done".
//
// ID, by contrast, names one acceptance: the broker messages, the
// delivery records, the dead letters and the logs.
func (e *Export) Key() string {
	var src string
	switch {
	case e.Attrs[AttrDedupeKey] != "":
		src = "dedupe\x00" + e.Attrs[AttrDedupeKey]
	case e.Attrs[AttrWebhookID] != "":
		src = "webhook-id\x00" + e.Attrs[AttrWebhookID]
	default:
		src = "content\x00" + ContentKey(e.Payload)
	}
	sum := sha256.Sum256([]byte(src))
	return hex.EncodeToString(sum[:16])
}

// ContentKey is the hex SHA-256 of (event, project, issue id, sorted
// element ids) of an issue payload, and of the whole payload otherwise:
// the default dedupe key, and the default of Export.Key.
func ContentKey(payload any) string {
	h := sha256.New()
	m, _ := payload.(map[string]any)
	issue, _ := m["issue"].(map[string]any)
	issueID, _ := issue["id"].(string)
	if issueID == "" {
		// encoding/json sorts map keys, so equal payloads hash equally.
		b, _ := json.Marshal(payload)
		h.Write([]byte("payload\x00"))
		h.Write(b)
		return hex.EncodeToString(h.Sum(nil))
	}
	var ids []string
	elements, _ := issue["elements"].([]any)
	for _, el := range elements {
		elm, _ := el.(map[string]any)
		switch id := elm["element_id"].(type) {
		case string:
			ids = append(ids, id)
		case nil:
		default:
			b, _ := json.Marshal(id)
			ids = append(ids, string(b))
		}
	}
	slices.Sort(ids)
	event, _ := m["event"].(string)
	project, _ := m["project"].(string)
	// A JSON array keeps the parts apart: no separator can be forged.
	b, _ := json.Marshal([]any{event, project, issueID, ids})
	h.Write([]byte("issue\x00"))
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

// Event is the payload's `event` field, or "" when it has none.
func (e *Export) Event() string {
	m, _ := e.Payload.(map[string]any)
	s, _ := m["event"].(string)
	return s
}

// SetAttr records a value for later stages.
func (e *Export) SetAttr(k, v string) {
	if e.Attrs == nil {
		e.Attrs = map[string]string{}
	}
	e.Attrs[k] = v
}

// metadata is the export's facts as they ride on the broker: the id, the
// arrival time, and the event, project and issue id read from the payload
// ("" for any that is missing). The key is added once the stages are done
// (withKey): they may still change what it derives from.
func (e *Export) metadata() message.Metadata {
	m, _ := e.Payload.(map[string]any)
	event, _ := m["event"].(string)
	project, _ := m["project"].(string)
	var issueID string
	if is, ok := m["issue"].(map[string]any); ok {
		issueID, _ = is["id"].(string)
	}
	return message.Metadata{
		backend.MetaExportID:   e.ID,
		backend.MetaReceivedAt: e.ReceivedAt.UTC().Format(time.RFC3339Nano),
		backend.MetaEvent:      event,
		backend.MetaProject:    project,
		backend.MetaIssueID:    issueID,
	}
}

// withKey is metadata with the export's key, as published.
func (e *Export) withKey() message.Metadata {
	md := e.metadata()
	e.key = e.Key()
	md[backend.MetaExportKey] = e.key
	return md
}

// exportVar builds `$export` from an export's metadata. It is the one
// place that value is made: the stages see it through Info (with attrs),
// the sinks through the fan-out and the preview (with sink).
func exportVar(md message.Metadata) map[string]any {
	return map[string]any{
		"id":          md.Get(backend.MetaExportID),
		"key":         md.Get(backend.MetaExportKey),
		"received_at": md.Get(backend.MetaReceivedAt),
		"event":       md.Get(backend.MetaEvent),
		"project":     md.Get(backend.MetaProject),
		"issue_id":    md.Get(backend.MetaIssueID),
	}
}
