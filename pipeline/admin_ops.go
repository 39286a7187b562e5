package pipeline

// The admin API's operator controls: pause and resume a sink, reset its
// breaker, and replay dead letters chosen by a filter, with progress. Each
// is a change, so the guard asks for the admin credential and refuses
// cross-origin browsers; each is logged with who asked.

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// mountOps adds the operator controls to the admin mux.
func (p *Pipeline) mountOps(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/sinks/{sink}/pause", func(w http.ResponseWriter, r *http.Request) { p.setPaused(w, r, true) })
	mux.HandleFunc("POST /api/sinks/{sink}/resume", func(w http.ResponseWriter, r *http.Request) { p.setPaused(w, r, false) })
	mux.HandleFunc("POST /api/sinks/{sink}/breaker/reset", p.resetBreaker)
	mux.HandleFunc("POST /api/dlq/{sink}/replay", p.replayHandler)
	mux.HandleFunc("GET /api/dlq/replays/{job}", p.replayProgress)
}

// adminSink finds the sink the path names, or answers 404.
func (p *Pipeline) adminSink(w http.ResponseWriter, r *http.Request) (*builtSink, bool) {
	s, ok := p.sinkNamed(r.PathValue("sink"))
	if !ok {
		writeJSON(w, http.StatusNotFound, map[string]any{"error": p.noSink(r.PathValue("sink")).Error()})
	}
	return s, ok
}

func (p *Pipeline) setPaused(w http.ResponseWriter, r *http.Request, pause bool) {
	s, ok := p.adminSink(w, r)
	if !ok {
		return
	}
	var pz *backend.Pause
	if pause {
		pz = &backend.Pause{By: adminWho(r), At: time.Now().UTC()}
	}
	if err := p.pauses.set(r.Context(), s.cfg.Name, pz); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": err.Error()})
		return
	}
	what := "sink resumed by an operator"
	if pause {
		what = "sink paused by an operator: its queue holds until resumed"
	}
	s.log.WarnContext(r.Context(), what, "by", adminWho(r), "shared", p.pauses.store != nil)
	writeJSON(w, http.StatusOK, map[string]any{"sink": s.cfg.Name, "paused": pause, "shared": p.pauses.store != nil})
}

func (p *Pipeline) resetBreaker(w http.ResponseWriter, r *http.Request) {
	s, ok := p.adminSink(w, r)
	if !ok {
		return
	}
	from, err := s.cur().policy.Reset(r.Context())
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": "reset the shared breaker: " + err.Error()})
		return
	}
	s.log.WarnContext(r.Context(), "circuit breaker reset by an operator", "by", adminWho(r), "from", from.String())
	writeJSON(w, http.StatusOK, map[string]any{"sink": s.cfg.Name, "breaker": s.cur().policy.StateContext(r.Context()).String(), "was": from.String()})
}

// replayFilter picks dead letters to replay. Every field set must match;
// none set picks them all.
type replayFilter struct {
	// IDs are DLQ entry ids.
	IDs []string `json:"ids"`
	// ExportID is the export's id (the webhook's answer).
	ExportID string `json:"export_id"`
	// IssueID is Aquarium's issue id.
	IssueID string `json:"issue_id"`
	// Status is the vendor's last HTTP status; 0 for "no answer".
	Status *int `json:"status"`
	// OlderThan and NewerThan bound how long ago the entry failed, e.g. "10m".
	OlderThan string `json:"older_than"`
	NewerThan string `json:"newer_than"`
	// Async answers 202 with a job at once; GET /api/dlq/replays/{job}
	// reports its progress.
	Async bool `json:"async"`

	older, newer time.Duration
}

// parseReplayFilter reads the filter from the JSON body or, when there is
// none, the query string.
func parseReplayFilter(r *http.Request) (replayFilter, error) {
	var f replayFilter
	if r.ContentLength != 0 && r.Body != nil {
		dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
			return f, fmt.Errorf("body must be a JSON filter {\"ids\", \"export_id\", \"issue_id\", \"status\", \"older_than\", \"newer_than\", \"async\"} or empty: %w", err)
		}
	}
	q := r.URL.Query()
	if err := f.fromQuery(q); err != nil {
		return f, err
	}
	var err error
	if f.older, err = filterAge("older_than", f.OlderThan); err != nil {
		return f, err
	}
	if f.newer, err = filterAge("newer_than", f.NewerThan); err != nil {
		return f, err
	}
	return f, nil
}

