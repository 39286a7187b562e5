package pipeline

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// AdminHandler serves the admin API:
//
//	GET  /healthz                 the process is up
//	GET  /readyz                  exports can be accepted now (broker/Redis reachable); "warnings" lists how accepted work could still be lost, "degraded" the sinks whose queue is full
//	GET  /metrics                 Prometheus metrics, when a handler was injected
//	GET  /api/sinks               each sink's breaker state, queue depth, DLQ size, pause, rate and last error
//	POST /api/sinks/{sink}/pause  hold the sink's queue: no attempts, no dead letters, no retry budget spent
//	POST /api/sinks/{sink}/resume deliver again
//	POST /api/sinks/{sink}/breaker/reset  close the sink's breaker (the shared one too)
//	GET  /api/dlq?sink=NAME       dead letters (limit=N, default 100)
//	POST /api/dlq/{sink}/replay   requeue dead letters: all, or those a filter picks (see replayFilter); answers replayed/total, or a job with async
//	GET  /api/dlq/replays/{job}   a replay's progress
//	DELETE /api/dlq/{sink}        purge dead letters; ?id=... for some
//	GET  /debug/pprof/...         Go profiles, when admin.pprof is true
//	GET  /                        the status console (see console.go)
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
		now := time.Now()
		out := []map[string]any{}
		for _, s := range p.sinkList() {
			out = append(out, p.sinkView(r.Context(), s, now))
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /api/dlq", func(w http.ResponseWriter, r *http.Request) {
		limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
		if limit <= 0 {
			limit = 100
		}
		sinks := p.sinkList()
		if name := r.URL.Query().Get("sink"); name != "" {
			s, ok := p.sinkNamed(name)
			if !ok {
				writeJSON(w, http.StatusNotFound, map[string]any{"error": p.noSink(name).Error()})
				return
			}
			sinks = []*builtSink{s}
		}
		out := []deadLetterView{}
		for _, s := range sinks {
			es, err := p.dlq.List(r.Context(), s.cfg.Name, limit)
			if err != nil {
				writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": err.Error()})
				return
			}
			for _, d := range es {
				out = append(out, p.deadLetterView(d))
			}
		}
		writeJSON(w, http.StatusOK, out)
	})
	p.mountOps(mux)
	p.mountHistory(mux)
	p.mountConsole(mux)
	mux.HandleFunc("DELETE /api/dlq/{sink}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("sink")
		if _, ok := p.sinkNamed(name); !ok {
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
	return newAdminGuard(&p.cfg.Admin, p.adminSum, p.sessions, p.log.With("component", "admin"), mux)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
