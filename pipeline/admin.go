package pipeline

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/labelpipe/labelpipe/pipeline/backend"
)

// AdminHandler serves the admin API:
//
//	GET  /healthz                 the process is up
//	GET  /readyz                  exports can be accepted now (broker/Redis reachable); "warnings" lists how accepted work could still be lost, "degraded" the sinks whose queue is full
//	GET  /metrics                 Prometheus metrics, when a handler was injected
//	GET  /api/sinks               each sink's breaker state, queue depth and DLQ size
//	GET  /api/dlq?sink=NAME       dead letters (limit=N, default 100)
//	POST /api/dlq/{sink}/replay   requeue dead letters; body {"ids": [...]} or empty for all
//	DELETE /api/dlq/{sink}        purge dead letters; ?id=... for some
//	GET  /debug/pprof/...         Go profiles, when admin.pprof is true
//
// Dead letters hold vendors' answers and replays spend vendor quota, so
// everything but the two probes is guarded (see adminGuard): the Host
// must be loopback, an IP, admin.addr's host or in admin.allowed_hosts
// (421 otherwise); cross-origin browser changes get 403; with
// admin.token, changes always and non-loopback reads need
// "Authorization: Bearer <token>" (401 otherwise); without it only
// loopback peers are answered. An embedder mounting this handler gets the
// same guard.
func (p *Pipeline) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "version": p.opts.Version, "replica": p.opts.ReplicaID})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := p.Ready(r.Context()); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "unavailable", "error": err.Error()})
			return
		}
		// Risks are reported, not failed on: failing would take every
		// replica out of the load balancer at once.
		ans := map[string]any{"status": "ready"}
		if risks := p.broker.Risks(r.Context()); len(risks) > 0 {
			ans["warnings"] = risks
		}
		// A full sink queue is degraded, not unready: intake and the
		// other sinks carry on.
		if full := p.queueDegraded(r.Context()); len(full) > 0 {
			ans["status"] = "degraded"
			ans["degraded"] = full
		}
		writeJSON(w, http.StatusOK, ans)
	})
	if p.cfg.Admin.Pprof && p.opts.Profiles != nil {
		mux.Handle("GET /debug/pprof/", p.opts.Profiles)
	}
	if p.opts.Metrics != nil {
		mux.Handle("GET /metrics", p.opts.Metrics)
	}
	mux.HandleFunc("GET /api/sinks", func(w http.ResponseWriter, r *http.Request) {
		var out []map[string]any
		for _, s := range p.sinks {
			q := p.sinkQueue(r.Context(), s)
			age := 0.0
			if !q.Oldest.IsZero() {
				age = time.Since(q.Oldest).Seconds()
			}
			out = append(out, map[string]any{
				"name": s.cfg.Name, "type": s.cfg.Type, "events": s.cfg.Events,
				"breaker": s.policy.State().String(), "queue_depth": q.Depth, "oldest_pending_seconds": age,
				"in_flight_here": len(s.slots), "dlq": p.dlqLen(r.Context(), s.cfg.Name),
			})
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /api/dlq", func(w http.ResponseWriter, r *http.Request) {
		limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
		if limit <= 0 {
			limit = 100
		}
		sinks := p.sinks
		if name := r.URL.Query().Get("sink"); name != "" {
			s, ok := p.byName[name]
			if !ok {
				writeJSON(w, http.StatusNotFound, map[string]any{"error": p.noSink(name).Error()})
				return
			}
			sinks = []*builtSink{s}
		}
		out := []*backend.DeadLetter{}
		for _, s := range sinks {
			es, err := p.dlq.List(r.Context(), s.cfg.Name, limit)
			if err != nil {
				writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": err.Error()})
				return
			}
			out = append(out, es...)
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("POST /api/dlq/{sink}/replay", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			IDs []string `json:"ids"`
		}
		if r.ContentLength != 0 {
			if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
				writeJSON(w, http.StatusBadRequest, map[string]any{"error": "body must be {\"ids\": [...]} or empty: " + err.Error()})
				return
			}
		}
		n, err := p.Replay(r.Context(), r.PathValue("sink"), body.IDs)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]any{"error": err.Error(), "replayed": n})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"replayed": n})
	})
	mux.HandleFunc("DELETE /api/dlq/{sink}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("sink")
		if _, ok := p.byName[name]; !ok {
			writeJSON(w, http.StatusNotFound, map[string]any{"error": p.noSink(name).Error()})
			return
		}
		taken, err := p.dlq.Take(r.Context(), name, r.URL.Query()["id"])
		if err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": "purge: " + err.Error() + " (a purge stopped midway may have removed some; GET /api/dlq?sink=" + name + " lists what is left)"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"purged": len(taken)})
	})
	return newAdminGuard(&p.cfg.Admin, p.adminSum, mux)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
