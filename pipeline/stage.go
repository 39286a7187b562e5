package pipeline

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Export is one webhook delivery as it moves through the ingress stages.
// The HTTP source decodes the body once; stages read and replace Payload.
type Export struct {
	// ID is assigned on arrival and names the export everywhere after.
	ID string
	// ReceivedAt is when the source read the request.
	ReceivedAt time.Time
	// Header holds the webhook request's headers; ingress stages only.
	Header http.Header
	// Body is the raw request body as received.
	Body []byte
	// Payload is the decoded JSON document. A stage that changes it
	// assigns a new value and never edits the old one in place: the
	// source publishes the raw Body when Payload is still the value it
	// decoded.
	Payload any
	// Attrs carries values one stage leaves for a later one or for the
	// source (for example the dedupe key to release on a failed publish).
	Attrs map[string]string

	orig any // Payload as decoded, to tell whether a stage replaced it
}

// Info is the `$export` value jq programs see.
func (e *Export) Info() map[string]any {
	event, project, issueID := e.facts()
	return map[string]any{
		"id":          e.ID,
		"received_at": e.ReceivedAt.UTC().Format(time.RFC3339Nano),
		"event":       event,
		"project":     project,
		"issue_id":    issueID,
	}
}

// facts reads the event, project and issue id from the payload, "" for
// any that is missing.
func (e *Export) facts() (event, project, issueID string) {
	m, _ := e.Payload.(map[string]any)
	event, _ = m["event"].(string)
	project, _ = m["project"].(string)
	if is, ok := m["issue"].(map[string]any); ok {
		issueID, _ = is["id"].(string)
	}
	return event, project, issueID
}

// Event is the payload's `event` field, or "" when it has none. It reads
// the field directly: the source asks once per export on the hot path.
func (e *Export) Event() string {
	m, _ := e.Payload.(map[string]any)
	s, _ := m["event"].(string)
	return s
}

// SetAttr records a value for later stages or the source.
func (e *Export) SetAttr(k, v string) {
	if e.Attrs == nil {
		e.Attrs = map[string]string{}
	}
	e.Attrs[k] = v
}

// Stage is one ingress step. It runs synchronously with the webhook request.
//
// It returns the exports to pass on: usually the one it got, possibly
// rewritten; none to drop the export on purpose (a filter), in which case it
// should say why through Dropped. An error carries its HTTP meaning: build
// it with Reject, Duplicate or Unavailable. Any other error answers 500.
type Stage interface {
	Process(ctx context.Context, e *Export) ([]*Export, error)
}

// Releaser is implemented by stages that reserve something (a dedupe key)
// which must be given back when the export could not be durably published,
// so that the caller's retry is not swallowed.
type Releaser interface {
	Release(ctx context.Context, e *Export) error
}

// Closer is implemented by stages and sinks that hold resources.
type Closer interface {
	Close() error
}

// Verdict kinds carried by a *StageError.
type Verdict int

const (
	// VerdictReject answers the caller with a 4xx and drops the export.
	VerdictReject Verdict = iota + 1
	// VerdictDuplicate answers 200 {"status":"duplicate"}.
	VerdictDuplicate
	// VerdictUnavailable answers 503 with Retry-After: try again later.
	VerdictUnavailable
)

// Violation is one schema violation, reported in a 422 answer.
type Violation struct {
	Pointer string `json:"pointer"`
	Message string `json:"message"`
}

// StageError is the error a stage returns to stop an export with a meaning
// the caller sees.
type StageError struct {
	Verdict Verdict
	// Status is the HTTP status for VerdictReject.
	Status int
	// Msg says plainly what was wrong; it is the body's "error".
	Msg string
	// Violations lists schema violations (422).
	Violations []Violation
	// DuplicateOf is the id of the export this one repeats.
	DuplicateOf string
	// RetryAfter is the Retry-After hint: always sent with
	// VerdictUnavailable, and with a reject (a 429) when set.
	RetryAfter time.Duration
	// Err is the cause, if any.
	Err error
}

func (e *StageError) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e *StageError) Unwrap() error { return e.Err }

// Reject stops the export with an HTTP 4xx status and a plain message.
func Reject(status int, format string, args ...any) error {
	return &StageError{Verdict: VerdictReject, Status: status, Msg: fmt.Sprintf(format, args...)}
}

// Invalid answers 422 with one entry per schema violation.
func Invalid(msg string, v []Violation) error {
	return &StageError{Verdict: VerdictReject, Status: http.StatusUnprocessableEntity, Msg: msg, Violations: v}
}

// Duplicate answers 200 {"status":"duplicate","id": of}.
func Duplicate(of string) error {
	return &StageError{Verdict: VerdictDuplicate, Msg: "duplicate export", DuplicateOf: of}
}

// Unavailable answers 503 with Retry-After: a dependency (Redis, the broker)
// cannot take the export now, and the caller should try again.
func Unavailable(retryAfter time.Duration, err error, format string, args ...any) error {
	return &StageError{Verdict: VerdictUnavailable, Msg: fmt.Sprintf(format, args...), RetryAfter: retryAfter, Err: err}
}

// AsStageError returns the *StageError in err's chain, if any.
func AsStageError(err error) (*StageError, bool) {
	var se *StageError
	ok := errors.As(err, &se)
	return se, ok
}

// Dropped records on the export why a stage dropped it; the source puts the
// reason in its answer and on the span.
func Dropped(e *Export, reason string) []*Export {
	e.SetAttr(AttrDropReason, reason)
	return nil
}

// Attribute keys the pipeline itself reads.
const (
	// AttrDropReason is set by Dropped.
	AttrDropReason = "drop_reason"
	// AttrDedupeKey is the dedupe key a stage reserved.
	AttrDedupeKey = "dedupe_key"
)

// RawStage is implemented by stages that read only the headers and the raw
// body (secret and signature checks). Leading raw stages run before the
// body is decoded, so a caller with a bad secret gets 401, not a parse
// error, and costs no parse.
type RawStage interface {
	RawOnly()
}

// Previewer is implemented by stages whose Process has side effects (a
// dedupe reservation). Preview calls it instead: same verdict, no effect.
type Previewer interface {
	Preview(ctx context.Context, e *Export) ([]*Export, error)
}