func (f *replayFilter) fromQuery(q url.Values) error {
	f.IDs = append(f.IDs, q["id"]...)
	for k, dst := range map[string]*string{"export_id": &f.ExportID, "issue_id": &f.IssueID, "older_than": &f.OlderThan, "newer_than": &f.NewerThan} {
		if v := q.Get(k); v != "" {
			*dst = v
		}
	}
	if v := q.Get("status"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("status: %q is not an HTTP status", v)
		}
		f.Status = &n
	}
	if v := q.Get("async"); v != "" {
		f.Async = v == "1" || v == "true"
	}
	return nil
}

func filterAge(name, v string) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%s: %q is not a duration such as 10m or 2h", name, v)
	}
	return d, nil
}

// selective reports whether the filter needs each entry looked at (more
// than ids).
func (f *replayFilter) selective() bool {
	return f.ExportID != "" || f.IssueID != "" || f.Status != nil || f.older > 0 || f.newer > 0
}

func (f *replayFilter) match(d *backend.DeadLetter, now time.Time) bool {
	if len(f.IDs) > 0 && !slices.Contains(f.IDs, d.ID) {
		return false
	}
	if f.ExportID != "" && d.ExportID != f.ExportID {
		return false
	}
	if f.IssueID != "" && issueOf(d) != f.IssueID {
		return false
	}
	if f.Status != nil && d.Status != *f.Status {
		return false
	}
	if f.older > 0 || f.newer > 0 {
		at, err := time.Parse(time.RFC3339Nano, d.FailedAt)
		if err != nil {
			return false
		}
		age := now.Sub(at)
		if (f.older > 0 && age < f.older) || (f.newer > 0 && age > f.newer) {
			return false
		}
	}
	return true
}

func issueOf(d *backend.DeadLetter) string {
	if d.Message == nil {
		return ""
	}
	return d.Message.Metadata.Get(backend.MetaIssueID)
}

// replayJob is one replay's progress.
type replayJob struct {
	ID       string    `json:"job"`
	Sink     string    `json:"sink"`
	Started  time.Time `json:"started"`
	Total    int       `json:"total"`
	Replayed int       `json:"replayed"`
	Done     bool      `json:"done"`
	Error    string    `json:"error,omitempty"`
	mu       sync.Mutex
}

func (j *replayJob) snapshot() map[string]any {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := map[string]any{"job": j.ID, "sink": j.Sink, "started": j.Started, "total": j.Total, "replayed": j.Replayed, "done": j.Done}
	if j.Error != "" {
		out["error"] = j.Error
	}
	return out
}

// replayJobs are this process's replays, the last maxReplayJobs kept.
type replayJobs struct {
	mu   sync.Mutex
	byID map[string]*replayJob
	ids  []string
}

const maxReplayJobs = 100

func (rj *replayJobs) add(sink string) *replayJob {
	j := &replayJob{ID: strings.ToLower(rand.Text()[:12]), Sink: sink, Started: time.Now().UTC()}
	rj.mu.Lock()
	defer rj.mu.Unlock()
	rj.byID[j.ID] = j
	rj.ids = append(rj.ids, j.ID)
	if len(rj.ids) > maxReplayJobs {
		delete(rj.byID, rj.ids[0])
		rj.ids = rj.ids[1:]
	}
	return j
}

func (p *Pipeline) replayHandler(w http.ResponseWriter, r *http.Request) {
	s, ok := p.sinkNamed(r.PathValue("sink"))
	if !ok {
		// 400, as it always was for replay.
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": p.noSink(r.PathValue("sink")).Error(), "replayed": 0})
		return
	}
	f, err := parseReplayFilter(r)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": err.Error()})
		return
	}
	ids := f.IDs
	if f.selective() {
		all, err := p.dlq.List(r.Context(), s.cfg.Name, 0)
		if err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": err.Error()})
			return
		}
		now := time.Now()
		ids = []string{}
		for _, d := range all {
			if f.match(d, now) {
				ids = append(ids, d.ID)
			}
		}
	}
	job := p.replays.add(s.cfg.Name)
	p.log.WarnContext(r.Context(), "dead letters replayed by an operator", "sink", s.cfg.Name, "by", adminWho(r),
		"filter", f.describe(), "job", job.ID)
	if f.selective() && len(ids) == 0 {
		job.Done = true
		writeJSON(w, http.StatusOK, job.snapshot())
		return
	}
	run := func(ctx context.Context) {
		n, err := p.replayJob(ctx, s, ids, job)
		job.mu.Lock()
		job.Replayed, job.Done = n, true
		if err != nil {
			job.Error = err.Error()
		}
		job.mu.Unlock()
		if err != nil {
			s.log.ErrorContext(ctx, "replay stopped", "job", job.ID, "replayed", n, "err", err)
		}
	}
	if f.Async {
		go run(p.hardStop)
		w.Header().Set("Location", "/api/dlq/replays/"+job.ID)
		writeJSON(w, http.StatusAccepted, job.snapshot())
		return
	}
	run(r.Context())
	ans := job.snapshot()
	code := http.StatusOK
	if job.Error != "" {
		code = http.StatusBadRequest
	}
	writeJSON(w, code, ans)
}

