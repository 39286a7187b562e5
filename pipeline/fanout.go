package pipeline

import (
	"context"
	"fmt"
	"slices"
	"strconv"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/codes"

	"github.com/labelpipe/labelpipe/pipeline/backend"
	"github.com/labelpipe/labelpipe/pipeline/internal/jsondec"
)

// fanout decodes an export once and queues one message per request of
// every sink that wants it, on topic sink.<name>.
func (p *Pipeline) fanout(msg *message.Message) error {
	p.fanoutSlots <- struct{}{}
	defer func() { <-p.fanoutSlots }()
	ctx, span := p.consumerSpan(msg, backend.TopicExports)
	defer span.End()
	exportID := msg.Metadata.Get(backend.MetaExportID)

	payload := msg.Context().Value(decodedPayload{})
	if payload == nil {
		var err error
		if payload, err = jsondec.Decode(msg.Payload); err != nil {
			// Only valid JSON is ever published; a corrupt entry cannot be
			// delivered anywhere, so it is logged loudly and dropped.
			span.SetStatus(codes.Error, "corrupt export")
			p.log.ErrorContext(ctx, "export on the broker is not valid JSON; dropping it", "export", exportID, "err", err)
			return nil
		}
	}
	only := msg.Metadata.Get(backend.MetaOnlySink)
	// Sinks whose queue is full are handled last, so that waiting for
	// room (backpressure) never delays the others.
	type refused struct {
		s    *builtSink
		msgs []*message.Message
		use  queueUse
	}
	var full []refused
	// Every sink renders first, so that the history has the export's
	// requests before any of them can be delivered or fail.
	var hist exportHistory
	var rendered []refused
	for _, s := range p.sinkList() {
		if (only != "" && s.cfg.Name != only) || s.removed.Load() {
			continue
		}
		msgs, err := p.render(ctx, s, msg.Metadata, payload)
		hist.note(s, msgs, err)
		if err != nil {
			if err := p.deadLetter(ctx, s, msg, -1, 0, err, withTopic(backend.TopicExports)); err != nil {
				return err
			}
			continue
		}
		if len(msgs) > 0 {
			rendered = append(rendered, refused{s: s, msgs: msgs})
		}
	}
	// The entry goes with the first publish (one round trip on Redis), or
	// alone before the refused sinks wait for room.
	entry := hist.entry(ctx, p, msg)
	for _, r := range rendered {
		s, msgs := r.s, r.msgs
		if use, ok := p.take(ctx, s, msgs, false); !ok {
			full = append(full, refused{s, msgs, use})
			continue
		}
		err := p.publishEntry(ctx, s.topic, entry, msgs...)
		entry = nil
		if err != nil {
			span.RecordError(err)
			// Nacked: the export is fanned out again. Requests already
			// queued for earlier sinks are caught by the delivery ledger.
			return fmt.Errorf("queue requests for sink %s: %w", s.cfg.Name, err)
		}
	}
	if entry != nil {
		p.addHistory(ctx, entry)
	}
	for _, r := range full {
		if err := p.queueFull(ctx, r.s, r.msgs, r.use); err != nil {
			span.RecordError(err)
			return err
		}
	}
	return nil
}

// render turns one sink's bodies for an export into messages for its
// topic, each carrying the export's facts and its chunk.
func (p *Pipeline) render(ctx context.Context, s *builtSink, md message.Metadata, payload any) ([]*message.Message, error) {
	g := s.take()
	defer g.refs.drop()
	bodies, skip, err := g.bodies(ctx, md, payload)
	if err != nil {
		return nil, err
	}
	if skip != "" {
		s.log.DebugContext(ctx, "sink skips the export", "export", md.Get(backend.MetaExportID), "reason", skip)
		return nil, nil
	}
	out := make([]*message.Message, len(bodies))
	for i, b := range bodies {
		// The message id names this acceptance (export id), so two
		// acceptances of the same export never share one on the broker.
		req := Request{Sink: s.cfg.Name, ExportID: md.Get(backend.MetaExportID), Chunk: i, Chunks: len(bodies), Generation: generation(md)}
		m := message.NewMessage(req.Key().String(), b)
		for _, k := range []string{backend.MetaExportID, backend.MetaExportKey, backend.MetaReceivedAt, backend.MetaEvent, backend.MetaProject, backend.MetaIssueID} {
			m.Metadata.Set(k, md.Get(k))
		}
		if g := md.Get(backend.MetaGeneration); g != "" {
			m.Metadata.Set(backend.MetaGeneration, g)
		}
		m.Metadata.Set(backend.MetaSink, s.cfg.Name)
		m.Metadata.Set(backend.MetaChunk, strconv.Itoa(i))
		m.Metadata.Set(backend.MetaChunks, strconv.Itoa(len(bodies)))
		out[i] = m
	}
	return out, nil
}

// bodies runs the sink's event check, filter and body program for an
// export, given its metadata: what the fan-out queues and what a preview
// shows. skip says why the sink takes no part, "" when it does. A render
// error comes with the bodies rendered before it, for the preview.
func (s *sinkGen) bodies(ctx context.Context, md message.Metadata, payload any) (bodies [][]byte, skip string, err error) {
	event := md.Get(backend.MetaEvent)
	if !slices.Contains(s.cfg.Events, event) {
		return nil, fmt.Sprintf("does not subscribe to event %q", event), nil
	}
	export := exportVar(md)
	if s.filter != nil {
		ok, err := s.filter.Bool(ctx, payload, export)
		if err != nil {
			return nil, "", fmt.Errorf("filter: %w", err)
		}
		if !ok {
			return nil, "filter is false", nil
		}
	}
	export["sink"] = s.cfg.Name
	bodies, err = s.sink.Render(ctx, payload, export)
	if err != nil {
		return bodies, "", fmt.Errorf("render: %w", err)
	}
	return bodies, "", nil
}
