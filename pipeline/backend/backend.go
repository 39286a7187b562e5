// Package backend holds the contracts between labelpipe's engine and the
// storage it runs on: the message broker, the dead-letter queue, the
// delivery ledger, the dedupe store and the shared circuit-breaker store.
// Each backend kind (memory, redis, or one an embedder registers) provides
// all of them behind Backend, so the engine never asks which kind it has.
// The implementations live in subpackages (memory, redis), and
// backendtest is the conformance suite every implementation passes.
//
// # How an export moves through a broker
//
// The webhook publishes each accepted export to TopicExports. The fan-out
// consumes it and publishes one message per request of every sink that
// wants it on TopicSink(name); the sink's handlers consume those, in
// consumer group SinkGroup(name). Trace context and the export's facts ride
// in message metadata (the Meta* keys). A request the sink gives up on is
// kept in the DLQ until an operator replays or purges it.
//
// # Contracts the next steps build on
//
// These shapes are decided here so that later work fills them in rather
// than adding parallel state. Only what exists today is implemented.
//
//   - Publish once under a key. A dedupe reservation is provisional until
//     the export is on the broker (DedupeStore.Reserve, then Confirm), so a
//     crash between them leaves a hold that lapses, never a key that
//     answers "duplicate" for an export that is not on the broker. A
//     backend that can make the reservation and the publish one atomic
//     step (a Lua script on Redis) may do so later; that is why a backend
//     owns its dedupe store, and why the Redis store's keys are to share
//     the exports stream's hash tag, so that one script may touch both on
//     a Redis Cluster. Vendor idempotency keys are to derive from the
//     dedupe key rather than the arrival id, so that an export accepted
//     again after such a crash maps to the same vendor task.
//   - One delivery record per (export, sink, chunk), named by DeliveryKey
//     and owned by the backend's Ledger. It says whether the request was
//     delivered, how far its retries got (so that the retry budget holds
//     across restarts) and the steps a multi-step sink checkpointed
//     (create a task, then attach files: DeliveryRecord.Steps), so that a
//     retry or a restart resumes after the last finished step. The state
//     an export history shows is to be a field of the same record, not a
//     store of its own.
//   - Admission and queue statistics belong to the broker. A broker that
//     buffers in process bounds the exports waiting for the fan-out and
//     makes the webhook wait (Admit); one that keeps its queue elsewhere
//     admits at once. Each sink's queue is bounded by the engine from
//     QueueStats (the sink's queue: settings), alike on every broker, so
//     that one slow vendor holds up neither intake nor the other sinks.
package backend

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/sony/gobreaker/v2"
)

// TopicExports is the topic every accepted export is published to.
const TopicExports = "exports"

// TopicSink is the queue of one sink's requests.
func TopicSink(sink string) string { return "sink." + sink }

// TopicDLQ names one sink's dead-letter queue.
func TopicDLQ(sink string) string { return "dlq." + sink }

// SinkGroup is the consumer group that delivers one sink's requests.
func SinkGroup(sink string) string { return "sink-" + sink }

// FanoutGroup is the consumer group that fans exports out to the sinks.
const FanoutGroup = "fanout"

// Message metadata keys on the exports and sink topics.
const (
	MetaExportID = "export_id"
	// MetaExportKey names the export by its content (pipeline.Export.Key);
	// vendor idempotency keys derive from it.
	MetaExportKey  = "export_key"
	MetaReceivedAt = "received_at"
	MetaEvent      = "event"
	MetaProject    = "project"
	MetaIssueID    = "issue_id"
	MetaSink       = "sink"
	MetaChunk      = "chunk"
	MetaChunks     = "chunks"
	// MetaOnlySink, on an exports message, limits the fan-out to one sink;
	// a replayed render failure carries it.
	MetaOnlySink = "only_sink"
	// MetaReplayTopic, on a dead letter's message, names the topic a
	// replay publishes it to when that is not the sink's queue (a render
	// failure goes back to TopicExports).
	MetaReplayTopic = "replay_topic"
)

// Backend is one kind of storage: it provides the broker and the stores
// the engine and the stages need. All methods are safe for concurrent use.
type Backend interface {
	// Broker returns the message broker, opening it on the first call.
	// The engine calls it only on the backend that broker.type names.
	Broker() (Broker, error)
	// DLQ keeps the dead letters of the broker's sinks.
	DLQ() DLQ
	// Ledger keeps the delivery records.
	Ledger() Ledger
	// DedupeStore returns a store keeping dedupe keys under prefix: a
	// reservation is held provisionally for hold, and once confirmed for
	// ttl. Whether stores share keys is the backend's: Redis stores with
	// the same prefix share them across replicas, memory stores are each
	// private to their stage.
	DedupeStore(prefix string, ttl, hold time.Duration) (DedupeStore, error)
	// BreakerStore shares circuit-breaker state between replicas; nil
	// when the backend cannot (each process then keeps its own).
	BreakerStore() gobreaker.SharedDataStore
	// Close releases what the backend opened, the broker included. It is
	// safe to call twice.
	Close() error
}

