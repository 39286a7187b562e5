package backendtest

import (
	"bytes"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// newMessage is a message with a fresh UUID, a payload that is not text
// (a NUL and an invalid UTF-8 byte ride along) and the metadata the
// engine puts on sink requests.
func newMessage(label string) *message.Message {
	m := message.NewMessage(watermill.NewUUID(), []byte(`{"label":"`+label+"\"}\x00\xff"))
	m.Metadata.Set(backend.MetaExportID, "export-"+label)
	m.Metadata.Set(backend.MetaSink, "scale")
	m.Metadata.Set(backend.MetaChunk, "0")
	m.Metadata.Set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	return m
}

func newMessages(label string, n int) []*message.Message {
	out := make([]*message.Message, n)
	for i := range out {
		out[i] = newMessage(fmt.Sprintf("%s-%03d", label, i))
	}
	return out
}

// sameMessage fails unless got carries want's UUID, payload and metadata.
func sameMessage(t *testing.T, got, want *message.Message) {
	t.Helper()
	if got.UUID != want.UUID {
		t.Fatalf("message UUID %q, want %q", got.UUID, want.UUID)
	}
	if !bytes.Equal(got.Payload, want.Payload) {
		t.Fatalf("message %s: payload %q, want %q", want.UUID, got.Payload, want.Payload)
	}
	if !maps.Equal(got.Metadata, want.Metadata) {
		t.Fatalf("message %s: metadata %v, want %v", want.UUID, got.Metadata, want.Metadata)
	}
}

func byUUID(msgs []*message.Message) map[string]*message.Message {
	out := make(map[string]*message.Message, len(msgs))
	for _, m := range msgs {
		out[m.UUID] = m
	}
	return out
}

func openBroker(t *testing.T, b backend.Backend) backend.Broker {
	t.Helper()
	br, err := b.Broker()
	if err != nil {
		t.Fatalf("Broker: %v", err)
	}
	if br == nil {
		t.Fatal("Broker returned nil")
	}
	return br
}

func publish(t *testing.T, br backend.Broker, topic string, msgs ...*message.Message) {
	t.Helper()
	if err := br.Publish(topic, msgs...); err != nil {
		t.Fatalf("Publish %d messages to %s: %v", len(msgs), topic, err)
	}
}

// delivery is one message as a subscriber handed it over.
type delivery struct {
	msg    *message.Message
	worker int // index of the worker that got it
}

// inbox gathers the messages of every worker of one (topic, group)
// subscription into one channel. The relays end with the test's context.
type inbox struct {
	name    string
	workers int
	c       chan delivery
}

// subscribe asks for n workers of topic in group, checks the broker gave
// between 1 and n, subscribes each and relays what they hand over.
func subscribe(t *testing.T, br backend.Broker, topic, group string, n int) *inbox {
	t.Helper()
	subs, err := br.Workers(topic, group, n)
	if err != nil {
		t.Fatalf("Workers(%s, %s, %d): %v", topic, group, n, err)
	}
	if len(subs) < 1 || len(subs) > n {
		t.Fatalf("Workers(%s, %s, %d) returned %d subscribers, want 1..%d", topic, group, n, len(subs), n)
	}
	in := &inbox{name: topic + "/" + group, workers: len(subs), c: make(chan delivery)}
	ctx := t.Context()
	for i, s := range subs {
		if s == nil {
			t.Fatalf("Workers(%s, %s, %d): subscriber %d is nil", topic, group, n, i)
		}
		ch, err := s.Subscribe(ctx, topic)
		if err != nil {
			t.Fatalf("Subscribe %s (worker %d of group %s): %v", topic, i, group, err)
		}
		go func() {
			for m := range ch {
				select {
				case in.c <- delivery{msg: m, worker: i}:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	return in
}

// next waits for the next message of the subscription.
func (in *inbox) next(t *testing.T, what string) delivery {
	t.Helper()
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	select {
	case d := <-in.c:
		return d
	case <-timer.C:
		t.Fatalf("%s: no message on %s within %s", what, in.name, waitTimeout)
		return delivery{}
	}
}

// quiet fails if a message arrives within d.
func (in *inbox) quiet(t *testing.T, d time.Duration, why string) {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case got := <-in.c:
		t.Fatalf("%s: unexpected message %s (%s) on %s", why, got.msg.UUID, got.msg.Metadata.Get(backend.MetaExportID), in.name)
	case <-timer.C:
	}
}

// consumeAll receives until every message of want arrived once, acking
// each, and fails on a message not in want or one delivered twice. It
// returns how many each worker got.
func (in *inbox) consumeAll(t *testing.T, want []*message.Message) map[int]int {
	t.Helper()
	wanted := byUUID(want)
	seen := map[string]bool{}
	perWorker := map[int]int{}
	for len(seen) < len(wanted) {
		d := in.next(t, fmt.Sprintf("%d of %d messages", len(seen), len(wanted)))
		w, ok := wanted[d.msg.UUID]
		if !ok {
			t.Fatalf("message %s on %s was never published there", d.msg.UUID, in.name)
		}
		if seen[d.msg.UUID] {
			t.Fatalf("message %s (%s) delivered twice on %s though acked", d.msg.UUID, w.Metadata.Get(backend.MetaExportID), in.name)
		}
		sameMessage(t, d.msg, w)
		seen[d.msg.UUID] = true
		perWorker[d.worker]++
		d.msg.Ack()
	}
	return perWorker
}
