package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// History keeps, shared by all replicas, <prefix>history, a sorted set of
// export ids by received time (unix ms), and <prefix>history:<id>, a hash
// per export: field "e" the export's JSON, "q:<generation>" when that
// generation was queued (unix ms), "r:<sink>.<chunk>" each request's state
// (JSON, its events aside) and "t:<sink>.<chunk>" its events (a JSON line
// each, the last backend.MaxRequestEvents), and
// <prefix>history:<id>:body, the export's
// body for a resend (zstd-compressed, see packBody) (read by Get only, so that listing does not carry the
// bodies), both expiring ttl after the export was received.
// The sorted set is trimmed to maxExports in batches (the hashes of the
// trimmed exports deleted with them); Scan never shows more than
// maxExports.
type History struct {
	client goredis.UniversalClient
	index  string
	prefix string
	max    int
	ttl    time.Duration
	added  atomic.Int64 // exports written, to check the index every trimBatch of them
	batcher
}

// NewHistory keeps up to maxExports exports for ttl (≤ 0: no age bound).
func NewHistory(client goredis.UniversalClient, keyPrefix string, maxExports int, ttl time.Duration) *History {
	return &History{client: client, index: keyPrefix + "history", prefix: keyPrefix + "history:", max: max(maxExports, 1), ttl: ttl}
}

// trimBatch is how far past max the index may grow before it is trimmed,
// so that trimming costs one round trip per batch of exports.
func (h *History) trimBatch() int { return max(1, h.max/64) }

// setState sets a request's state (field ARGV[1] to ARGV[2]) only while the
// export's hash exists, so that a late state never leaves a hash without
// expiry, and appends its event lines (ARGV[4]) to field ARGV[3], keeping
// the last ARGV[5] lines: one round trip, on failure paths only.
var setState = goredis.NewScript(`
if redis.call("EXISTS", KEYS[1]) == 0 then return 0 end
redis.call("HSET", KEYS[1], ARGV[1], ARGV[2])
if ARGV[4] == "" then return 1 end
local s = (redis.call("HGET", KEYS[1], ARGV[3]) or "") .. ARGV[4]
local n = 0
for _ in string.gmatch(s, "\n") do n = n + 1 end
local from = 1
for _ = 1, n - tonumber(ARGV[5]) do from = string.find(s, "\n", from, true) + 1 end
redis.call("HSET", KEYS[1], ARGV[3], string.sub(s, from))
return 1`)