// Broker carries messages between the ingress and the handlers. It owns
// its buffering: how much it holds, when the webhook must wait, and how far
// behind each queue is.
type Broker interface {
	message.Publisher
	// Workers returns up to n subscribers that share topic's messages
	// within group: each message goes to one of them. A broker whose
	// subscriber delivers concurrently may return fewer, and should then
	// hand the group at most n unacknowledged messages at once, so that
	// what waits stays in its queue rather than in handler goroutines.
	Workers(topic, group string, n int) ([]message.Subscriber, error)
	// Admit waits up to wait for room to publish one export on
	// TopicExports, and reports whether it got it. done, called once the
	// export is published (or given up), hands the room back. An export
	// is one unit however many requests it fans out to, and what waits on
	// sink topics never holds it up: the engine bounds each sink's queue
	// itself (QueueStats). A broker whose queue lives outside the process
	// admits at once.
	Admit(ctx context.Context, wait time.Duration) (done func(), ok bool)
	// QueueStats reports how far behind group is on topic, across every
	// replica when the broker can see them.
	QueueStats(ctx context.Context, topic, group string) (QueueStat, error)
	// Drain waits until no message this process published is left
	// unfinished, or ctx ends. A durable broker keeps them for the next
	// start and returns at once. The error says what was left.
	Drain(ctx context.Context) error
	// Info describes the broker for logs and spans.
	Info() Info
	// Ready reports whether the broker can take messages now.
	Ready(ctx context.Context) error
	// Risks says how messages the broker took could still be lost (a
	// broker in process memory, a Redis that persists nothing or evicts).
	// They do not make the broker unready: failing readiness on them would
	// take every replica out of service at once.
	Risks(ctx context.Context) []string
	// Close releases the broker; safe to call twice.
	Close() error
}

// Info describes a broker.
type Info struct {
	// System is the messaging.system span attribute, e.g. "redis".
	System string
	// Durable says a published message survives a crash of the process.
	Durable bool
	// Warning, when set, is logged once at start (a broker that loses
	// messages on a crash says so).
	Warning string
}

// QueueStat is how far behind one consumer group of a topic is.
type QueueStat struct {
	// Depth is the messages published and not yet acknowledged: pending
	// (delivered to a consumer, not acked) plus not yet delivered.
	Depth int64
	// Oldest is when the oldest of them was published; zero when Depth is 0.
	Oldest time.Time
	// Bytes is what they hold (payloads and metadata), when the broker
	// can tell cheaply; 0 when it cannot (redis).
	Bytes int64
}

// DeadLetter is one request a sink gave up on.
type DeadLetter struct {
	// ID identifies the entry within its sink's DLQ; Add sets it.
	ID string `json:"id"`
	// Sink, ExportID and Chunk name the request; Chunk is -1 when the
	// sink could not render the export at all.
	Sink     string `json:"sink"`
	ExportID string `json:"export_id"`
	Chunk    int    `json:"chunk"`
	// Error says what went wrong.
	Error string `json:"error"`
	// Status is the vendor's last HTTP status, 0 when none was received.
	Status int `json:"status,omitempty"`
	// Answer is the start of the vendor's last answer body.
	Answer string `json:"answer,omitempty"`
	// Attempts is how many attempts were made.
	Attempts int `json:"attempts"`
	// TraceID is the trace of the delivery that gave up.
	TraceID string `json:"trace_id,omitempty"`
	// FailedAt is RFC 3339 with nanoseconds, UTC.
	FailedAt string `json:"failed_at"`
	// Message is the request as it was queued, for replay.
	Message *message.Message `json:"-"`
}

// DLQ stores dead letters so that an operator can list and replay them.
type DLQ interface {
	// Add stores d and sets d.ID.
	Add(ctx context.Context, d *DeadLetter) error
	// List returns up to limit entries of sink, oldest first (all when
	// limit ≤ 0).
	List(ctx context.Context, sink string, limit int) ([]*DeadLetter, error)
	// Take removes and returns the entries with the given ids (all when
	// ids is empty). Unknown ids are ignored.
	Take(ctx context.Context, sink string, ids []string) ([]*DeadLetter, error)
	// Len is the number of entries of sink.
	Len(ctx context.Context, sink string) (int64, error)
}

// DeliveryKey names one request: the Chunk-th of an export's requests to
// a sink. It is the key of the request's delivery record and of the
// vendor's idempotency key, so it never changes on redelivery.
type DeliveryKey struct {
	ExportID string
	Sink     string
	Chunk    int
}

// String is "<export>.<sink>.<chunk>".
func (k DeliveryKey) String() string {
	return k.ExportID + "." + k.Sink + "." + strconv.Itoa(k.Chunk)
}

