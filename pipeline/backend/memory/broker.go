package memory

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// Broker is watermill's gochannel with a queue in front of each topic.
//
// gochannel hands a subscriber every message at once and holds each one in
// a goroutine until it is acknowledged; the router adds a goroutine per
// message too. A backlog of thousands (a vendor down for a minute) would
// be thousands of goroutines the collector scans on every cycle. So the
// broker keeps each topic's messages in a plain FIFO, and hands gochannel
// at most the topic's window at once: the concurrency its consumer asked
// for in Workers (a sink's max_in_flight, broker.fanout_workers). A
// waiting message costs its bytes, nothing more, and one topic's backlog
// never delays another's.
//
// Workers returns a single subscriber: gochannel's subscriber already
// delivers concurrently, and a second one would receive a copy of every
// message. A topic has one consumer group (the engine never makes two);
// nothing is handed out before the topic has a subscriber.
//
// Admit bounds the exports waiting for the fan-out (broker.max_pending):
// an export is one unit, however many requests it fans out to. What the
// sinks' queues hold is bounded by the engine, per sink, from QueueStats.
// One slow sink never makes Admit wait; but when every sink has
// max_pending requests waiting, the vendors together are slower than the
// exports arriving, and Admit waits too, so that an overload slows the
// callers down instead of piling up latency in every queue.
type Broker struct {
	gc        *gochannel.GoChannel
	admission *admission
	closing   chan struct{}
	closeOnce sync.Once

	pending atomic.Int64 // messages published and not acknowledged, all topics
	exports atomic.Int64 // of which on TopicExports: what Admit bounds

	mu     sync.Mutex
	topics map[string]*queue
}

// queue is one topic's messages: those waiting, in publish order, and
// those handed to the subscriber and not yet acknowledged.
type queue struct {
	window     int // most messages handed out at once
	subscribed bool
	waiting    []entry
	out        map[string]entry // by message UUID
	bytes      int64
}

type entry struct {
	msg  *message.Message
	at   time.Time
	size int64
}

// defaultWindow is the hand-out of a topic subscribed without Workers.
const defaultWindow = 16

// NewBroker returns a broker that lets at most maxPending exports wait for
// the fan-out before Admit makes callers wait.
func NewBroker(maxPending int64, logger watermill.LoggerAdapter) *Broker {
	b := &Broker{
		// PreserveContext lets the decoded payload ride along in process,
		// so the fan-out does not parse the export a second time.
		gc:      gochannel.NewGoChannel(gochannel.Config{PreserveContext: true}, logger),
		closing: make(chan struct{}),
		topics:  map[string]*queue{},
	}
	b.admission = &admission{max: maxPending, pending: b.load}
	return b
}

// Publish queues msgs on topic and hands out what the window allows.
func (b *Broker) Publish(topic string, msgs ...*message.Message) error {
	select {
	case <-b.closing:
		return errors.New("memory broker: closed")
	default:
	}
	now := time.Now()
	b.mu.Lock()
	q := b.queue(topic)
	for _, m := range msgs {
		e := entry{msg: m, at: now, size: messageSize(m)}
		q.waiting = append(q.waiting, e)
		q.bytes += e.size
	}
	b.pending.Add(int64(len(msgs)))
	if topic == backend.TopicExports {
		b.exports.Add(int64(len(msgs)))
	}
	out := q.handOut()
	b.mu.Unlock()
	return b.send(topic, out)
}

