package pipeline

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

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
	// Workers returns n subscribers that share topic's messages within
	// group: each message goes to one of them, so n is the concurrency.
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

// memoryBroker is watermill's gochannel. gochannel gives every subscriber
// every message, so Workers gives each worker a lane of its own and
// Publish deals messages round-robin over a topic's lanes.
type memoryBroker struct {
	gc    *gochannel.GoChannel
	mu    sync.RWMutex
	lanes map[string]*lanes
}

type lanes struct {
	n    int
	next atomic.Uint64
}

func newMemoryBroker(logger watermill.LoggerAdapter) *memoryBroker {
	return &memoryBroker{
		// PreserveContext lets the decoded payload ride along in process,
		// so the fan-out does not parse the export a second time.
		gc:    gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 64, PreserveContext: true}, logger),
		lanes: map[string]*lanes{},
	}
}

func laneTopic(topic string, i int) string { return fmt.Sprintf("%s#%d", topic, i) }

func (b *memoryBroker) Publish(topic string, msgs ...*message.Message) error {
	b.mu.RLock()
	l := b.lanes[topic]
	b.mu.RUnlock()
	if l == nil {
		return b.gc.Publish(topic, msgs...)
	}
	for _, m := range msgs {
		i := int(l.next.Add(1) % uint64(l.n))
		if err := b.gc.Publish(laneTopic(topic, i), m); err != nil {
			return err
		}
	}
	return nil
}

func (b *memoryBroker) Workers(topic, _ string, n int) ([]message.Subscriber, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, dup := b.lanes[topic]; dup {
		return nil, fmt.Errorf("memory broker: %s already has workers", topic)
	}
	b.lanes[topic] = &lanes{n: n}
	subs := make([]message.Subscriber, n)
	for i := range subs {
		subs[i] = laneSubscriber{gc: b.gc, lane: i}
	}
	return subs, nil
}

func (b *memoryBroker) Durable() bool                   { return false }
func (b *memoryBroker) Ready(ctx context.Context) error { return nil }
func (b *memoryBroker) Close() error                    { return b.gc.Close() }

type laneSubscriber struct {
	gc   *gochannel.GoChannel
	lane int
}

func (s laneSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	return s.gc.Subscribe(ctx, laneTopic(topic, s.lane))
}

// Close is a no-op: the broker closes the shared gochannel once.
func (s laneSubscriber) Close() error { return nil }