// Ledger keeps one delivery record per (export, sink, chunk): whether the
// request succeeded, so that a redelivery after a crash skips it; how far
// its retries got, so that retry.max_attempts and retry.max_elapsed mean
// what they say across restarts; and the steps a multi-step sink finished,
// so that a retry or a restart does not repeat them. Records expire after
// LedgerTTL.
type Ledger interface {
	// Lookup returns key's record, its steps included, in one read; the
	// zero record when there is none.
	Lookup(ctx context.Context, key DeliveryKey) (DeliveryRecord, error)
	// LookupMany returns the records of keys, in their order, in one read
	// however many there are (the export history lists a page of them),
	// with Leased set.
	LookupMany(ctx context.Context, keys []DeliveryKey) ([]DeliveryRecord, error)
	// Record marks key's request as delivered after r.Attempts attempts,
	// at r.DeliveredAt (now when zero), and ends a lease on it; r's other
	// fields are ignored. The count and the time go in the same write as
	// the mark: a request delivered on its first try has no attempts saved
	// (SaveAttempts follows failures only), and still shows one.
	Record(ctx context.Context, key DeliveryKey, r DeliveryRecord) error
	// SaveAttempts records how far key's retries got (its Attempts,
	// Spent and Elapsed; Delivered and Steps are ignored).
	SaveAttempts(ctx context.Context, key DeliveryKey, r DeliveryRecord) error
	// SaveStep sets step name of key's record to value, keeping its other
	// steps, and renews the steps' expiry to LedgerTTL (the ledger's ttl)
	// from now. Steps outlive Record until that expiry, so that a delivered
	// record still tells what its steps made (a vendor's task id), and
	// they never reset the attempts.
	SaveStep(ctx context.Context, key DeliveryKey, name, value string) error
	// Lease makes the caller the only one, across every process sharing
	// the ledger, sending key's request: two copies of one request on the
	// broker (a redelivery next to its original after a restart) must not
	// both pass Lookup before either Records. ok is false when another
	// holder has it. The lease is renewed while ctx lasts and ends with
	// release (safe to call twice) or with Record; a holder that dies or
	// whose ctx ends loses it after ttl. An error means the ledger could
	// not tell; the caller then delivers anyway (at-least-once).
	Lease(ctx context.Context, key DeliveryKey, ttl time.Duration) (release func(), ok bool, err error)
}

// DeliveryRecord is one request's delivery record.
type DeliveryRecord struct {
	// Delivered says the request succeeded.
	Delivered bool
	// Attempts is every attempt made so far, circuit-breaker probes
	// included (once delivered, every attempt it took); Spent is those
	// that count towards retry.max_attempts.
	Attempts, Spent int
	// DeliveredAt is when the request was delivered; zero when it was not
	// (or was recorded before the time was kept).
	DeliveredAt time.Time
	// Leased says a copy of the request is being sent now. Only
	// LookupMany reports it: Lookup is the sender's own read, made under
	// its own lease.
	Leased bool
	// Elapsed is the time that counts towards retry.max_elapsed: time
	// spent trying, not time no process was trying (a restart, an outage
	// of the daemon) nor time behind an open breaker.
	Elapsed time.Duration
	// Steps are the checkpoints a multi-step sink saved (SaveStep), by
	// step name; nil when none was saved. Lookup returns a map of the
	// caller's own: changing it changes nothing in the ledger.
	Steps map[string]string
}

// LedgerTTL is how long a delivery record is kept: longer than any message
// can wait for redelivery.
const LedgerTTL = 7 * 24 * time.Hour

// DedupeStore remembers dedupe keys. Each key is held by the id of the
// export that reserved it, in two steps, so that a key never promises an
// export that is not on the broker: Reserve holds it provisionally, for the
// store's hold (long enough to publish the export; a crash before the
// publish lets it lapse), and Confirm, called once the export is on the
// broker, keeps it for the store's ttl. A provisional hold answers a
// repeat with "try again shortly", a confirmed one with "duplicate".
type DedupeStore interface {
	// Reserve holds key for id, provisionally, unless the key is already
	// held. It returns the hold in force and whether this call made it.
	Reserve(ctx context.Context, key, id string) (h Hold, reserved bool, err error)
	// Confirm makes id's hold on key final, for the store's ttl. It fails
	// with ErrHoldLost when id no longer holds the key (the provisional
	// hold lapsed and another export took it).
	Confirm(ctx context.Context, key, id string) error
	// Holder returns the hold on key, if any, and changes nothing.
	Holder(ctx context.Context, key string) (h Hold, held bool, err error)
	// Release forgets key if id still holds it, confirmed or not.
	Release(ctx context.Context, key, id string) error
}

// Hold is who holds a dedupe key, and whether the hold is confirmed (the
// export is on the broker) or provisional (it is being stored).
type Hold struct {
	ID        string
	Confirmed bool
}

// ErrHoldLost is Confirm's error when the export no longer holds the key.
var ErrHoldLost = errors.New("dedupe key is no longer held by this export")

// MetaGeneration, on an exports or sink message, is the delivery
// generation of a resend (1, 2, …); absent for the first delivery. A
// request of generation g has its own delivery record, so it is delivered
// again even though the first generation's record says done.
const MetaGeneration = "generation"