// replayJob takes the entries with ids (all when ids is nil) and puts them
// back on their queue, counting in job.
func (p *Pipeline) replayJob(ctx context.Context, s *builtSink, ids []string, job *replayJob) (int, error) {
	entries, err := p.dlq.Take(ctx, s.cfg.Name, ids)
	if err != nil {
		return 0, fmt.Errorf("take dead letters: %w", err)
	}
	job.mu.Lock()
	job.Total = len(entries)
	job.mu.Unlock()
	return replayEntries(ctx, p.dlq, pipelinePublisher{p: p, ctx: ctx}, s.cfg.Name, entries, func(n int) {
		job.mu.Lock()
		job.Replayed = n
		job.mu.Unlock()
	})
}

func (f *replayFilter) describe() string {
	var parts []string
	if len(f.IDs) > 0 {
		parts = append(parts, "ids="+strings.Join(f.IDs, ","))
	}
	for _, kv := range [][2]string{{"export_id", f.ExportID}, {"issue_id", f.IssueID}, {"older_than", f.OlderThan}, {"newer_than", f.NewerThan}} {
		if kv[1] != "" {
			parts = append(parts, kv[0]+"="+kv[1])
		}
	}
	if f.Status != nil {
		parts = append(parts, "status="+strconv.Itoa(*f.Status))
	}
	if len(parts) == 0 {
		return "all"
	}
	return strings.Join(parts, " ")
}

func (p *Pipeline) replayProgress(w http.ResponseWriter, r *http.Request) {
	p.replays.mu.Lock()
	j, ok := p.replays.byID[r.PathValue("job")]
	p.replays.mu.Unlock()
	if !ok {
		writeJSON(w, http.StatusNotFound, map[string]any{"error": "no replay job " + strconv.Quote(r.PathValue("job")) + " on this replica (the last 100 are kept)"})
		return
	}
	writeJSON(w, http.StatusOK, j.snapshot())
}

// sinkView is one sink as /api/sinks and the console show it.
func (p *Pipeline) sinkView(ctx context.Context, s *builtSink, now time.Time) map[string]any {
	q := p.sinkQueue(ctx, s)
	age := 0.0
	if !q.Oldest.IsZero() {
		age = now.Sub(q.Oldest).Seconds()
	}
	v := map[string]any{
		"name": s.cfg.Name, "type": s.cfg.Type, "events": s.cur().cfg.Events,
		"breaker": s.cur().policy.StateContext(ctx).String(), "queue_depth": q.Depth, "oldest_pending_seconds": age,
		"in_flight_here": len(s.slots), "dlq": p.dlqLen(ctx, s.cfg.Name),
		"delivered_last_minute_here": s.stats.perMinute(now),
	}
	pz, paused := p.pauses.get(ctx, s.cfg.Name)
	v["paused"] = paused
	if s.removed.Load() {
		v["removed"] = true // by a reload: its queue is still delivered
	}
	if paused {
		v["paused_by"], v["paused_at"] = pz.By, pz.At
	}
	if msg, at := s.stats.last(); msg != "" {
		v["last_error"], v["last_error_at"] = msg, at.UTC()
	}
	return v
}

// deadLetterView is a dead letter as /api/dlq shows it: with its issue id
// and, when admin.trace_url is set, a link to its trace.
type deadLetterView struct {
	*backend.DeadLetter
	IssueID  string `json:"issue_id,omitempty"`
	TraceURL string `json:"trace_url,omitempty"`
}

func (p *Pipeline) deadLetterView(d *backend.DeadLetter) deadLetterView {
	v := deadLetterView{DeadLetter: d, IssueID: issueOf(d)}
	if t := p.cfg.Admin.TraceURL; t != "" && d.TraceID != "" {
		v.TraceURL = strings.ReplaceAll(t, "{trace_id}", url.PathEscape(d.TraceID))
	}
	return v
}
