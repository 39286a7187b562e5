package pipeline

import (
	"context"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
)

// Topic names. Every export is published to TopicExports, fanned out to
// one TopicSink per matching sink, and dead-lettered to TopicDLQ.
const TopicExports = "exports"

// TopicSink is the queue of one sink's requests.
func TopicSink(sink string) string { return "sink." + sink }

// TopicDLQ is one sink's dead-letter queue.
func TopicDLQ(sink string) string { return "dlq." + sink }

// Broker carries messages between the ingress and the handlers.
type Broker interface {
	message.Publisher
	// Workers returns up to n subscribers that share topic's messages
	// within group: each message goes to one of them. A broker whose
	// subscriber delivers concurrently may return fewer; the pipeline
	// bounds concurrency itself.
	Workers(topic, group string, n int) ([]message.Subscriber, error)
	// Durable reports whether a published message survives a restart.
	Durable() bool
	// Ready reports whether the broker can take messages now.
	Ready(ctx context.Context) error
	// Close releases the broker; safe to call twice.
	Close() error
}

// DeadLetter is one request a sink gave up on.
type DeadLetter struct {
	// ID identifies the entry within its sink's DLQ.
	ID string `json:"id"`
	// Sink, ExportID and Chunk name the request.
	Sink     string `json:"sink"`
	ExportID string `json:"export_id"`
	Chunk    int    `json:"chunk"`
	// Error says what went wrong; Status is the vendor's last status.
	Error    string `json:"error"`
	Status   int    `json:"status,omitempty"`
	Answer   string `json:"answer,omitempty"`
	Attempts int    `json:"attempts"`
	TraceID  string `json:"trace_id,omitempty"`
	// FailedAt is RFC 3339.
	FailedAt string `json:"failed_at"`
	// Message is the request as it was queued, for replay.
	Message *message.Message `json:"-"`
}

// DLQ stores dead letters so that an operator can list and replay them.
type DLQ interface {
	Add(ctx context.Context, d *DeadLetter) error
	List(ctx context.Context, sink string, limit int) ([]*DeadLetter, error)
	// Take removes and returns the entries (all when ids is empty).
	Take(ctx context.Context, sink string, ids []string) ([]*DeadLetter, error)
	Len(ctx context.Context, sink string) (int64, error)
}

// Ledger remembers which (export, sink, chunk) requests were delivered, so
// a redelivery after a crash skips them.
type Ledger interface {
	Delivered(ctx context.Context, key string) (bool, error)
	Record(ctx context.Context, key string) error
}

// memoryBroker is watermill's gochannel. gochannel hands a subscriber
// every message without waiting for the previous one's ack, so one
// subscriber per topic already delivers concurrently; the pipeline bounds
// the concurrency itself (max_in_flight). Workers therefore returns a
// single subscriber: a second one would receive a copy of every message.
type memoryBroker struct {
	gc *gochannel.GoChannel
}

func newMemoryBroker(logger watermill.LoggerAdapter) *memoryBroker {
	return &memoryBroker{
		// PreserveContext lets the decoded payload ride along in process,
		// so the fan-out does not parse the export a second time.
		gc: gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 64, PreserveContext: true}, logger),
	}
}

func (b *memoryBroker) Publish(topic string, msgs ...*message.Message) error {
	return b.gc.Publish(topic, msgs...)
}

func (b *memoryBroker) Workers(_, _ string, _ int) ([]message.Subscriber, error) {
	return []message.Subscriber{sharedSubscriber{b.gc}}, nil
}

func (b *memoryBroker) Durable() bool                   { return false }
func (b *memoryBroker) Ready(ctx context.Context) error { return nil }
func (b *memoryBroker) Close() error                    { return b.gc.Close() }

// sharedSubscriber lets the router close its subscriber without closing
// the gochannel the publisher shares; the broker closes that once.
type sharedSubscriber struct{ gc *gochannel.GoChannel }

func (s sharedSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	return s.gc.Subscribe(ctx, topic)
}

func (s sharedSubscriber) Close() error { return nil }
