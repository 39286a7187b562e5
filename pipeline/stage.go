package pipeline

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Stage is one ingress step. It runs synchronously with the webhook
// request, on one export: it may read and replace e.Payload and set
// attributes. It returns nil to pass the export on, or an error that says
// what happens to it instead, built with Drop (200 filtered), Reject or
// Invalid (a 4xx), Duplicate (200 duplicate) or Unavailable (503 with
// Retry-After). Any other error answers 500.
type Stage interface {
	Process(ctx context.Context, e *Export) error
}

// RawStage is implemented by stages that read only the headers and the raw
// body (secret and signature checks). Leading raw stages run before the
// body is decoded, so a caller with a bad secret gets 401, not a parse
// error, and costs no parse.
type RawStage interface {
	Stage
	RawOnly()
}

// HeaderChecker is implemented by raw stages that can judge a request
// from its headers alone. The webhook asks them before it reads the body
// or sets memory aside for it, so a stranger without the secret costs
// almost nothing. CheckHeaders returns a Reject error to refuse the
// request now; otherwise proven says whether the headers proved the
// caller (a shared secret) or only the body can (a signature whose
// headers are well-formed and fresh). Process still runs the full check.
type HeaderChecker interface {
	CheckHeaders(h http.Header) (proven bool, err error)
}

// Releaser is implemented by stages that reserve something (a dedupe key)
// in Process: Release gives it back when the export is not accepted after
// all (a later stage stopped it, or the durable publish failed), so that
// the caller's retry is not swallowed.
type Releaser interface {
	Release(ctx context.Context, e *Export) error
}

// Confirmer is implemented by stages whose reservation is provisional
// until the export is stored: Confirm is called once the export is on the
// broker, before the 202. A reservation that is never confirmed (the
// process died before the publish) lapses by itself, so it never promises
// an export that does not exist. A Confirm error is logged; the export is
// accepted all the same.
type Confirmer interface {
	Confirm(ctx context.Context, e *Export) error
}

// Previewer is implemented by stages whose Process has side effects (a
// dedupe reservation). A preview calls Preview instead: same verdict, no
// effect.
type Previewer interface {
	Preview(ctx context.Context, e *Export) error
}

// Closer is implemented by stages and sinks that hold resources.
type Closer interface {
	Close() error
}

// Verdict is what became of an export at a stage. It names the outcome in
// metrics, spans, logs and the preview.
type Verdict int

const (
	// VerdictPass passes the export to the next stage.
	VerdictPass Verdict = iota
	// VerdictDrop drops it on purpose: 200 {"status":"filtered"}.
	VerdictDrop
	// VerdictDuplicate answers 200 {"status":"duplicate"}.
	VerdictDuplicate
	// VerdictReject answers the caller with a 4xx.
	VerdictReject
	// VerdictUnavailable answers 503 with Retry-After: try again later.
	VerdictUnavailable
	// VerdictError is an unexpected failure: 500.
	VerdictError
	// VerdictSkipped is a stage a preview did not run (no headers).
	VerdictSkipped
)

var verdictNames = [...]string{"passed", "dropped", "duplicate", "rejected", "unavailable", "error", "skipped"}

func (v Verdict) String() string {
	if int(v) < len(verdictNames) {
		return verdictNames[v]
	}
	return fmt.Sprintf("verdict(%d)", int(v))
}

// MarshalText writes the verdict's name, as the preview's JSON shows it.
func (v Verdict) MarshalText() ([]byte, error) { return []byte(v.String()), nil }

// VerdictOf is the verdict a stage's error gives.
func VerdictOf(err error) Verdict {
	if err == nil {
		return VerdictPass
	}
	if se, ok := AsStageError(err); ok {
		return se.Verdict
	}
	return VerdictError
}

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
	// Msg says plainly what was wrong, or why the export was dropped; it
	// is the answer's "error" (or "reason").
	Msg string
	// Violations lists schema violations (422), at most the stage's limit.
	Violations []Violation
	// ViolationsTotal is how many violations were found when Violations
	// was cut short: a lower bound when the check stopped early. 0 when
	// Violations lists them all.
	ViolationsTotal int
	// ViolationsTruncated says Violations is not the whole list.
	ViolationsTruncated bool
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

// Drop stops the export on purpose; the caller is answered 200
// {"status":"filtered","reason":...}, so it does not retry.
func Drop(format string, args ...any) error {
	return &StageError{Verdict: VerdictDrop, Status: http.StatusOK, Msg: fmt.Sprintf(format, args...)}
}

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
