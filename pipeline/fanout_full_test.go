package pipeline_test

import (
	"strings"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/internal/vendortest"
)

// When an export finds two sinks' queues full at once, each of them
// handles its own refused requests (on_full: dead_letter): the second
// full sink is not forgotten once the first has dead-lettered its own.
func TestEveryFullSinkDeadLettersItsRequests(t *testing.T) {
	sc := vendortest.NewScale(t, scaleKey)
	sc.SetLatency(time.Hour)
	one := scaleSink(sc.TaskURL(), queuePolicy("{max_requests: 3}"))
	two := strings.Replace(one, "name: scale", "name: scale_two", 1)
	h := startHarness(t, head("")+one+two)
	first, _ := samplePayload(t, "issue-frames.json")
	h.accept(first) // three tasks: both queues are full
	h.eventually(10*time.Second, "both queues to hold the first export", func() bool {
		return h.sink("scale").QueueDepth == 3 && h.sink("scale_two").QueueDepth == 3
	})
	second, _ := samplePayload(t, "issue-frames.json")
	h.accept(second)
	for _, sink := range []string{"scale", "scale_two"} {
		if ds := h.waitDeadLetters(sink, 3); len(ds) != 3 || !strings.Contains(ds[0].Error, "sink queue full") {
			t.Errorf("%s: %d dead letters (%+v), want the second export's 3, refused by the full queue", sink, len(ds), ds)
		}
	}
}