// Add writes the export and its requests (see write) and returns once
// they are in Redis. A batched History (the backend's) queues it for the
// writer, which writes it with the other exports queued meanwhile; when
// the queue is full, or after Close, it writes synchronously (never
// drops). An unbatched one writes it alone.
func (h *History) Add(ctx context.Context, e *backend.ExportEntry) error {
	w, err := encodeEntry(e)
	if err != nil {
		return err
	}
	if h.q != nil {
		done := make(chan error, 1)
		if h.enqueue(w, done) {
			select { // group commit: written with the exports queued meanwhile
			case err := <-done:
				return err
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		// Full queue: an earlier Add of the same export must land first.
		if h.isPending(w.id) {
			if err := h.Flush(ctx); err != nil {
				return err
			}
		}
	}
	return h.write(ctx, []*histWrite{w})
}

// histWrite is one export's Add, encoded.
type histWrite struct {
	id       string
	received time.Time
	vals     []any // HSET field, value pairs
	body     []byte
}

func encodeEntry(e *backend.ExportEntry) (*histWrite, error) {
	rs := e.Requests
	c := *e
	c.Requests, c.Payload = nil, nil // the payload goes raw in its own key, not base64 in JSON
	b, err := json.Marshal(&c)
	if err != nil {
		return nil, err
	}
	vals := make([]any, 0, 2+2*len(rs)+2*len(e.QueuedAt))
	vals = append(vals, "e", b)
	for g, t := range e.QueuedAt {
		vals = append(vals, "q:"+strconv.Itoa(g), t.UnixMilli())
	}
	for f, s := range rs {
		s.Events = nil // appended by SetState only, to their own field
		sb, err := json.Marshal(s)
		if err != nil {
			return nil, err
		}
		vals = append(vals, "r:"+f, sb)
	}
	return &histWrite{id: e.ID, received: e.ReceivedAt, vals: vals, body: packBody(e.Payload)}, nil
}

// write writes ws in one pipelined round trip: per export HSET and its
// PEXPIREAT, SET body with PXAT, and ZADD. Once every trimBatch exports
// (counted over all batches) the same round trip drops what aged out of
// the index (ZREMRANGEBYSCORE) and reads its size (ZCARD); if the index
// is then a batch over the bound, one more round trip trims it. So the
// index holds at most max + 2·trimBatch - 1 ids (Scan shows max).
func (h *History) write(ctx context.Context, ws []*histWrite) error {
	check := h.count(len(ws))
	var card *goredis.IntCmd
	_, err := h.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for _, w := range ws {
			h.appendWrite(ctx, p, w)
		}
		if check {
			card = h.appendCheck(ctx, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("history: %w", err)
	}
	return h.trimIfOver(ctx, card)
}

// count counts n more exports written and says whether that crossed a
// multiple of trimBatch, when the index's size is checked.
func (h *History) count(n int) bool {
	added := h.added.Add(int64(n))
	every := int64(h.trimBatch())
	return added/every != (added-int64(n))/every
}

// appendWrite queues one export's commands on p: HSET and its PEXPIREAT,
// SET body with PXAT, and ZADD. It returns them, for their errors.
func (h *History) appendWrite(ctx context.Context, p goredis.Pipeliner, w *histWrite) []goredis.Cmder {
	k := h.prefix + w.id
	cmds := make([]goredis.Cmder, 0, 4)
	cmds = append(cmds, p.HSet(ctx, k, w.vals...))
	if h.ttl > 0 {
		cmds = append(cmds, p.PExpireAt(ctx, k, w.received.Add(h.ttl)))
	}
	if w.body != nil {
		if h.ttl > 0 {
			cmds = append(cmds, p.Do(ctx, "SET", k+":body", w.body, "PXAT", w.received.Add(h.ttl).UnixMilli()))
		} else {
			cmds = append(cmds, p.Set(ctx, k+":body", w.body, 0))
		}
	}
	return append(cmds, p.ZAdd(ctx, h.index, goredis.Z{Score: float64(w.received.UnixMilli()), Member: w.id}))
}

// appendCheck queues the index's check on p: drop what aged out, and read
// its size for trimIfOver.
func (h *History) appendCheck(ctx context.Context, p goredis.Pipeliner) *goredis.IntCmd {
	if h.ttl > 0 {
		p.ZRemRangeByScore(ctx, h.index, "-inf", "("+strconv.FormatInt(time.Now().Add(-h.ttl).UnixMilli(), 10))
	}
	return p.ZCard(ctx, h.index)
}

// trimIfOver trims the index once it is a batch over the bound; card is
// appendCheck's answer, nil when there was no check.
func (h *History) trimIfOver(ctx context.Context, card *goredis.IntCmd) error {
	if card == nil || card.Err() != nil {
		return nil
	}
	if over := int(card.Val()) - h.max; over >= h.trimBatch() {
		return h.trim(ctx, over)
	}
	return nil
}

// trim drops the n oldest exports.
func (h *History) trim(ctx context.Context, n int) error {
	ids, err := h.client.ZRange(ctx, h.index, 0, int64(n-1)).Result()
	if err != nil || len(ids) == 0 {
		return err
	}
	_, err = h.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for _, id := range ids {
			p.Del(ctx, h.prefix+id, h.prefix+id+":body")
		}
		m := make([]any, len(ids))
		for i, id := range ids {
			m[i] = id
		}
		p.ZRem(ctx, h.index, m...)
		return nil
	})
	if err != nil {
		return fmt.Errorf("history trim: %w", err)
	}
	return nil
}

// SetState sets one request's state while the export is kept, and appends
// its events.
func (h *History) SetState(ctx context.Context, id string, s backend.RequestState) error {
	evs := s.Events
	s.Events = nil
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	var lines []byte
	for _, ev := range evs {
		eb, err := json.Marshal(ev) // escapes newlines: one line each
		if err != nil {
			return err
		}
		lines = append(append(lines, eb...), '\n')
	}
	// A state must not be overwritten by its export's queued Add (nor be
	// ignored because the hash is not written yet): that Add goes first.
	if h.isPending(id) {
		if err := h.Flush(ctx); err != nil {
			return err
		}
	}
	k := backend.HistoryKey(s.Sink, s.Chunk)
	if err := setState.Run(ctx, h.client, []string{h.prefix + id}, "r:"+k, b, "t:"+k, lines, backend.MaxRequestEvents).Err(); err != nil {
		return fmt.Errorf("history: %w", err)
	}
	return nil
}

func decodeEntry(m map[string]string) (*backend.ExportEntry, error) {
	var e backend.ExportEntry
	if err := json.Unmarshal([]byte(m["e"]), &e); err != nil {
		return nil, err
	}
	for f, v := range m {
		switch {
		case strings.HasPrefix(f, "r:"):
			var s backend.RequestState
			if err := json.Unmarshal([]byte(v), &s); err != nil {
				return nil, err
			}
			if lines := m["t:"+f[2:]]; lines != "" {
				for l := range strings.Lines(lines) {
					var ev backend.RequestEvent
					if err := json.Unmarshal([]byte(l), &ev); err != nil {
						return nil, fmt.Errorf("events of %s: %w", f[2:], err)
					}
					s.Events = append(s.Events, ev)
				}
			}
			if e.Requests == nil {
				e.Requests = map[string]backend.RequestState{}
			}
			e.Requests[f[2:]] = s
		case strings.HasPrefix(f, "q:"):
			g, err1 := strconv.Atoi(f[2:])
			ms, err2 := strconv.ParseInt(v, 10, 64)
			if err := errors.Join(err1, err2); err != nil {
				return nil, fmt.Errorf("queued time %s=%q: %w", f, v, err)
			}
			if e.QueuedAt == nil {
				e.QueuedAt = map[int]time.Time{}
			}
			e.QueuedAt[g] = time.UnixMilli(ms)
		}
	}
	return &e, nil
}

// Get reads one export's hash.
func (h *History) Get(ctx context.Context, id string) (*backend.ExportEntry, bool, error) {
	if err := h.Flush(ctx); err != nil {
		return nil, false, err
	}
	var all *goredis.MapStringStringCmd
	var body *goredis.StringCmd
	_, err := h.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
		all = p.HGetAll(ctx, h.prefix+id)
		body = p.Get(ctx, h.prefix+id+":body")
		return nil
	})
	if err != nil && !errors.Is(err, goredis.Nil) {
		return nil, false, fmt.Errorf("history: %w", err)
	}
	if all.Val()["e"] == "" {
		return nil, false, nil
	}
	e, err := decodeEntry(all.Val())
	if err != nil {
		return nil, false, fmt.Errorf("history: export %s: %w", id, err)
	}
	if b, err := body.Bytes(); err == nil {
		if e.Payload, err = unpackBody(b); err != nil {
			return nil, false, fmt.Errorf("history: export %s: %w", id, err)
		}
	}
	return e, true, nil
}

