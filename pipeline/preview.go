package pipeline

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// PreviewReport says what the pipeline would do with one payload: each
// stage's verdict, the webhook answer, and every request each sink would
// send. Nothing is sent and nothing is stored.
type PreviewReport struct {
	Answer struct {
		Status int    `json:"status"`
		Body   answer `json:"body"`
	} `json:"answer"`
	Stages []StageVerdict `json:"stages"`
	Sinks  []SinkPreview  `json:"sinks"`
}

// StageVerdict is one stage's outcome in a preview.
type StageVerdict struct {
	Name    string  `json:"name"`
	Type    string  `json:"type"`
	Verdict Verdict `json:"verdict"`
	Detail  string  `json:"detail,omitempty"`
}

// SinkPreview is what one sink would send.
type SinkPreview struct {
	Name     string           `json:"name"`
	Type     string           `json:"type"`
	Skipped  string           `json:"skipped,omitempty"`
	Error    string           `json:"error,omitempty"`
	Requests []map[string]any `json:"requests,omitempty"`
}

// Preview runs body through the stages and the sinks' renderers of cfg.
// header is the webhook request's headers; with none, stages that only
// check headers (secret) are skipped and say so. It touches nothing outside
// the process: no Redis (a dedupe stage previews against an empty store,
// the verdict a first delivery gets) and no vendor.
func Preview(ctx context.Context, cfg *Config, opts Options, body []byte, header http.Header) (*PreviewReport, error) {
	p, err := newPipeline(cfg, opts, true)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	return p.preview(ctx, body, header), nil
}

func (p *Pipeline) preview(ctx context.Context, body []byte, header http.Header) *PreviewReport {
	ctx = WithJQLimits(ctx, p.cfg.JQ)
	// Empty lists, not null: a refused payload reaches no sink.
	rep := &PreviewReport{Stages: []StageVerdict{}, Sinks: []SinkPreview{}}
	e := &Export{ID: "preview-" + watermill.NewShortUUID(), ReceivedAt: time.Now(), Header: header, Body: body}
	if header == nil {
		e.Header = http.Header{}
	}
	stop := func(status int, a answer) *PreviewReport {
		rep.Answer.Status, rep.Answer.Body = status, a
		return rep
	}
	tr := &trial{noHeaders: header == nil}
	ch := p.takeChain()
	defer ch.refs.drop()
	err := p.ingress(ctx, ch.stages, e, tr)
	if tr.verdicts != nil {
		rep.Stages = tr.verdicts
	}
	if err != nil {
		code, a, _ := stageAnswer(err)
		return stop(code, a)
	}
	if ev := e.Event(); !ch.events[ev] {
		return stop(http.StatusOK, answer{Status: "ignored", Reason: fmt.Sprintf("no sink subscribes to event %q", ev)})
	}
	md := e.withKey()
	rep.Answer.Status, rep.Answer.Body = http.StatusAccepted, answer{Status: "accepted", ID: e.ID, Key: e.key}
	for _, s := range p.sinkList() {
		if s.removed.Load() {
			continue
		}
		g := s.take()
		bodies, skip, err := g.bodies(ctx, md, e.Payload)
		g.refs.drop()
		sp := SinkPreview{Name: s.cfg.Name, Type: s.cfg.Type, Skipped: skip}
		if err != nil {
			sp.Error = err.Error()
		}
		for i, b := range bodies {
			req := &Request{Sink: s.cfg.Name, ExportID: e.ID, ExportKey: md.Get(backend.MetaExportKey), Chunk: i, Chunks: len(bodies), Body: b}
			var desc map[string]any
			if d, ok := g.sink.(Describer); ok {
				desc = d.Describe(req)
			} else {
				desc = map[string]any{}
			}
			if _, ok := desc["body"]; !ok {
				desc["body"] = json.RawMessage(b)
			}
			desc["chunk"] = i
			desc["idempotency_key"] = req.IdempotencyKey()
			sp.Requests = append(sp.Requests, desc)
		}
		rep.Sinks = append(rep.Sinks, sp)
	}
	return rep
}

// Check builds cfg's stages and sinks offline, as Preview does, and closes
// them: it finds what only building finds (a schema file that is missing
// or broken, a certificate that does not load) without touching anything
// outside the process. validate uses it, so that it rejects what run would.
func Check(cfg *Config, opts Options) error {
	p, err := newPipeline(cfg, opts, true)
	if err != nil {
		return err
	}
	return p.Close()
}
