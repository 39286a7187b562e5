package pipeline

// The export history: what the fan-out queued for each accepted export,
// read together with the delivery ledger's records, so that an operator
// can answer "did export X reach Scale?" and resend it.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/trace"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// openHistory takes the history from the broker's backend, when it keeps
// one and history.enabled.
func (p *Pipeline) openHistory(b backend.Backend) {
	if !p.cfg.History.Enabled || p.offline {
		return
	}
	if hb, ok := b.(backend.HistoryBackend); ok {
		p.history = hb.History(p.cfg.History.MaxExports, p.cfg.History.TTL)
	}
}

// generation is a message's delivery generation (MetaGeneration).
func generation(md message.Metadata) int {
	g, _ := strconv.Atoi(md.Get(backend.MetaGeneration))
	return g
}

// exportHistory collects, during one fan-out, the states of the export's
// requests.
type exportHistory struct {
	reqs map[string]backend.RequestState
}

// note records what the fan-out did for sink s: its queued requests, or
// that it skipped the export (no messages, no error), or that it could not
// render it (dead-lettered).
func (h *exportHistory) note(s *builtSink, msgs []*message.Message, err error) {
	if h.reqs == nil {
		h.reqs = map[string]backend.RequestState{}
	}
	if err != nil {
		h.reqs[backend.HistoryKey(s.cfg.Name, -1)] = backend.RequestState{Sink: s.cfg.Name, Chunk: -1, State: backend.StateDeadLettered, Error: err.Error()}
		return
	}
	if len(msgs) == 0 {
		h.reqs[backend.HistoryKey(s.cfg.Name, -1)] = backend.RequestState{Sink: s.cfg.Name, Chunk: -1, State: backend.StateSkipped}
		return
	}
	for i, m := range msgs {
		r := requestOf(m)
		h.reqs[backend.HistoryKey(s.cfg.Name, i)] = backend.RequestState{Sink: s.cfg.Name, Chunk: i, Chunks: len(msgs),
			State: backend.StateQueued, Generation: r.Generation, IdempotencyKey: r.IdempotencyKey()}
	}
	delete(h.reqs, backend.HistoryKey(s.cfg.Name, -1))
}

// requestOf is the request a sink message carries, without its body.
func requestOf(m *message.Message) *Request {
	r := &Request{Sink: m.Metadata.Get(backend.MetaSink), ExportID: m.Metadata.Get(backend.MetaExportID),
		ExportKey: m.Metadata.Get(backend.MetaExportKey), Generation: generation(m.Metadata)}
	r.Chunk, _ = strconv.Atoi(m.Metadata.Get(backend.MetaChunk))
	r.Chunks, _ = strconv.Atoi(m.Metadata.Get(backend.MetaChunks))
	return r
}

// entry is the export's history entry once it is rendered, to store
// before any of its requests is queued; nil without a history.
func (h *exportHistory) entry(ctx context.Context, p *Pipeline, msg *message.Message) *backend.ExportEntry {
	if p.history == nil {
		return nil
	}
	md := msg.Metadata
	if md.Get(backend.MetaOnlySink) != "" || generation(md) > 0 {
		// A replay of a render failure, or a resend: a sink that renders
		// now supersedes its earlier dead-lettered render (chunk -1).
		for _, s := range h.reqs {
			if k := backend.HistoryKey(s.Sink, -1); s.Chunk >= 0 {
				if _, ok := h.reqs[k]; !ok {
					h.reqs[k] = backend.RequestState{Sink: s.Sink, Chunk: -1, State: stateSuperseded}
				}
			}
		}
	}
	// The fan-out time rides in the write the fan-out makes anyway: it is
	// every request's "queued" on its timeline.
	e := &backend.ExportEntry{ID: md.Get(backend.MetaExportID), Event: md.Get(backend.MetaEvent), Project: md.Get(backend.MetaProject),
		IssueID: md.Get(backend.MetaIssueID), Key: md.Get(backend.MetaExportKey), Payload: msg.Payload,
		Generation: generation(md), Requests: h.reqs, QueuedAt: map[int]time.Time{generation(md): time.Now()}}
	if int64(len(e.Payload)) > p.cfg.History.MaxPayloadBytes {
		e.Payload, e.PayloadDropped = nil, true
	}
	e.ReceivedAt, _ = receivedAt(md)
	if sc := trace.SpanContextFromContext(ctx); sc.HasTraceID() {
		e.TraceID = sc.TraceID().String()
	}
	return e
}

