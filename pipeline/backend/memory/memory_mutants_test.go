package memory_test

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/labelpipe/labelpipe/pipeline/backend"
	"github.com/labelpipe/labelpipe/pipeline/backend/memory"
)

// A zero max_pending means the default (128), not a queue with no room.
func TestZeroMaxPendingMeansTheDefault(t *testing.T) {
	be := memory.New(memory.Config{}, nil)
	br, err := be.Broker()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = br.Close() })
	done, ok := br.Admit(t.Context(), time.Millisecond)
	if !ok {
		t.Fatal("Admit refused the first export with max_pending unset")
	}
	done()
}

// The logger given to New is the broker's: what the channel logs reaches
// it, rather than a no-op logger's void.
func TestTheGivenLoggerIsTheBrokers(t *testing.T) {
	var logged countingHandler
	be := memory.New(memory.Config{}, watermill.NewSlogLogger(slog.New(&logged)))
	br, err := be.Broker()
	if err != nil {
		t.Fatal(err)
	}
	subs, err := br.Workers("sink.test", "test", 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := subs[0].Subscribe(t.Context(), "sink.test"); err != nil {
		t.Fatal(err)
	}
	if err := br.Publish("sink.test", message.NewMessage(watermill.NewUUID(), []byte("{}"))); err != nil {
		t.Fatal(err)
	}
	if err := br.Close(); err != nil {
		t.Fatal(err)
	}
	if logged.n.Load() == 0 {
		t.Fatal("the broker logged nothing to the logger New was given")
	}
}

// countingHandler counts the records logged at any level; safe for the
// channel's goroutines, which may still log after the test read it.
type countingHandler struct{ n atomic.Int64 }

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(context.Context, slog.Record) error {
	h.n.Add(1)
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

// A history ttl of 0 means no age bound: an export of long ago is kept.
func TestHistoryWithoutTTLKeepsOldExports(t *testing.T) {
	h := memory.NewHistory(10, 0)
	e := &backend.ExportEntry{ID: "old", ReceivedAt: time.Now().Add(-365 * 24 * time.Hour)}
	if err := h.Add(t.Context(), e); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := h.Get(t.Context(), "old"); err != nil || !ok {
		t.Fatalf("Get = %v, %v; want the export kept without a ttl", ok, err)
	}
}
