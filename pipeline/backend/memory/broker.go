package memory

import (
	"context"
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

// Broker is watermill's gochannel with a bound on what it holds. gochannel
// hands a subscriber every message without waiting for the previous one's
// ack, so one subscriber per topic already delivers concurrently; the
// engine bounds the concurrency itself (max_in_flight). Workers therefore
// returns a single subscriber: a second one would receive a copy of every
// message.
//
// A topic has one consumer group (the engine never makes two), and a
// message published to a topic nobody subscribes to is dropped by
// gochannel but stays counted: the engine subscribes to every topic it
// publishes to before it accepts an export.
//
// The broker counts the messages published and not yet acknowledged. The
// webhook waits in Admit while that count is at max_pending, so an overload
// slows callers down instead of growing memory without end; the same
// count is what Drain waits for and what QueueStats reports.
type Broker struct {
	gc        *gochannel.GoChannel
	pending   atomic.Int64
	admission *admission
	closing   chan struct{}
	closeOnce sync.Once

	mu     sync.Mutex
	queued map[string]map[string]time.Time // topic → message UUID → when published
}

// NewBroker returns a broker holding at most maxPending unfinished
// messages before Admit makes callers wait.
func NewBroker(maxPending int64, logger watermill.LoggerAdapter) *Broker {
	b := &Broker{
		// PreserveContext lets the decoded payload ride along in process,
		// so the fan-out does not parse the export a second time.
		gc:      gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 64, PreserveContext: true}, logger),
		closing: make(chan struct{}),
		queued:  map[string]map[string]time.Time{},
	}
	b.admission = &admission{max: maxPending, pending: b.pending.Load}
	return b
}

// Publish hands msgs to the topic's subscriber and counts them as queued
// until they are acknowledged.
func (b *Broker) Publish(topic string, msgs ...*message.Message) error {
	b.pending.Add(int64(len(msgs)))
	b.note(topic, msgs, time.Now())
	if err := b.gc.Publish(topic, msgs...); err != nil {
		for _, m := range msgs {
			b.finish(topic, m.UUID)
		}
		return fmt.Errorf("memory broker: publish %s: %w", topic, err)
	}
	return nil
}

func (b *Broker) note(topic string, msgs []*message.Message, at time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	q := b.queued[topic]
	if q == nil {
		q = map[string]time.Time{}
		b.queued[topic] = q
	}
	for _, m := range msgs {
		q[m.UUID] = at
	}
}

// finish takes an acknowledged message off the count and lets a waiting
// webhook request in.
func (b *Broker) finish(topic, uuid string) {
	b.mu.Lock()
	delete(b.queued[topic], uuid)
	b.mu.Unlock()
	b.pending.Add(-1)
	b.admission.wake()
}

// Workers returns one subscriber; see Broker.
func (b *Broker) Workers(_, _ string, _ int) ([]message.Subscriber, error) {
	return []message.Subscriber{subscriber{b}}, nil
}

// Admit waits in arrival order for the count of unfinished messages to
// drop below max_pending.
func (b *Broker) Admit(ctx context.Context, wait time.Duration) (func(), bool) {
	return b.admission.admit(ctx, wait)
}

// QueueStats reports the messages of topic published by this process and
// not yet acknowledged; there is one consumer group per topic.
func (b *Broker) QueueStats(_ context.Context, topic, _ string) (backend.QueueStat, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	q := b.queued[topic]
	st := backend.QueueStat{Depth: int64(len(q))}
	for _, t := range q {
		if st.Oldest.IsZero() || t.Before(st.Oldest) {
			st.Oldest = t
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
	for topic, q := range b.queued {
		for id := range q {
			total++
			ids = append(ids, topic+"/"+id)
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
	return out, nil
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