// addHistory stores e. A history that fails costs the export nothing: it
// is logged.
func (p *Pipeline) addHistory(ctx context.Context, e *backend.ExportEntry) {
	if err := p.history.Add(context.WithoutCancel(ctx), e); err != nil {
		p.log.WarnContext(ctx, "could not record the export in the history", "export", e.ID, "err", err)
	}
}

// noteState records a request's state after a failure, a failed attempt
// (delivering) or a dead letter, with an event for its timeline.
// Deliveries write nothing here: the ledger's record says delivered, and
// when.
func (p *Pipeline) noteState(ctx context.Context, msg *message.Message, sink string, chunk, attempts int, state string, cause error) {
	if p.history == nil {
		return
	}
	r := requestOf(msg)
	s := backend.RequestState{Sink: sink, Chunk: chunk, Chunks: r.Chunks, State: state, Generation: r.Generation, Attempts: attempts, Error: cause.Error()}
	if chunk >= 0 {
		r.Sink, r.Chunk = sink, chunk
		s.IdempotencyKey = r.IdempotencyKey()
	}
	var de *DeliveryError
	if errors.As(cause, &de) {
		s.Status = de.Status
	}
	ev := backend.RequestEvent{At: time.Now(), Event: backend.EventAttemptFailed, Generation: r.Generation, Attempt: attempts,
		Status: s.Status, Error: clip(s.Error, maxEventError)}
	if state == backend.StateDeadLettered {
		ev.Event = backend.EventDeadLettered
	}
	s.Events = []backend.RequestEvent{ev}
	if err := p.history.SetState(context.WithoutCancel(ctx), r.ExportID, s); err != nil {
		p.log.WarnContext(ctx, "could not record a request's state in the history", "export", r.ExportID, "err", err)
	}
}

// ExportView is one export as the admin API shows it.
type ExportView struct {
	ID         string    `json:"id"`
	ReceivedAt time.Time `json:"received_at"`
	Event      string    `json:"event"`
	Project    string    `json:"project,omitempty"`
	IssueID    string    `json:"issue_id,omitempty"`
	TraceID    string    `json:"trace_id,omitempty"`
	TraceURL   string    `json:"trace_url,omitempty"`
	ExportKey  string    `json:"export_key,omitempty"`
	Generation int       `json:"generation,omitempty"`
	// Sinks is each sink's state: the least advanced of its requests.
	Sinks map[string]string `json:"sinks"`
	// Requests are every request, by sink then chunk (only in full).
	Requests []RequestView `json:"requests,omitempty"`
}

// maxEventError bounds the error an event keeps: MaxRequestEvents of
// them are kept per request.
const maxEventError = 300

// clip cuts s to at most n bytes, on a rune boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// RequestView is one request's state, from its history state and its
// delivery record.
type RequestView struct {
	backend.RequestState
	Attempts int `json:"attempts"`
	// DeliveredAt is when the ledger recorded the delivery.
	DeliveredAt time.Time `json:"delivered_at,omitzero"`
	// Steps are what a multi-step sink checkpointed (a vendor's task id).
	Steps map[string]string `json:"steps,omitempty"`
	// Timeline is what happened to the request, generation by generation,
	// oldest first: queued (or resent), its last failed attempts, dead
	// lettered, delivered (only in full).
	Timeline []backend.RequestEvent `json:"timeline,omitempty"`
}

// listPage is how many exports a listing reads the delivery records of
// at once.
const listPage = 100

// stateSuperseded marks a render failure (chunk -1) that a later render
// of the same sink replaced; it is not shown.
const stateSuperseded = "superseded"

// stateRank orders states from least to most settled, for a sink's
// summary: a sink is as far as its least advanced request.
var stateRank = map[string]int{backend.StateDeadLettered: 0, backend.StateDelivering: 1, backend.StateQueued: 2,
	backend.StateDelivered: 3, backend.StateSkipped: 4}

