package memory_test

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/labelpipe/labelpipe/pipeline/backend"
	"github.com/labelpipe/labelpipe/pipeline/backend/memory"
)

// A backlog waits in the topic's queue, not in goroutines: with a vendor
// down, thousands of requests must cost their bytes only. The broker hands
// the subscriber at most the window Workers asked for, and the next one
// only after an ack.
func TestBacklogWaitsInTheQueueNotInGoroutines(t *testing.T) {
	const window, backlog = 4, 5000
	br := memory.NewBroker(8, nil)
	t.Cleanup(func() { _ = br.Close() })
	topic := backend.TopicSink("scale")
	subs, err := br.Workers(topic, backend.SinkGroup("scale"), window)
	if err != nil || len(subs) != 1 {
		t.Fatalf("Workers: %d subscribers, %v; want 1", len(subs), err)
	}
	in, err := subs[0].Subscribe(t.Context(), topic)
	if err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	for i := range backlog {
		if err := br.Publish(topic, message.NewMessage(fmt.Sprintf("m%05d", i), []byte(`{"n":1}`))); err != nil {
			t.Fatal(err)
		}
	}
	var held []*message.Message
	for range window {
		held = append(held, <-in)
	}
	select {
	case m := <-in:
		t.Fatalf("got message %s beyond the window of %d with none acked", m.UUID, window)
	case <-time.After(100 * time.Millisecond): // proving an absence
	}
	if extra := runtime.NumGoroutine() - before; extra > 10*window {
		t.Errorf("%d goroutines more with %d messages queued; want a few per handed-out message (window %d)", extra, backlog, window)
	}
	st, err := br.QueueStats(t.Context(), topic, "")
	if err != nil || st.Depth != backlog || st.Bytes < backlog*int64(len(`{"n":1}`)) || st.Oldest.IsZero() {
		t.Fatalf("QueueStats: %+v, %v; want depth %d with its bytes and oldest time", st, err, backlog)
	}
	// Each ack lets exactly one more out, in publish order.
	held[0].Ack()
	if m := <-in; m.UUID != fmt.Sprintf("m%05d", window) {
		t.Fatalf("after an ack got %s, want the next in publish order m%05d", m.UUID, window)
	}
	// One sink's backlog never holds up intake while another keeps up
	// (max_pending 8 ≪ backlog).
	other := backend.TopicSink("labelbox")
	if _, err := br.Workers(other, backend.SinkGroup("labelbox"), window); err != nil {
		t.Fatal(err)
	}
	done, ok := br.Admit(t.Context(), 0)
	if !ok {
		t.Fatal("Admit refused while only one sink's queue holds messages")
	}
	done()
}

// When every sink is max_pending requests behind, the vendors together
// are slower than the exports arriving: Admit waits, and lets a caller in
// as soon as one sink catches up.
func TestAdmitWaitsWhenEverySinkIsBehind(t *testing.T) {
	const maxPending = 4
	br := memory.NewBroker(maxPending, nil)
	t.Cleanup(func() { _ = br.Close() })
	var ins []<-chan *message.Message
	for _, sink := range []string{"scale", "labelbox"} {
		topic := backend.TopicSink(sink)
		subs, err := br.Workers(topic, backend.SinkGroup(sink), 1)
		if err != nil {
			t.Fatal(err)
		}
		in, err := subs[0].Subscribe(t.Context(), topic)
		if err != nil {
			t.Fatal(err)
		}
		ins = append(ins, in)
		for i := range maxPending {
			if err := br.Publish(topic, message.NewMessage(fmt.Sprintf("%s-%d", sink, i), []byte("{}"))); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, ok := br.Admit(t.Context(), 50*time.Millisecond); ok {
		t.Fatal("Admit let a caller in with every sink max_pending behind")
	}
	waiter := make(chan bool, 1)
	go func() {
		done, ok := br.Admit(t.Context(), time.Minute)
		if ok {
			done()
		}
		waiter <- ok
	}()
	(<-ins[1]).Ack() // labelbox catches up by one
	if !<-waiter {
		t.Fatal("Admit gave up after a sink caught up")
	}
}
