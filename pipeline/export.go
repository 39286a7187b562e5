package pipeline

import (
	"net/http"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/labelpipe/labelpipe/pipeline/backend"
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

	orig any // Payload as decoded, to tell whether a stage replaced it
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
// ("" for any that is missing).
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

// exportVar builds `$export` from an export's metadata. It is the one
// place that value is made: the stages see it through Info (with attrs),
// the sinks through the fan-out and the preview (with sink).
func exportVar(md message.Metadata) map[string]any {
	return map[string]any{
		"id":          md.Get(backend.MetaExportID),
		"received_at": md.Get(backend.MetaReceivedAt),
		"event":       md.Get(backend.MetaEvent),
		"project":     md.Get(backend.MetaProject),
		"issue_id":    md.Get(backend.MetaIssueID),
	}
}