// timelineGens is how many generations before a request's current one
// its timeline looks up in the ledger.
const timelineGens = 10

// ledgerKey names generation g of request s of export id.
func ledgerKey(id string, s backend.RequestState, g int) backend.DeliveryKey {
	return (&Request{Sink: s.Sink, ExportID: id, Chunk: s.Chunk, Generation: g}).Key()
}

// ledgerKeys appends the delivery records view reads for e: each
// request's current generation, and in full the earlier ones of its
// timeline.
func ledgerKeys(keys []backend.DeliveryKey, e *backend.ExportEntry, full bool) []backend.DeliveryKey {
	for _, s := range e.Requests {
		if s.Chunk < 0 || s.State == stateSuperseded {
			continue
		}
		lo := s.Generation
		if full {
			lo = max(0, s.Generation-timelineGens)
		}
		for g := lo; g <= s.Generation; g++ {
			keys = append(keys, ledgerKey(e.ID, s, g))
		}
	}
	return keys
}

// records reads keys' delivery records in one call.
func (p *Pipeline) records(ctx context.Context, keys []backend.DeliveryKey) (map[backend.DeliveryKey]backend.DeliveryRecord, error) {
	recs, err := p.ledger.LookupMany(ctx, keys)
	if err != nil {
		return nil, fmt.Errorf("read the delivery records: %w", err)
	}
	m := make(map[backend.DeliveryKey]backend.DeliveryRecord, len(keys))
	for i, k := range keys {
		m[k] = recs[i]
	}
	return m, nil
}

// view joins an entry with its requests' delivery records, read by the
// caller (ledgerKeys, records). A request is delivering while a copy
// holds its lease, and a queued one once an attempt failed: derived here,
// so that the happy path writes nothing per attempt.
func (p *Pipeline) view(e *backend.ExportEntry, full bool, recs map[backend.DeliveryKey]backend.DeliveryRecord) *ExportView {
	v := &ExportView{ID: e.ID, ReceivedAt: e.ReceivedAt, Event: e.Event, Project: e.Project, IssueID: e.IssueID,
		TraceID: e.TraceID, ExportKey: e.Key, Generation: e.Generation, Sinks: map[string]string{}}
	if e.TraceID != "" && p.cfg.Admin.TraceURL != "" {
		v.TraceURL = strings.ReplaceAll(p.cfg.Admin.TraceURL, "{trace_id}", e.TraceID)
	}
	for _, s := range e.Requests {
		if s.State == stateSuperseded {
			continue
		}
		rv := RequestView{RequestState: s, Attempts: s.Attempts}
		rv.Events = nil // shown in the timeline
		if s.Chunk >= 0 {
			rec := recs[ledgerKey(e.ID, s, s.Generation)]
			rv.Attempts, rv.Steps = max(rec.Attempts, s.Attempts), rec.Steps
			switch {
			case rec.Delivered:
				rv.State, rv.DeliveredAt = backend.StateDelivered, rec.DeliveredAt
			case rec.Leased, s.State == backend.StateQueued && rec.Attempts > 0:
				rv.State = backend.StateDelivering // a replayed dead letter too, while it is sent
			}
		}
		if full {
			rv.Timeline = timeline(e, s, recs)
		}
		if cur, ok := v.Sinks[s.Sink]; !ok || stateRank[rv.State] < stateRank[cur] {
			v.Sinks[s.Sink] = rv.State
		}
		if full {
			v.Requests = append(v.Requests, rv)
		}
	}
	slices.SortFunc(v.Requests, func(a, b RequestView) int {
		return cmp.Or(strings.Compare(a.Sink, b.Sink), cmp.Compare(a.Chunk, b.Chunk))
	})
	return v
}

