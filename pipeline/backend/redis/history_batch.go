package redis

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// Batched history writes (group commit).
//
// The backend's History hands each Add to one writer goroutine through a
// bounded queue and waits for it to be written. The writer takes what is
// queued (up to historyBatch exports) and writes it in one pipelined
// round trip. It does not wait for a batch to fill: while it waits for
// Redis, the next batch queues up, so batches grow with the number of
// concurrent fan-outs and a lone export is written at once. An Add
// returns once its export is in Redis, as an unbatched one does, so
// another replica sees it (and can set its states) right away.
//
// Ordering and reads:
//   - SetState of an export whose Add is still queued flushes the queue
//     first, so a late state is never overwritten by its earlier Add nor
//     ignored because the hash is not there yet.
//   - Get and Scan flush first.
//   - A full queue makes Add write synchronously (after a flush if an Add
//     of the same export is queued): memory stays bounded, nothing drops.
//   - Close flushes and stops the writer; later Adds write synchronously.
const (
	historyQueue = 256
	historyBatch = 128
)

type histOp struct {
	w       *histWrite
	flushed chan error // a flush marker: answered once everything before it is written
}

type batcher struct {
	q    chan histOp // nil: unbatched, every Add writes synchronously
	done chan struct{}

	closeMu sync.RWMutex // held shared while sending to q, exclusively to close it
	closed  bool

	pmu     sync.Mutex
	pending map[string]int // export id -> its queued Adds
	queued  atomic.Int64   // queued Adds in all
}

// NewBatchedHistory is NewHistory with its Adds written by a background
// writer in batches; Close flushes it.
func NewBatchedHistory(client goredis.UniversalClient, keyPrefix string, maxExports int, ttl time.Duration) *History {
	h := NewHistory(client, keyPrefix, maxExports, ttl)
	h.q = make(chan histOp, historyQueue)
	h.done = make(chan struct{})
	h.pending = map[string]int{}
	go h.run()
	return h
}

// enqueue queues w unless the queue is full or closed; done, if not nil,
// gets the error of the batch that wrote it.
func (h *History) enqueue(w *histWrite, done chan error) bool {
	h.closeMu.RLock()
	defer h.closeMu.RUnlock()
	if h.closed {
		return false
	}
	h.pmu.Lock()
	h.pending[w.id]++
	h.pmu.Unlock()
	h.queued.Add(1)
	select {
	case h.q <- histOp{w: w, flushed: done}:
		return true
	default:
		h.unpend(w.id)
		h.queued.Add(-1)
		return false
	}
}

func (h *History) unpend(id string) {
	h.pmu.Lock()
	if h.pending[id]--; h.pending[id] <= 0 {
		delete(h.pending, id)
	}
	h.pmu.Unlock()
}

// isPending says whether an Add of export id is queued.
func (h *History) isPending(id string) bool {
	if h.q == nil || h.queued.Load() == 0 {
		return false
	}
	h.pmu.Lock()
	defer h.pmu.Unlock()
	return h.pending[id] > 0
}

// Flush returns once every Add queued before it is written (at once if
// none is queued), with the error of the batch that wrote them.
func (h *History) Flush(ctx context.Context) error {
	if h.q == nil || h.queued.Load() == 0 {
		return nil
	}
	h.closeMu.RLock()
	if h.closed {
		h.closeMu.RUnlock()
		select { // Close is flushing
		case <-h.done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	ch := make(chan error, 1)
	select {
	case h.q <- histOp{flushed: ch}:
	case <-ctx.Done():
		h.closeMu.RUnlock()
		return ctx.Err()
	}
	h.closeMu.RUnlock()
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close writes what is queued and stops the writer. Adds after it write
// synchronously. A failed write is reported to its Adds, not here.
func (h *History) Close() error {
	if h.q == nil {
		return nil
	}
	h.closeMu.Lock()
	if !h.closed {
		h.closed = true
		close(h.q)
	}
	h.closeMu.Unlock()
	<-h.done
	return nil
}

func (h *History) run() {
	defer close(h.done)
	// One write serves several exports' traces, so it belongs to none:
	// untraced, like the other housekeeping, rather than a root span
	// outside every export's trace.
	ctx := quiet(context.Background())
	batch := make([]*histWrite, 0, historyBatch)
	var waiters []chan error
	take := func(op histOp) {
		if op.w != nil {
			batch = append(batch, op.w)
		}
		if op.flushed != nil {
			waiters = append(waiters, op.flushed)
		}
	}
	for op := range h.q {
		batch, waiters = batch[:0], waiters[:0]
		take(op)
	more:
		for len(batch) < historyBatch {
			select {
			case op, ok := <-h.q:
				if !ok {
					break more
				}
				take(op)
			default:
				break more
			}
		}
		var err error
		if len(batch) > 0 {
			err = h.write(ctx, batch) // each Add gets it
			for _, w := range batch {
				h.unpend(w.id)
			}
			h.queued.Add(-int64(len(batch)))
		}
		for _, ch := range waiters {
			ch <- err
		}
	}
}
