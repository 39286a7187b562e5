package backend

import (
	"context"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Request states an export history shows. Delivered is not stored in the
// history: it is read from the request's delivery record (Ledger), so that
// the happy path writes nothing besides the record it already writes.
const (
	StateQueued       = "queued"
	StateDelivering   = "delivering"
	StateDelivered    = "delivered"
	StateDeadLettered = "dead_lettered"
	StateSkipped      = "skipped"
)

// ExportEntry is one accepted export as the history keeps it.
type ExportEntry struct {
	ID         string    `json:"id"`
	ReceivedAt time.Time `json:"received_at"`
	Event      string    `json:"event"`
	Project    string    `json:"project,omitempty"`
	IssueID    string    `json:"issue_id,omitempty"`
	TraceID    string    `json:"trace_id,omitempty"`
	Key        string    `json:"export_key,omitempty"`
	// Payload is the export as it was published, for a resend.
	Payload []byte `json:"payload,omitempty"`
	// PayloadDropped says the export was too large to keep for a resend
	// (history.max_payload_bytes).
	PayloadDropped bool `json:"payload_dropped,omitempty"`
	// Generation counts resends; 0 for the first delivery.
	Generation int `json:"generation,omitempty"`
	// QueuedAt is when each generation's fan-out queued the export's
	// requests, by generation. Add merges it into the kept one, so that
	// a resend's fan-out keeps the earlier generations' times.
	QueuedAt map[int]time.Time `json:"-"`
	// Requests are the export's requests by "<sink>.<chunk>" (a chunk of
	// -1: the sink skipped or could not render it). Delivered and attempts
	// are not here: they are the ledger's.
	Requests map[string]RequestState `json:"requests,omitempty"`
}

// RequestState is what the history adds to a request's delivery record.
type RequestState struct {
	Sink   string `json:"sink"`
	Chunk  int    `json:"chunk"`
	Chunks int    `json:"chunks,omitempty"`
	State  string `json:"state"`
	// Generation is the delivery generation the state is of; the ledger
	// record of generation g > 0 is under DeliveryKey{ExportID: id~g<g>}.
	Generation int `json:"generation,omitempty"`
	// Attempts is the attempts made when the state was saved; the
	// ledger's record has them while the request is retried.
	Attempts int    `json:"attempts,omitempty"`
	Status   int    `json:"status,omitempty"`
	Error    string `json:"error,omitempty"`
	// IdempotencyKey is the key the vendor receives.
	IdempotencyKey string `json:"idempotency_key,omitempty"`
	// Events are the request's failures, oldest first, the last
	// MaxRequestEvents of them: SetState appends its state's, Add keeps
	// them (and ignores its requests'), so that they outlive a resend.
	// Being queued and delivered are not here: the export's QueuedAt and
	// the ledger's record have their times.
	Events []RequestEvent `json:"events,omitempty"`
}

// Request events a timeline shows.
const (
	EventQueued        = "queued"
	EventResent        = "resent"
	EventAttemptFailed = "attempt_failed"
	EventDeadLettered  = "dead_lettered"
	EventDelivered     = "delivered"
	EventSkipped       = "skipped"
)

// MaxRequestEvents bounds a request's kept events: a vendor down for an
// hour fails many attempts, and the last ones tell what happened.
const MaxRequestEvents = 20

// RequestEvent is one change of a request's state.
type RequestEvent struct {
	At         time.Time `json:"at"`
	Event      string    `json:"event"`
	Generation int       `json:"generation,omitempty"`
	// Attempt is the attempt that failed, or how many a dead letter or a
	// delivery took.
	Attempt int    `json:"attempt,omitempty"`
	Status  int    `json:"status,omitempty"`
	Error   string `json:"error,omitempty"`
}

// HistoryKey is a request's field in ExportEntry.Requests.
func HistoryKey(sink string, chunk int) string {
	return DeliveryKey{Sink: sink, Chunk: chunk}.String()[1:]
}

// History keeps the index of accepted exports and the request states the
// delivery records lack, bounded by count and age.
type History interface {
	// Add stores e (its Requests and QueuedAt included), replacing an
	// entry of the same id but keeping its other requests' states, every
	// request's Events and the QueuedAt of other generations.
	Add(ctx context.Context, e *ExportEntry) error
	// SetState sets one request's state, if the export is still kept, and
	// appends s.Events to its events, keeping the last MaxRequestEvents.
	SetState(ctx context.Context, id string, s RequestState) error
	// Get returns the export with id; ok is false when it is not kept.
	Get(ctx context.Context, id string) (e *ExportEntry, ok bool, err error)
	// Scan calls fn with the exports received in [since, until] (zero:
	// unbounded), newest first, until fn returns false.
	Scan(ctx context.Context, since, until time.Time, fn func(*ExportEntry) bool) error
}

// EntryPublisher is a Broker that writes an export's history entry in the
// same round trip as a publish (Redis: one pipeline, the entry's commands
// first). The fan-out then pays no round trip of its own for the history,
// and the history still holds the export's requests before any of them is
// on a queue. ok is false when it cannot for h (a history it does not
// share a client with): the caller then Adds and Publishes separately.
// histErr is the entry's write failing, which costs the export nothing;
// err is the publish failing.
type EntryPublisher interface {
	PublishWithEntry(h History, e *ExportEntry, topic string, msgs ...*message.Message) (ok bool, histErr, err error)
}

// HistoryBackend is a Backend that keeps an export history.
type HistoryBackend interface {
	History(maxExports int, ttl time.Duration) History
}