// timeline is request s's changes, generation by generation: queued (or
// resent) at its generation's fan-out, the failures the history kept,
// delivered at the ledger's time. An earlier generation is shown when it
// left a trace (an event, a ledger record); the current one always.
func timeline(e *backend.ExportEntry, s backend.RequestState, recs map[backend.DeliveryKey]backend.DeliveryRecord) []backend.RequestEvent {
	gens := map[int]bool{s.Generation: true}
	for _, ev := range s.Events {
		gens[ev.Generation] = true
	}
	if s.Chunk >= 0 {
		for g := max(0, s.Generation-timelineGens); g < s.Generation; g++ {
			if r := recs[ledgerKey(e.ID, s, g)]; r.Delivered || r.Attempts > 0 {
				gens[g] = true
			}
		}
	}
	var out []backend.RequestEvent
	for _, g := range slices.Sorted(maps.Keys(gens)) {
		if t, ok := e.QueuedAt[g]; ok {
			ev := backend.RequestEvent{At: t, Event: backend.EventQueued, Generation: g}
			if g > 0 {
				ev.Event = backend.EventResent
			}
			out = append(out, ev)
		}
		n := len(out)
		for _, ev := range s.Events {
			if ev.Generation == g {
				out = append(out, ev)
			}
		}
		if s.Chunk < 0 {
			// Skipped or not rendered: decided at the fan-out, which
			// writes no event.
			if t, ok := e.QueuedAt[g]; ok && g == s.Generation && len(out) == n && s.State != backend.StateQueued {
				out = append(out, backend.RequestEvent{At: t, Event: s.State, Generation: g, Error: clip(s.Error, maxEventError)})
			}
			continue
		}
		if r := recs[ledgerKey(e.ID, s, g)]; r.Delivered && !r.DeliveredAt.IsZero() {
			out = append(out, backend.RequestEvent{At: r.DeliveredAt, Event: backend.EventDelivered, Generation: g, Attempt: r.Attempts})
		}
	}
	return out
}

// mountHistory adds /api/exports to the admin mux.
func (p *Pipeline) mountHistory(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/exports", p.listExports)
	mux.HandleFunc("GET /api/exports/{id}", p.getExport)
	mux.HandleFunc("POST /api/exports/{id}/resend", p.resendExport)
}

func (p *Pipeline) noHistory(w http.ResponseWriter) bool {
	if p.history == nil {
		writeJSON(w, http.StatusNotFound, map[string]any{"error": "the export history is off (history.enabled: false, or the broker's backend keeps none)"})
		return true
	}
	return false
}

func parseTime(name, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return time.Now().Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%s: %q is neither an RFC 3339 time nor a duration ago such as 1h", name, v)
}

func (p *Pipeline) listExports(w http.ResponseWriter, r *http.Request) {
	if p.noHistory(w) {
		return
	}
	q := r.URL.Query()
	bad := func(err error) { writeJSON(w, http.StatusBadRequest, map[string]any{"error": err.Error()}) }
	since, err := parseTime("since", q.Get("since"))
	if err != nil {
		bad(err)
		return
	}
	until, err := parseTime("until", q.Get("until"))
	if err != nil {
		bad(err)
		return
	}
	limit := 50
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 {
			bad(fmt.Errorf("limit: %q is not a count ≥ 1", v))
			return
		}
	}
	limit = min(limit, 1000)
	issue, project, sink, state := q.Get("issue_id"), q.Get("project"), q.Get("sink"), q.Get("state")
	if sink != "" {
		if _, ok := p.sinkNamed(sink); !ok {
			bad(p.noSink(sink))
			return
		}
	}
	if _, ok := stateRank[state]; state != "" && !ok {
		bad(fmt.Errorf("state: %q is none of queued, delivering, delivered, dead_lettered, skipped", state))
		return
	}
	out := []*ExportView{}
	var verr error
	// A page of exports, their delivery records read in one call: a
	// listing costs a read per page, not one per request.
	page := make([]*backend.ExportEntry, 0, min(limit, listPage))
	var keys []backend.DeliveryKey
	flush := func() bool {
		keys = keys[:0]
		for _, e := range page {
			keys = ledgerKeys(keys, e, false)
		}
		recs, err := p.records(r.Context(), keys)
		if err != nil {
			verr = err
			return false
		}
		for _, e := range page {
			v := p.view(e, false, recs)
			if sink != "" || state != "" {
				match := false
				for s, st := range v.Sinks {
					if (sink == "" || s == sink) && (state == "" || st == state) {
						match = true
					}
				}
				if !match {
					continue
				}
			}
			if out = append(out, v); len(out) == limit {
				return false
			}
		}
		page = page[:0]
		return true
	}
	more := true
	err = p.history.Scan(r.Context(), since, until, func(e *backend.ExportEntry) bool {
		if (issue != "" && e.IssueID != issue) || (project != "" && e.Project != project) {
			return true
		}
		page = append(page, e)
		if len(page) == cap(page) {
			more = flush()
		}
		return more
	})
	if err == nil && more && len(page) > 0 {
		flush()
	}
	if err = cmp.Or(err, verr); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"exports": out})
}

