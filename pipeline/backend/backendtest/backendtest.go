// Package backendtest is the conformance suite of the backend contracts
// (package backend): one set of tests that every Backend implementation
// runs, in the spirit of watermill's pubsub/tests. An implementation wires
// it up in a test of its own:
//
//	func TestConformance(t *testing.T) {
//		backendtest.Run(t, backendtest.Features{BoundedAdmission: true, MaxPending: 2},
//			func(t *testing.T) backend.Backend {
//				b := memory.New(memory.Config{MaxPending: 2}, nil)
//				t.Cleanup(func() { _ = b.Close() })
//				return b
//			}, nil)
//	}
//
// Features says where a backend legitimately differs (durable or not,
// shared between processes or not, bounded admission or not); everything
// else is checked alike. Each check can fail: waits are on channels or on
// bounded polling loops with a timeout, never a sleep standing in for
// synchronisation. The only fixed windows are the ones that prove an
// absence (a message that must not arrive), Features.SettleTime long.
package backendtest

import (
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// Features says how a backend legitimately differs from the others. The
// suite uses it to pick and shape its checks; it never changes the
// backend.
type Features struct {
	// Durable says published messages survive the backend being closed and
	// another one opened on the same storage, including a message that was
	// delivered and not acknowledged. The broker's Info().Durable must
	// agree, and Drain returns at once. Needs a Reopener.
	Durable bool
	// SharedAcrossInstances says two Backend values on the same storage
	// (two replicas) see each other's dead letters, delivery records,
	// dedupe keys and breaker state, and split a consumer group's
	// messages. Needs a Reopener.
	SharedAcrossInstances bool
	// BoundedAdmission says Admit makes callers wait once MaxPending
	// exports are unfinished (published on TopicExports and not
	// acknowledged) or admitted and not yet done; sink topics never count.
	// Without it, Admit must let every caller in at once.
	BoundedAdmission bool
	// MaxPending is the bound the Constructor configures; required with
	// BoundedAdmission.
	MaxPending int64
	// PerGroupQueueStats says QueueStats counts each consumer group of a
	// topic on its own: a message acknowledged by one group still counts
	// for another. A broker that keeps one count per topic (memory: the
	// engine gives every topic one group) leaves it false.
	PerGroupQueueStats bool
	// BreakerStore says BreakerStore() shares circuit-breaker state; when
	// false it must return nil.
	BreakerStore bool
	// SettleTime is how long the suite watches for a message that must
	// not arrive (an acknowledged message delivered again, a second copy
	// within a group). Set it above the backend's own redelivery delay
	// (the redis broker resends a nacked message after 250ms). Zero means
	// 500ms.
	SettleTime time.Duration
}

func (f Features) settle() time.Duration {
	if f.SettleTime > 0 {
		return f.SettleTime
	}
	return 500 * time.Millisecond
}

// Constructor returns a fresh, empty backend for one test. It registers
// the backend's Close with t.Cleanup; the suite may close it earlier
// (Close is safe twice).
type Constructor func(t *testing.T) backend.Backend

// Reopener opens another Backend on the storage b was opened on, as a
// second replica or a restarted process would: its own broker consumers
// (a different replica id), the same streams and keys. It registers the
// new backend's Close with t.Cleanup. b may already be closed.
type Reopener func(t *testing.T, b backend.Backend) backend.Backend

// waitTimeout bounds every wait for something that must happen. It is
// only reached when a check fails, so it is generous: a durable broker
// gives a closed consumer's message to another after its claim time.
const waitTimeout = 15 * time.Second

// pollInterval is the step of the bounded polling loops, for state a
// backend updates asynchronously (an ack reaching Redis).
const pollInterval = 10 * time.Millisecond

// Run runs every contract's checks as subtests: Broker, DLQ, Ledger,
// DedupeStore and BreakerStore. reopen may be nil unless f.Durable or
// f.SharedAcrossInstances is set.
func Run(t *testing.T, f Features, newBackend Constructor, reopen Reopener) {
	t.Helper()
	checkSetup(t, f, newBackend, reopen)
	t.Run("Broker", func(t *testing.T) { TestBroker(t, f, newBackend, reopen) })
	t.Run("DLQ", func(t *testing.T) { TestDLQ(t, f, newBackend, reopen) })
	t.Run("Ledger", func(t *testing.T) { TestLedger(t, f, newBackend, reopen) })
	t.Run("DedupeStore", func(t *testing.T) { TestDedupeStore(t, f, newBackend, reopen) })
	t.Run("BreakerStore", func(t *testing.T) { TestBreakerStore(t, f, newBackend, reopen) })
	if _, ok := newBackend(t).(backend.HistoryBackend); ok {
		t.Run("History", func(t *testing.T) { TestHistory(t, f, newBackend, reopen) })
	}
}

// checkSetup fails a suite whose features ask for what the arguments
// cannot give.
func checkSetup(t *testing.T, f Features, newBackend Constructor, reopen Reopener) {
	t.Helper()
	if newBackend == nil {
		t.Fatal("backendtest: nil Constructor")
	}
	if (f.Durable || f.SharedAcrossInstances) && reopen == nil {
		t.Fatal("backendtest: Features.Durable and Features.SharedAcrossInstances need a Reopener")
	}
	if f.BoundedAdmission && f.MaxPending <= 0 {
		t.Fatal("backendtest: Features.BoundedAdmission needs Features.MaxPending")
	}
}

// eventually polls cond until it holds, for at most waitTimeout; state
// describes what was last seen, for the failure message.
func eventually(t *testing.T, what string, cond func() (ok bool, state string)) {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		ok, state := cond()
		if ok {
			return
		}
		select {
		case <-deadline.C:
			t.Fatalf("%s: not within %s; last seen: %s", what, waitTimeout, state)
		case <-tick.C:
		}
	}
}
