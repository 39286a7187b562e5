package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"
	goredis "github.com/redis/go-redis/v9"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// The redis DLQ keeps one stream per sink, <prefix>dlq.<sink>. Each entry
// has the fields
//
//	letter    the DeadLetter as JSON (without its id, which is the entry id)
//	uuid      the queued message's UUID
//	metadata  its metadata as a JSON object (trace context included)
//	payload   its payload, as is
//
// so that Take can rebuild the message for replay. The streams have no
// consumer group, so the broker's trimming never touches them.
// DLQ is the dead-letter queue in Redis streams described above.
type DLQ struct {
	client goredis.UniversalClient
	prefix string
}

// NewDLQ keeps dead letters in Redis streams under prefix.
func NewDLQ(client goredis.UniversalClient, prefix string) *DLQ {
	return &DLQ{client: client, prefix: prefix}
}

// takeBatch is how many entries one Take("all") round trip removes.
const takeBatch = 500

func (q *DLQ) stream(sink string) string { return q.prefix + backend.TopicDLQ(sink) }

// Add appends d and sets d.ID to the new entry's id.
func (q *DLQ) Add(ctx context.Context, d *backend.DeadLetter) error {
	if d.Sink == "" {
		return errors.New("dlq: dead letter without a sink")
	}
	c := *d
	c.ID, c.Message = "", nil
	letter, err := json.Marshal(&c)
	if err != nil {
		return fmt.Errorf("dlq: %w", err)
	}
	values := []any{"letter", letter}
	if m := d.Message; m != nil {
		md, err := json.Marshal(m.Metadata)
		if err != nil {
			return fmt.Errorf("dlq: metadata: %w", err)
		}
		values = append(values, "uuid", m.UUID, "metadata", md, "payload", []byte(m.Payload))
	}
	id, err := q.client.XAdd(ctx, &goredis.XAddArgs{Stream: q.stream(d.Sink), Values: values}).Result()
	if err != nil {
		return fmt.Errorf("dlq %s: add: %w", d.Sink, err)
	}
	d.ID = id
	return nil
}

// List returns up to limit entries, oldest first; limit ≤ 0 means all.
func (q *DLQ) List(ctx context.Context, sink string, limit int) ([]*backend.DeadLetter, error) {
	var (
		xs  []goredis.XMessage
		err error
	)
	if limit > 0 {
		xs, err = q.client.XRangeN(ctx, q.stream(sink), "-", "+", int64(limit)).Result()
	} else {
		xs, err = q.client.XRange(ctx, q.stream(sink), "-", "+").Result()
	}
	if err != nil {
		return nil, fmt.Errorf("dlq %s: list: %w", sink, err)
	}
	out := make([]*backend.DeadLetter, 0, len(xs))
	for _, x := range xs {
		d, err := decodeDeadLetter(sink, x.ID, x.Values)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

// Take removes and returns the entries with ids, or all entries present
// when Take starts if ids is empty. Each entry is read and deleted in one
// script, so of two concurrent Takes only one gets it. Unknown ids are
// skipped.
func (q *DLQ) Take(ctx context.Context, sink string, ids []string) ([]*backend.DeadLetter, error) {
	key := q.stream(sink)
	var out []*backend.DeadLetter
	if len(ids) > 0 {
		args := make([]any, len(ids))
		for i, id := range ids {
			args[i] = id
		}
		res, err := takeIDsScript.Run(ctx, q.client, []string{key}, args...).Result()
		if err != nil {
			return nil, fmt.Errorf("dlq %s: take: %w", sink, err)
		}
		return decodeTaken(sink, res, out)
	}
	// Entries added after Take started (a replayed message failing again)
	// are left for the next replay.
	last, err := q.client.XRevRangeN(ctx, key, "+", "-", 1).Result()
	if err != nil {
		return nil, fmt.Errorf("dlq %s: take: %w", sink, err)
	}
	if len(last) == 0 {
		return nil, nil
	}
	for {
		res, err := takeUpToScript.Run(ctx, q.client, []string{key}, last[0].ID, takeBatch).Result()
		if err != nil {
			return out, fmt.Errorf("dlq %s: take: %w", sink, err)
		}
		before := len(out)
		if out, err = decodeTaken(sink, res, out); err != nil {
			return out, err
		}
		if len(out)-before < takeBatch {
			return out, nil
		}
	}
}

// Len is the number of entries in sink's DLQ.
func (q *DLQ) Len(ctx context.Context, sink string) (int64, error) {
	n, err := q.client.XLen(quiet(ctx), q.stream(sink)).Result() // the gauge's scrape: not traced
	if err != nil {
		return 0, fmt.Errorf("dlq %s: len: %w", sink, err)
	}
	return n, nil
}

var takeIDsScript = goredis.NewScript(`
local out = {}
for _, id in ipairs(ARGV) do
  local e = redis.call('XRANGE', KEYS[1], id, id)
  if #e > 0 and redis.call('XDEL', KEYS[1], id) == 1 then
    table.insert(out, e[1])
  end
end
return out
`)

var takeUpToScript = goredis.NewScript(`
local es = redis.call('XRANGE', KEYS[1], '-', ARGV[1], 'COUNT', tonumber(ARGV[2]))
for _, e in ipairs(es) do redis.call('XDEL', KEYS[1], e[1]) end
return es
`)

// decodeTaken appends the entries a take script returned: a list of
// {id, {field, value, ...}}.
func decodeTaken(sink string, res any, out []*backend.DeadLetter) ([]*backend.DeadLetter, error) {
	entries, ok := res.([]any)
	if !ok {
		return out, fmt.Errorf("dlq %s: take: unexpected reply %T", sink, res)
	}
	for _, e := range entries {
		pair, ok := e.([]any)
		if !ok || len(pair) != 2 {
			return out, fmt.Errorf("dlq %s: take: unexpected entry %v", sink, e)
		}
		id, _ := pair[0].(string)
		kv, _ := pair[1].([]any)
		values := make(map[string]any, len(kv)/2)
		for i := 0; i+1 < len(kv); i += 2 {
			k, _ := kv[i].(string)
			values[k] = kv[i+1]
		}
		d, err := decodeDeadLetter(sink, id, values)
		if err != nil {
			return out, err
		}
		out = append(out, d)
	}
	return out, nil
}

func decodeDeadLetter(sink, id string, values map[string]any) (*backend.DeadLetter, error) {
	str := func(k string) string { s, _ := values[k].(string); return s }
	d := &backend.DeadLetter{}
	if err := json.Unmarshal([]byte(str("letter")), d); err != nil {
		return nil, fmt.Errorf("dlq %s: entry %s: %w", sink, id, err)
	}
	d.ID = id
	if _, ok := values["uuid"]; ok {
		m := message.NewMessage(str("uuid"), []byte(str("payload")))
		if md := str("metadata"); md != "" && md != "null" {
			if err := json.Unmarshal([]byte(md), &m.Metadata); err != nil {
				return nil, fmt.Errorf("dlq %s: entry %s: metadata: %w", sink, id, err)
			}
		}
		d.Message = m
	}
	return d, nil
}

var _ backend.DLQ = (*DLQ)(nil)