func (p *Pipeline) getExport(w http.ResponseWriter, r *http.Request) {
	if p.noHistory(w) {
		return
	}
	e, ok, err := p.history.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": err.Error()})
		return
	}
	if !ok {
		writeJSON(w, http.StatusNotFound, map[string]any{"error": "no export " + r.PathValue("id") + " in the history"})
		return
	}
	recs, err := p.records(r.Context(), ledgerKeys(nil, e, true))
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, p.view(e, true, recs))
}

// resendExport publishes the export again as a new delivery generation, to
// one sink or all: its requests get delivery records of their own, so they
// are sent again, with the same idempotency keys unless fresh.
func (p *Pipeline) resendExport(w http.ResponseWriter, r *http.Request) {
	if p.noHistory(w) {
		return
	}
	var body struct {
		Sink  string `json:"sink"`
		Fresh bool   `json:"fresh"`
	}
	if r.ContentLength != 0 && r.Body != nil {
		dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<16))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil && !errors.Is(err, io.EOF) {
			writeJSON(w, http.StatusBadRequest, map[string]any{"error": "body must be {\"sink\", \"fresh\"} or empty: " + err.Error()})
			return
		}
	}
	if body.Sink != "" {
		if _, ok := p.sinkNamed(body.Sink); !ok {
			writeJSON(w, http.StatusNotFound, map[string]any{"error": p.noSink(body.Sink).Error()})
			return
		}
	}
	ctx := r.Context()
	e, ok, err := p.history.Get(ctx, r.PathValue("id"))
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": err.Error()})
		return
	}
	if !ok {
		writeJSON(w, http.StatusNotFound, map[string]any{"error": "no export " + r.PathValue("id") + " in the history"})
		return
	}
	if e.PayloadDropped {
		writeJSON(w, http.StatusConflict, map[string]any{"error": "export " + e.ID + " was larger than history.max_payload_bytes: its body was not kept, so it cannot be resent; send it again from Aquarium"})
		return
	}
	gen := e.Generation + 1
	e.Generation, e.Requests = gen, nil
	if err := p.history.Add(ctx, e); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": err.Error()})
		return
	}
	key := cmp.Or(e.Key, e.ID)
	if body.Fresh {
		key += "~fresh" + strconv.Itoa(gen)
	}
	msg := message.NewMessage(e.ID+"~g"+strconv.Itoa(gen), e.Payload)
	msg.Metadata = message.Metadata{
		backend.MetaExportID: e.ID, backend.MetaExportKey: key,
		backend.MetaReceivedAt: e.ReceivedAt.UTC().Format(time.RFC3339Nano),
		backend.MetaEvent:      e.Event, backend.MetaProject: e.Project, backend.MetaIssueID: e.IssueID,
		backend.MetaGeneration: strconv.Itoa(gen),
	}
	if body.Sink != "" {
		msg.Metadata.Set(backend.MetaOnlySink, body.Sink)
	}
	if err := p.publishMsgs(context.WithoutCancel(ctx), backend.TopicExports, msg); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": "publish the resend: " + err.Error()})
		return
	}
	p.log.WarnContext(ctx, "export resent by an operator", "export", e.ID, "sink", cmp.Or(body.Sink, "(all)"),
		"generation", gen, "fresh", body.Fresh, "by", adminWho(r))
	writeJSON(w, http.StatusAccepted, map[string]any{"export": e.ID, "sink": body.Sink, "generation": gen, "fresh": body.Fresh})
}
