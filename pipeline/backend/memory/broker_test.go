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
	// Sink requests never hold up intake (max_pending 8 ≪ backlog).
	done, ok := br.Admit(t.Context(), 0)
	if !ok {
		t.Fatal("Admit refused while only a sink's queue holds messages")
	}
	done()
}
