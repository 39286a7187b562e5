package pipeline

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
)

// QueueStat is how far behind one consumer group of a topic is.
type QueueStat struct {
	// Depth is the messages published and not yet acknowledged: pending
	// (delivered to a consumer, not acked) plus not yet delivered.
	Depth int64
	// Oldest is when the oldest of them was published; zero when Depth is 0.
	Oldest time.Time
}

// queueStater is implemented by brokers that can report a queue across
// every replica (Redis). Others are measured in process.
type queueStater interface {
	QueueStats(ctx context.Context, topic, group string) (QueueStat, error)
}

// QueueStats reads a stream's group from Redis: XINFO GROUPS gives the
// pending count and the lag (entries not yet delivered); the oldest entry
// is the first pending one, or else the first after the last delivered.
// Stream ids start with their publish time in milliseconds.
func (b *redisBroker) QueueStats(ctx context.Context, topic, group string) (QueueStat, error) {
	stream := b.cfg.Prefix + topic
	groups, err := b.client.XInfoGroups(ctx, stream).Result()
	if err != nil {
		if strings.Contains(err.Error(), "no such key") {
			return QueueStat{}, nil
		}
		return QueueStat{}, err
	}
	for _, g := range groups {
		if g.Name != group {
			continue
		}
		st := QueueStat{Depth: g.Pending + max(g.Lag, 0)}
		var oldestID string
		if g.Pending > 0 {
			sum, err := b.client.XPending(ctx, stream, group).Result()
			if err != nil {
				return st, err
			}
			oldestID = sum.Lower
		} else if g.Lag > 0 {
			next, err := b.client.XRangeN(ctx, stream, "("+g.LastDeliveredID, "+", 1).Result()
			if err != nil {
				return st, err
			}
			if len(next) > 0 {
				oldestID = next[0].ID
			}
		}
		st.Oldest = streamIDTime(oldestID)
		return st, nil
	}
	return QueueStat{}, nil
}

func streamIDTime(id string) time.Time {
	ms, _, ok := strings.Cut(id, "-")
	if !ok {
		return time.Time{}
	}
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.UnixMilli(n)
}

// localQueue tracks, in process, the requests queued for one sink and when
// each was queued, for brokers that cannot report it themselves.
type localQueue struct {
	mu    sync.Mutex
	since map[string]time.Time
}

func (q *localQueue) add(ids []string, at time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.since == nil {
		q.since = map[string]time.Time{}
	}
	for _, id := range ids {
		q.since[id] = at
	}
}

func (q *localQueue) done(id string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.since, id)
}

func (q *localQueue) stat() QueueStat {
	q.mu.Lock()
	defer q.mu.Unlock()
	st := QueueStat{Depth: int64(len(q.since))}
	for _, t := range q.since {
		if st.Oldest.IsZero() || t.Before(st.Oldest) {
			st.Oldest = t
		}
	}
	return st
}

// queued notes requests put on a sink's queue, for a broker that cannot
// report its queue itself. A broker that can (Redis) is left alone: there
// another replica may deliver what this one queued, so a record here
// would never be cleared.
func (p *Pipeline) queued(s *builtSink, msgs []*message.Message) {
	if _, ok := p.broker.(queueStater); ok {
		return
	}
	ids := make([]string, len(msgs))
	for i, m := range msgs {
		ids[i] = m.UUID
	}
	s.local.add(ids, time.Now())
}

// sinkQueue reports a sink's queue: from the broker when it can, else from
// this process.
func (p *Pipeline) sinkQueue(ctx context.Context, s *builtSink) QueueStat {
	if qs, ok := p.broker.(queueStater); ok {
		st, err := qs.QueueStats(ctx, s.topic, sinkGroup(s.cfg.Name))
		if err == nil {
			return st
		}
		var re redis.Error
		if !errors.As(err, &re) {
			p.log.DebugContext(ctx, "queue stats unavailable", "sink", s.cfg.Name, "err", err)
		}
	}
	return s.local.stat()
}

func sinkGroup(name string) string { return "sink-" + name }