// load is what Admit weighs: the exports waiting for the fan-out, or
// max_pending when every sink is that far behind.
func (b *Broker) load() int64 {
	n := b.exports.Load()
	if n >= b.admission.max {
		return n
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	sinks := 0
	for topic, q := range b.topics {
		if !strings.HasPrefix(topic, sinkTopicPrefix) {
			continue
		}
		if int64(len(q.waiting)+len(q.out)) < b.admission.max {
			return n
		}
		sinks++
	}
	if sinks == 0 {
		return n
	}
	return b.admission.max
}

var sinkTopicPrefix = backend.TopicSink("")

// queue returns topic's queue, made on first use; b.mu is held.
func (b *Broker) queue(topic string) *queue {
	q := b.topics[topic]
	if q == nil {
		q = &queue{window: defaultWindow, out: map[string]entry{}}
		b.topics[topic] = q
	}
	return q
}

// handOut moves waiting messages out while the window has room; the
// broker's mu is held.
func (q *queue) handOut() []*message.Message {
	if !q.subscribed {
		return nil
	}
	var msgs []*message.Message
	for len(q.waiting) > 0 && len(q.out) < q.window {
		e := q.waiting[0]
		q.waiting[0] = entry{}
		q.waiting = q.waiting[1:]
		q.out[e.msg.UUID] = e
		msgs = append(msgs, e.msg)
	}
	if len(q.waiting) == 0 {
		q.waiting = nil // let the backlog's array go
	}
	return msgs
}

func (b *Broker) send(topic string, msgs []*message.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	if err := b.gc.Publish(topic, msgs...); err != nil {
		for _, m := range msgs {
			b.finish(topic, m.UUID)
		}
		return fmt.Errorf("memory broker: publish %s: %w", topic, err)
	}
	return nil
}

// finish takes an acknowledged message off its queue, hands out the next
// one, and lets a waiting webhook request in when an export left.
func (b *Broker) finish(topic, uuid string) {
	b.mu.Lock()
	q := b.topics[topic]
	e, ok := q.out[uuid]
	if !ok { // a second group's ack of a message already finished
		b.mu.Unlock()
		return
	}
	delete(q.out, uuid)
	q.bytes -= e.size
	next := q.handOut()
	b.mu.Unlock()
	b.pending.Add(-1)
	if topic == backend.TopicExports {
		b.exports.Add(-1)
	}
	b.admission.wake()
	_ = b.send(topic, next) // fails only once closed: what is left is lost, and Drain says so
}

// Workers sets topic's window to n and returns one subscriber; see Broker.
func (b *Broker) Workers(topic, _ string, n int) ([]message.Subscriber, error) {
	b.mu.Lock()
	b.queue(topic).window = max(n, 1)
	b.mu.Unlock()
	return []message.Subscriber{subscriber{b}}, nil
}

// Admit waits in arrival order for fewer than max_pending exports to be
// waiting for the fan-out.
func (b *Broker) Admit(ctx context.Context, wait time.Duration) (func(), bool) {
	return b.admission.admit(ctx, wait)
}

// QueueStats reports topic's messages published by this process and not
// yet acknowledged, with their bytes; there is one consumer group per
// topic.
func (b *Broker) QueueStats(_ context.Context, topic, _ string) (backend.QueueStat, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	q := b.topics[topic]
	if q == nil {
		return backend.QueueStat{}, nil
	}
	st := backend.QueueStat{Depth: int64(len(q.waiting) + len(q.out)), Bytes: q.bytes}
	if len(q.waiting) > 0 {
		st.Oldest = q.waiting[0].at
	}
	for _, e := range q.out {
		if st.Oldest.IsZero() || e.at.Before(st.Oldest) {
			st.Oldest = e.at
		}
	}
	return st, nil
}

// unfinishedIDs lists up to max unfinished messages as topic/id (for a
// sink request the id is its idempotency key, export.sink.chunk).
func (b *Broker) unfinishedIDs(max int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var ids []string
	total := 0
	for topic, q := range b.topics {
		total += len(q.out) + len(q.waiting)
		for id := range q.out {
			ids = append(ids, topic+"/"+id)
		}
		for _, e := range q.waiting {
			if len(ids) >= 10*max {
				break
			}
			ids = append(ids, topic+"/"+e.msg.UUID)
		}
	}
	slices.Sort(ids)
	if len(ids) > max {
		ids = ids[:max]
	}
	s := strings.Join(ids, ", ")
	if total > len(ids) {
		s += fmt.Sprintf(" and %d more", total-len(ids))
	}
	return s
}

// Drain waits until every published message is acknowledged: what is left
// when the process ends is lost.
func (b *Broker) Drain(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		n := b.pending.Load()
		if n <= 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d messages undelivered (memory broker: they are lost): %s", n, b.unfinishedIDs(20))
		case <-t.C:
		}
	}
}

// Info says the broker is not durable.
func (b *Broker) Info() backend.Info {
	return backend.Info{System: "gochannel", Durable: false,
		Warning: "broker is memory: exports accepted but not yet delivered are lost if the process dies; use broker.type redis in production"}
}

// Risks is the broker's warning: messages live in this process only.
func (b *Broker) Risks(context.Context) []string { return []string{b.Info().Warning} }

// Ready is always nil: there is nothing outside the process to reach.
func (b *Broker) Ready(context.Context) error { return nil }

// Close closes the gochannel; safe twice.
func (b *Broker) Close() error {
	var err error
	b.closeOnce.Do(func() {
		close(b.closing)
		err = b.gc.Close()
	})
	return err
}

// messageSize is what a queued message holds: payload and metadata.
func messageSize(m *message.Message) int64 {
	n := len(m.Payload) + len(m.UUID)
	for k, v := range m.Metadata {
		n += len(k) + len(v)
	}
	return int64(n)
}

// subscriber relays gochannel's messages and watches each one's ack, so
// the broker counts finished messages without the handlers' help. Its
// Close leaves the gochannel open: the publisher shares it, and the broker
// closes it once.
type subscriber struct{ b *Broker }

func (s subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	in, err := s.b.gc.Subscribe(ctx, topic)
	if err != nil {
		return nil, err
	}
	out := make(chan *message.Message)
	go func() {
		defer close(out)
		for m := range in {
			go s.b.watch(topic, m)
			select {
			case out <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	// Only now may the queue hand out: gochannel drops a message published
	// to a topic nobody subscribes to.
	s.b.mu.Lock()
	q := s.b.queue(topic)
	q.subscribed = true
	first := q.handOut()
	s.b.mu.Unlock()
	return out, s.b.send(topic, first)
}

// watch finishes m when it is acknowledged. A nacked message is sent
// again by gochannel as a fresh copy, which is watched in turn.
func (b *Broker) watch(topic string, m *message.Message) {
	select {
	case <-m.Acked():
		b.finish(topic, m.UUID)
	case <-m.Nacked():
	case <-b.closing:
	}
}

func (s subscriber) Close() error { return nil }

var _ backend.Broker = (*Broker)(nil)
