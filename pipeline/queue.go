package pipeline

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// ErrQueueFull is the cause of a dead letter stored because its sink's
// queue was full (queue.on_full: dead_letter).
var ErrQueueFull = errors.New("sink queue full")

// backlogRefresh is how stale a sink's queue statistics may be before the
// fan-out reads them again. Requests this process queued since the last
// read are added to it, so the bound holds between reads; a broker whose
// statistics cost a round trip (redis) is asked a few times a second at
// most.
const backlogRefresh = 100 * time.Millisecond

// backlog keeps one sink's queue within its queue: limits.
type backlog struct {
	mu     sync.Mutex
	read   time.Time         // when st was read
	st     backend.QueueStat // the broker's view at read
	added  int64             // requests queued here since read
	addedB int64             // and their bytes
	full   bool              // the last verdict, to log its changes once
	turned int64             // requests refused since the queue became full
}

// queueUse is a sink's queue as the fan-out last saw it.
type queueUse struct {
	depth, bytes int64
}

// take reserves room for msgs on s's queue and reports whether there was
// any. A queue that is empty takes any export, however large: it could
// never fit otherwise. fresh forces a read of the broker's statistics.
func (p *Pipeline) take(ctx context.Context, s *builtSink, msgs []*message.Message, fresh bool) (queueUse, bool) {
	var size int64
	for _, m := range msgs {
		size += int64(len(m.Payload))
	}
	b := &s.backlog
	b.mu.Lock()
	defer b.mu.Unlock()
	if fresh || time.Since(b.read) > backlogRefresh {
		b.mu.Unlock()
		st := p.sinkQueue(ctx, s)
		b.mu.Lock()
		b.st, b.read, b.added, b.addedB = st, time.Now(), 0, 0
	}
	use := queueUse{depth: b.st.Depth + b.added, bytes: b.st.Bytes + b.addedB}
	q := s.cfg.Queue
	full := use.depth > 0 && (use.depth+int64(len(msgs)) > q.MaxRequests || use.bytes+size > q.MaxBytes)
	switch {
	case full && !b.full:
		s.log.WarnContext(ctx, "sink queue is full: "+onFullSays(q.OnFull), "queued", use.depth, "queued_bytes", use.bytes,
			"max_requests", q.MaxRequests, "max_bytes", q.MaxBytes, "on_full", q.OnFull)
	case !full && b.full:
		s.log.InfoContext(ctx, "sink queue has room again", "refused_while_full", b.turned, "queued", use.depth)
		b.turned = 0
	}
	b.full = full
	if full {
		b.turned += int64(len(msgs))
		return use, false
	}
	b.added += int64(len(msgs))
	b.addedB += size
	return use, true
}

func onFullSays(onFull string) string {
	if onFull == OnFullBackpressure {
		return "the fan-out waits for room, and new webhooks wait, then get 503"
	}
	return "its new requests go to its dead-letter queue until it has room"
}

// queueFull handles msgs that found s's queue full, as queue.on_full
// says: dead-letter them, or wait for room and queue them (backpressure).
func (p *Pipeline) queueFull(ctx context.Context, s *builtSink, msgs []*message.Message, use queueUse) error {
	p.metrics.queueFull.Add(ctx, int64(len(msgs)), p.metrics.with("sink", s.cfg.Name, "action", s.cfg.Queue.OnFull))
	if s.cfg.Queue.OnFull == OnFullBackpressure {
		return p.waitForRoom(ctx, s, msgs)
	}
	cause := fmt.Errorf("%w: %d requests (%d bytes) were queued, over queue.max_requests %d or queue.max_bytes %d; not sent, replay it once the vendor catches up",
		ErrQueueFull, use.depth, use.bytes, s.cfg.Queue.MaxRequests, s.cfg.Queue.MaxBytes)
	for _, m := range msgs {

		chunk, _ := strconv.Atoi(m.Metadata.Get(backend.MetaChunk))
		if err := p.deadLetter(ctx, s, m, chunk, 0, cause, quietly()); err != nil {
			return err
		}
	}
	return nil
}

// waitForRoom holds the fan-out until s's queue has room for msgs, then
// queues them. Only shutting down ends the wait: the export is then handed
// back to the broker.
func (p *Pipeline) waitForRoom(ctx context.Context, s *builtSink, msgs []*message.Message) error {
	t := time.NewTicker(backlogRefresh / 4)
	defer t.Stop()
	for {
		select {
		case <-p.hardStop.Done():
			return fmt.Errorf("sink %s: waiting for room in its queue: %w", s.cfg.Name, context.Canceled)
		case <-t.C:
		}
		if _, ok := p.take(ctx, s, msgs, true); ok {
			return p.publishMsgs(ctx, s.topic, msgs...)
		}
	}
}

// queueDegraded says which sinks' queues are full now, for /readyz.
func (p *Pipeline) queueDegraded(ctx context.Context) []string {
	var out []string
	for _, s := range p.sinkList() {
		st := p.sinkQueue(ctx, s)
		q := s.cfg.Queue
		s.backlog.mu.Lock()
		refusing := s.backlog.full
		s.backlog.mu.Unlock()
		if st.Depth >= q.MaxRequests || st.Bytes >= q.MaxBytes || (refusing && st.Depth > 0) {
			out = append(out, fmt.Sprintf("sink %s: queue full (%d requests, %d bytes; max_requests %d, max_bytes %d): %s",
				s.cfg.Name, st.Depth, st.Bytes, q.MaxRequests, q.MaxBytes, onFullSays(q.OnFull)))
		}
	}
	return out
}
