package memory_test

import (
	"testing"

	"github.com/labelpipe/labelpipe/pipeline/backend"
	"github.com/labelpipe/labelpipe/pipeline/backend/backendtest"
	"github.com/labelpipe/labelpipe/pipeline/backend/memory"
)

// maxPending is small so that the suite can fill the broker.
const maxPending = 2

func TestConformance(t *testing.T) {
	backendtest.Run(t, backendtest.Features{
		// In process: lost on a crash, shared with nobody, and the
		// webhook waits while the broker holds maxPending messages.
		BoundedAdmission: true,
		MaxPending:       maxPending,
	}, func(t *testing.T) backend.Backend {
		b := memory.New(memory.Config{MaxPending: maxPending}, nil)
		t.Cleanup(func() { _ = b.Close() })
		return b
	}, nil)
}
