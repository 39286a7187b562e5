package redis

import (
	"context"
	"errors"
	"fmt"

	"github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	goredis "github.com/redis/go-redis/v9"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// Publishing: every message of one Publish goes to Redis in one pipelined
// round trip (watermill's publisher sends one XADD per round trip), and
// PublishWithEntry puts an export's history entry in front of them in the
// same round trip. Entries are encoded as watermill's publisher encodes
// them, so its subscribers read them unchanged.

var errClosed = errors.New("broker closed")

// marshaller is the encoding watermill-redisstream's subscribers expect.
var marshaller redisstream.DefaultMarshallerUnmarshaller

// Publish appends msgs to the topic's stream, in order, in one round trip;
// each XADD is acknowledged by Redis before Publish returns.
func (b *Broker) Publish(topic string, msgs ...*message.Message) error {
	if b.pubClosed.Load() {
		return fmt.Errorf("redis broker: publish %s: %w", topic, errClosed)
	}
	if len(msgs) == 0 {
		return nil
	}
	stream := b.cfg.Prefix + topic
	xadds, err := b.pipeline(msgs[0].Context(), stream, msgs, nil)
	if err == nil {
		err = firstErr(xadds)
	}
	if err != nil {
		return fmt.Errorf("redis broker: publish %s: %w", topic, err)
	}
	b.published(stream, len(msgs))
	return nil
}

// PublishWithEntry publishes msgs as Publish does, with e's history entry
// written first in the same round trip; see backend.EntryPublisher.
func (b *Broker) PublishWithEntry(h backend.History, e *backend.ExportEntry, topic string, msgs ...*message.Message) (ok bool, histErr, err error) {
	rh, isRedis := h.(*History)
	if !isRedis || rh.client != b.client || len(msgs) == 0 || b.pubClosed.Load() {
		return false, nil, nil
	}
	w, err := encodeEntry(e)
	if err != nil {
		return false, nil, nil // the caller's Add reports it
	}
	ctx := msgs[0].Context()
	// An Add of the same export still queued (a resend's) must land first.
	if rh.isPending(w.id) {
		if err := rh.Flush(ctx); err != nil {
			return false, nil, nil
		}
	}
	check := rh.count(1)
	var hist []goredis.Cmder
	var card *goredis.IntCmd
	stream := b.cfg.Prefix + topic
	xadds, err := b.pipeline(ctx, stream, msgs, func(p goredis.Pipeliner) {
		hist = rh.appendWrite(ctx, p, w)
		if check {
			card = rh.appendCheck(ctx, p)
		}
	})
	if err == nil {
		err = firstErr(xadds)
	}
	if err != nil {
		return true, nil, fmt.Errorf("redis broker: publish %s: %w", topic, err)
	}
	b.published(stream, len(msgs))
	if histErr = firstErr(hist); histErr != nil {
		return true, fmt.Errorf("history: %w", histErr), nil
	}
	return true, nil, rh.trimIfOver(ctx, card)
}

// pipeline sends before's commands (if any) and then one XADD per message
// to stream, in one round trip. Its error is a message that does not
// encode; a failed round trip or command is its Cmd's error (go-redis sets
// a failed round trip's error on every command).
func (b *Broker) pipeline(ctx context.Context, stream string, msgs []*message.Message, before func(goredis.Pipeliner)) ([]*goredis.StringCmd, error) {
	values := make([]map[string]any, len(msgs))
	for i, m := range msgs {
		v, err := marshaller.Marshal(stream, m)
		if err != nil {
			return nil, fmt.Errorf("cannot marshal message %s: %w", m.UUID, err)
		}
		values[i] = v
	}
	if len(msgs) == 1 && before == nil {
		// Alone, an XADD needs no pipeline (nor its allocations).
		return []*goredis.StringCmd{b.client.XAdd(ctx, &goredis.XAddArgs{Stream: stream, Values: values[0]})}, nil
	}
	xadds := make([]*goredis.StringCmd, len(msgs))
	p := b.client.Pipeline()
	if before != nil {
		before(p)
	}
	for i := range msgs {
		xadds[i] = p.XAdd(ctx, &goredis.XAddArgs{Stream: stream, Values: values[i]})
	}
	_, _ = p.Exec(ctx) // its error is the first command's, read per command
	return xadds, nil
}

func firstErr[C goredis.Cmder](cmds []C) error {
	for _, c := range cmds {
		if err := c.Err(); err != nil {
			return err
		}
	}
	return nil
}
