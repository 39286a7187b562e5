package pipeline

import (
	"cmp"
	"context"
	"fmt"
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
	// Body is the rendered request body (JSON).
	Body []byte
}

// Key names the request's delivery record: (export id, sink, chunk).
func (r *Request) Key() backend.DeliveryKey {
	return backend.DeliveryKey{ExportID: r.ExportID, Sink: r.Sink, Chunk: r.Chunk}
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
