package memory_test

import (
	"testing"
	"time"

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