// Scan reads the index newest first, at most max ids, and the hashes in
// pipelined batches.
func (h *History) Scan(ctx context.Context, since, until time.Time, fn func(*backend.ExportEntry) bool) error {
	if err := h.Flush(ctx); err != nil {
		return err
	}
	lo, hi := "-inf", "+inf"
	if h.ttl > 0 {
		lo = strconv.FormatInt(time.Now().Add(-h.ttl).UnixMilli(), 10)
	}
	if !since.IsZero() {
		lo = strconv.FormatInt(max(since.UnixMilli(), atoi64(lo)), 10)
	}
	if !until.IsZero() {
		hi = strconv.FormatInt(until.UnixMilli(), 10)
	}
	// Only the max newest ids count, whatever is left to trim.
	newest, err := h.client.ZRevRangeWithScores(ctx, h.index, int64(h.max-1), int64(h.max-1)).Result()
	if err != nil {
		return fmt.Errorf("history: %w", err)
	}
	if len(newest) == 1 {
		lo = strconv.FormatInt(max(int64(newest[0].Score), atoi64(lo)), 10)
	}
	const batch = 100
	for off := int64(0); ; off += batch {
		ids, err := h.client.ZRevRangeByScore(ctx, h.index, &goredis.ZRangeBy{Min: lo, Max: hi, Offset: off, Count: batch}).Result()
		if err != nil {
			return fmt.Errorf("history: %w", err)
		}
		if len(ids) == 0 {
			return nil
		}
		cmds := make([]*goredis.MapStringStringCmd, len(ids))
		if _, err := h.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
			for i, id := range ids {
				cmds[i] = p.HGetAll(ctx, h.prefix+id)
			}
			return nil
		}); err != nil {
			return fmt.Errorf("history: %w", err)
		}
		for _, c := range cmds {
			if c.Val()["e"] == "" {
				continue // expired or trimmed meanwhile
			}
			e, err := decodeEntry(c.Val())
			if err != nil {
				return fmt.Errorf("history: %w", err)
			}
			if !fn(e) {
				return nil
			}
		}
		if len(ids) < batch {
			return nil
		}
	}
}

func atoi64(s string) int64 {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return -1 << 62
	}
	return n
}

var _ backend.History = (*History)(nil)
