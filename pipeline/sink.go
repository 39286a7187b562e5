package pipeline

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"strconv"
	"time"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// Request is one request a sink sends for an export: one chunk of what the
// sink's jq program yielded. Each request is delivered, retried and
// dead-lettered on its own.
type Request struct {
	// Sink is the sink's configured name.
	Sink string
	// ExportID is the export this request belongs to.
	ExportID string
	// ExportKey names the export by its content (Export.Key); empty for
	// a request queued before keys existed.
	ExportKey string
	// Chunk is the 0-based index of this request among the export's
	// requests to this sink; Chunks is how many there are.
	Chunk, Chunks int
	// Generation is the export's delivery generation: 0 for its first
	// delivery, g for the g-th resend (backend.MetaGeneration). Each
	// generation has its own delivery record.
	Generation int
	// Body is the rendered request body (JSON).
	Body []byte

	// steps are the request's checkpointed steps (Step, SaveStep), and
	// ledger where SaveStep keeps them; nil ledger keeps them in r alone.
	steps  map[string]string
	ledger backend.Ledger
}

// Step returns the value saved for step name of a multi-step delivery
// (create a task, then attach files): by an earlier attempt, or by a
// process that sent the request before a restart, since the engine loads
// the request's delivery record before the first attempt. ok is false
// when the step was never saved.
//
// Send's calls for one request never overlap, so a sink needs no lock
// around Step and SaveStep.
func (r *Request) Step(name string) (value string, ok bool) {
	value, ok = r.steps[name]
	return value, ok
}

// SaveStep checkpoints step name of a multi-step delivery in the request's
// delivery record (backend.Ledger.SaveStep), so that a retry, a redelivery
// to another replica and a restart see it with Step and skip the work it
// stands for. Call it as soon as the vendor confirmed the step. The value
// is kept in r even when the ledger fails, for the attempts this process
// still makes; the error says the checkpoint may not survive a restart.
// Steps expire with the record (backend.LedgerTTL). A sink that saves no
// step costs the engine nothing: the steps are read by the Lookup every
// delivery makes.
func (r *Request) SaveStep(ctx context.Context, name, value string) error {
	if r.steps == nil {
		r.steps = map[string]string{}
	}
	r.steps[name] = value
	if r.ledger == nil {
		return nil
	}
	if err := r.ledger.SaveStep(context.WithoutCancel(ctx), r.Key(), name, value); err != nil {
		return fmt.Errorf("checkpoint %s of %s: %w", name, r.Key(), err)
	}
	return nil
}

// Resume ties r's steps to l, starting from rec, r's record as l.Lookup
// returned it: Step then returns rec.Steps and SaveStep writes to l. The
// engine does this before delivering; an embedder or a test that calls a
// sink's Send itself can too. rec.Steps is not changed.
func (r *Request) Resume(l backend.Ledger, rec backend.DeliveryRecord) {
	r.ledger = l
	r.steps = maps.Clone(rec.Steps)
}

// Key names the request's delivery record: (export id, sink, chunk).
// A resend's generation g > 0 names a record of its own, with export id
// "<export id>~g<g>", so that it is delivered again.
func (r *Request) Key() backend.DeliveryKey {
	id := r.ExportID
	if r.Generation > 0 {
		id += "~g" + strconv.Itoa(r.Generation)
	}
	return backend.DeliveryKey{ExportID: id, Sink: r.Sink, Chunk: r.Chunk}
}

// IdempotencyKey is "<export key>.<sink>.<chunk>": derived from what the
// export is, not when it arrived, so a redelivery, and the same export
// accepted again, carry the same key, and a vendor that honours it does
// the work once.
func (r *Request) IdempotencyKey() string {
	return backend.DeliveryKey{ExportID: cmp.Or(r.ExportKey, r.ExportID), Sink: r.Sink, Chunk: r.Chunk}.String()
}

// Sink delivers rendered requests to one vendor.
type Sink interface {
	// Render turns an export's payload into the bodies of the requests the
	// sink sends, one per value its jq program yields. It is pure (no I/O):
	// preview calls it too. export is the `$export` value.
	Render(ctx context.Context, payload any, export map[string]any) ([][]byte, error)
	// Send makes one attempt at delivering r. A failure should be a
	// *DeliveryError so that retry knows what to do with it.
	Send(ctx context.Context, r *Request) error
}

// Describer is implemented by sinks that can say, for preview, what request
// they would make for a body (method, URL, headers with secrets redacted).
type Describer interface {
	Describe(r *Request) map[string]any
}

// DeliveryError is a failed attempt, classified.
type DeliveryError struct {
	// Status is the vendor's HTTP status, 0 when none was received.
	Status int
	// Retry says whether another attempt may succeed.
	Retry bool
	// After is the vendor's Retry-After, 0 when absent.
	After time.Duration
	// Msg says plainly what went wrong.
	Msg string
	// Answer is the start of the vendor's answer body, for the DLQ entry.
	Answer string
	// InProgress says the vendor took the work and is still doing it (an
	// asynchronous import the attempt ran out of time to follow): the
	// next attempt follows it. With Retry set, it spends no retry budget
	// (max_attempts, max_elapsed) and does not count against the breaker,
	// so the sink must bound how long it reports it.
	InProgress bool
}

func (e *DeliveryError) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("%s (status %d)", e.Msg, e.Status)
	}
	return e.Msg
}

// Retryable reports whether another attempt may succeed.
func (e *DeliveryError) Retryable() bool { return e.Retry }

// RetryAfter is the wait the vendor asked for.
func (e *DeliveryError) RetryAfter() time.Duration { return e.After }

// Pending reports whether the vendor is still doing the work (see
// InProgress); only a retryable error can be.
func (e *DeliveryError) Pending() bool { return e.InProgress && e.Retry }
