package memory_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/labelpipe/labelpipe/pipeline/backend"
	"github.com/labelpipe/labelpipe/pipeline/backend/memory"
)

// drainNow runs Drain with a context already done and returns its error,
// which names what is left undelivered.
func drainNow(t *testing.T, br *memory.Broker) string {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err := br.Drain(ctx)
	if err == nil {
		t.Fatal("Drain returned nil with messages left")
	}
	return err.Error()
}

func publishN(t *testing.T, br *memory.Broker, topic string, n int) {
	t.Helper()
	for i := range n {
		if err := br.Publish(topic, message.NewMessage(fmt.Sprintf("m%02d", i), []byte("{}"))); err != nil {
			t.Fatal(err)
		}
	}
}

// Drain lists the first 20 unfinished messages by id and counts the rest.
func TestDrainNamesTwentyAndCountsTheRest(t *testing.T) {
	br := memory.NewBroker(100, nil)
	t.Cleanup(func() { _ = br.Close() })
	topic := backend.TopicSink("scale")
	publishN(t, br, topic, 25)
	msg := drainNow(t, br)
	if !strings.HasPrefix(msg, "25 messages undelivered") {
		t.Errorf("Drain: %q, want it to start with the count", msg)
	}
	if !strings.Contains(msg, topic+"/m00, ") || !strings.Contains(msg, topic+"/m19 and 5 more") {
		t.Errorf("Drain: %q, want m00..m19 named and 5 more counted", msg)
	}
	if strings.Contains(msg, "/m20") {
		t.Errorf("Drain: %q names more than 20", msg)
	}
}

// With every unfinished message named there is nothing more to count.
func TestDrainNamesAFewWithoutAMore(t *testing.T) {
	br := memory.NewBroker(100, nil)
	t.Cleanup(func() { _ = br.Close() })
	topic := backend.TopicSink("scale")
	publishN(t, br, topic, 3)
	msg := drainNow(t, br)
	if !strings.HasSuffix(msg, topic+"/m00, "+topic+"/m01, "+topic+"/m02") {
		t.Errorf("Drain: %q, want the three ids and nothing after them", msg)
	}
}

// A queued message weighs its payload, its id and its metadata keys and
// values.
func TestQueueStatsBytesCountMetadata(t *testing.T) {
	br := memory.NewBroker(100, nil)
	t.Cleanup(func() { _ = br.Close() })
	topic := backend.TopicSink("scale")
	m := message.NewMessage("id-1", []byte("payload"))
	m.Metadata.Set("key", "value")
	if err := br.Publish(topic, m); err != nil {
		t.Fatal(err)
	}
	st, err := br.QueueStats(t.Context(), topic, backend.SinkGroup("scale"))
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(len("payload") + len("id-1") + len("key") + len("value")); st.Bytes != want {
		t.Errorf("Bytes = %d, want %d", st.Bytes, want)
	}
}

// Drain does not sort a whole backlog to name twenty messages: it reads
// the ids of at most 200 waiting ones (ten times what it names), in
// publish order, and counts the rest. Published in descending order, the
// 201st message would sort first; it is counted, not named.
func TestDrainReadsAtMost200WaitingIDs(t *testing.T) {
	br := memory.NewBroker(100, nil)
	t.Cleanup(func() { _ = br.Close() })
	topic := backend.TopicSink("scale")
	for i := 200; i >= 0; i-- {
		if err := br.Publish(topic, message.NewMessage(fmt.Sprintf("m%03d", i), []byte("{}"))); err != nil {
			t.Fatal(err)
		}
	}
	msg := drainNow(t, br)
	if strings.Contains(msg, "/m000") {
		t.Errorf("Drain: %q names the 201st waiting message, want only ids from the first 200 read", msg)
	}
	if !strings.Contains(msg, ": "+topic+"/m001, ") || !strings.HasSuffix(msg, topic+"/m020 and 181 more") {
		t.Errorf("Drain: %q, want m001..m020 named and 181 more counted", msg)
	}
}
