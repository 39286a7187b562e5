package pipeline

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/go-json-experiment/json/jsontext"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/labelpipe/labelpipe/pipeline/internal/jsondec"
)

// trial, passed to ingress by a preview, makes the stage chain free of side
// effects (Previewer stages preview instead of processing) and records each
// stage's verdict.
type trial struct {
	// noHeaders skips raw stages: there is no request to check.
	noHeaders bool
	verdicts  []StageVerdict
}

// ingress runs the stage chain on one export. Leading raw stages run
// before the body is decoded; the body is decoded once, then every other
// stage sees Payload. It returns nil when the export passed every stage,
// else the stopping stage's error (a Drop among them). tr is nil except in
// a preview.
func (p *Pipeline) ingress(ctx context.Context, stages []builtStage, e *Export, tr *trial) error {
	decoded := false
	for _, s := range stages {
		_, raw := s.stage.(RawStage)
		if raw && tr != nil && tr.noHeaders {
			tr.verdicts = append(tr.verdicts, StageVerdict{Name: s.cfg.Name, Type: s.cfg.Type,
				Verdict: VerdictSkipped, Detail: "no request headers in preview (pass --secret to check it)"})
			continue
		}
		if !raw && !decoded {
			if err := decodePayload(e); err != nil {
				return err
			}
			decoded = true
		}
		err := p.runStage(ctx, s, e, tr != nil)
		if tr != nil {
			tr.record(s, err)
		}
		if err != nil {
			return err
		}
	}
	if !decoded {
		return decodePayload(e)
	}
	return nil
}

func (tr *trial) record(s builtStage, err error) {
	v := StageVerdict{Name: s.cfg.Name, Type: s.cfg.Type, Verdict: VerdictOf(err)}
	switch se, _ := AsStageError(err); v.Verdict {
	case VerdictPass, VerdictDuplicate:
	case VerdictDrop, VerdictReject:
		v.Detail = se.Msg
	default:
		v.Detail = err.Error()
	}
	tr.verdicts = append(tr.verdicts, v)
}

// runStage runs one stage under its span, measures it, and returns its
// error. In a preview a Previewer stage previews instead.
func (p *Pipeline) runStage(ctx context.Context, s builtStage, e *Export, preview bool) error {
	start := time.Now()
	ctx, span := p.stageSpan(ctx, s, e.ID, start)
	var err error
	if pv, ok := s.stage.(Previewer); ok && preview {
		err = pv.Preview(ctx, e)
	} else {
		err = s.stage.Process(ctx, e)
	}
	p.endStage(ctx, span, s, e.ID, start, err)
	return err
}

func (p *Pipeline) stageSpan(ctx context.Context, s builtStage, id string, start time.Time) (context.Context, trace.Span) {
	ctx, span := p.tracer.Start(ctx, "stage "+s.cfg.Name, trace.WithTimestamp(start))
	if span.IsRecording() {
		span.SetAttributes(attribute.String("labelpipe.stage.type", s.cfg.Type),
			attribute.String("labelpipe.stage.name", s.cfg.Name),
			attribute.String("labelpipe.export.id", id))
	}
	return ctx, span
}

// endStage records a stage's outcome on its span, metrics and log, and
// ends the span.
func (p *Pipeline) endStage(ctx context.Context, span trace.Span, s builtStage, id string, start time.Time, err error) {
	defer span.End()
	verdict := VerdictOf(err)
	se, _ := AsStageError(err)
	switch verdict {
	case VerdictDrop:
		span.AddEvent("dropped", trace.WithAttributes(attribute.String("reason", se.Msg)))
	case VerdictDuplicate:
		span.AddEvent("duplicate", trace.WithAttributes(attribute.String("labelpipe.duplicate_of", se.DuplicateOf)))
	case VerdictReject:
		span.AddEvent("rejected", trace.WithAttributes(attribute.Int("http.response.status_code", se.Status), attribute.String("reason", se.Msg)))
		span.SetStatus(codes.Error, se.Msg)
	case VerdictUnavailable, VerdictError:
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	if span.IsRecording() {
		span.SetAttributes(attribute.String("labelpipe.stage.outcome", verdict.String()))
	}
	p.metrics.stageDur.Record(ctx, time.Since(start).Seconds(), p.metrics.with("stage", s.cfg.Name, "outcome", verdict.String()))
	if verdict == VerdictReject || verdict == VerdictError || verdict == VerdictUnavailable {
		s.log.InfoContext(ctx, "stage stopped the export", "export", id, "outcome", verdict.String(), "err", err)
	}
}

func decodePayload(e *Export) error {
	if len(bytes.TrimSpace(e.Body)) == 0 {
		return Reject(http.StatusBadRequest, "body is empty; want a JSON object")
	}
	v, err := jsondec.Decode(e.Body)
	if err != nil {
		var se *jsontext.SyntacticError
		if errors.As(err, &se) {
			return Reject(http.StatusBadRequest, "body is not valid JSON: %v (at byte %d)", se.Err, se.ByteOffset)
		}
		return Reject(http.StatusBadRequest, "body is not valid JSON: %v", err)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return Reject(http.StatusBadRequest, "body must be a JSON object with an \"event\" field")
	}
	if ev, _ := m["event"].(string); ev == "" {
		return Invalid("payload has no \"event\"", []Violation{{Pointer: "/event", Message: "required: a non-empty string naming the event"}})
	}
	e.Payload = v
	e.orig = v
	return nil
}

// confirm makes final what stages reserved for an export now stored.
func (p *Pipeline) confirm(ctx context.Context, stages []builtStage, e *Export) {
	for _, s := range stages {
		if c, ok := s.stage.(Confirmer); ok {
			if err := c.Confirm(context.WithoutCancel(ctx), e); err != nil {
				s.log.WarnContext(ctx, "could not confirm reservation; a repeat may be accepted again once it lapses", "export", e.ID, "err", err)
			}
		}
	}
}

// release gives back what stages reserved for an export that was not
// accepted, so that the caller's retry is not taken for a duplicate.
func (p *Pipeline) release(ctx context.Context, stages []builtStage, e *Export) {
	for _, s := range stages {
		if r, ok := s.stage.(Releaser); ok {
			if err := r.Release(context.WithoutCancel(ctx), e); err != nil {
				s.log.WarnContext(ctx, "could not release reservation; the caller's retry may be taken for a duplicate", "export", e.ID, "err", err)
			}
		}
	}
}
