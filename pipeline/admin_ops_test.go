package pipeline_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/internal/vendortest"
	"github.com/labelpipe/labelpipe/pipeline"
)

// control POSTs to the admin API from loopback (no token configured) and
// wants 200.
func (h *harness) control(path, body string) map[string]any {
	h.t.Helper()
	var out map[string]any
	var rd *strings.Reader
	if body != "" {
		rd = strings.NewReader(body)
	} else {
		rd = strings.NewReader("")
	}
	if code := h.adminDo(http.MethodPost, path, rd, &out); code != http.StatusOK {
		h.t.Fatalf("POST %s %s = %d %v, want 200", path, body, code, out)
	}
	return out
}

// A paused sink's queue holds: no attempt is made, nothing is
// dead-lettered, and the time paused does not count towards
// retry.max_elapsed; resume delivers. On Redis the pause is shared: a
// second replica on the same Redis reports it too.
func TestPauseHoldsTheQueue(t *testing.T) {
	for _, broker := range brokers {
		t.Run(broker, func(t *testing.T) {
			ls := vendortest.NewLabelStudio(t, lsToken)
			cfg := onBroker(t, broker, head("")+labelStudioSink(ls, `
    retry: {max_attempts: 1000, initial_interval: 5ms, max_interval: 20ms, max_elapsed: 400ms}
    breaker: {consecutive_failures: 100000}`))
			h := startHarness(t, cfg)
			ls.SetDown(http.StatusServiceUnavailable)
			body, _ := samplePayload(t, "issue-frames.json")
			h.accept(body)
			waitFake(t, "a few failed attempts", func(ctx context.Context) error { return ls.WaitRequests(ctx, 3) })

			ans := h.control("/api/sinks/label_studio/pause", "")
			if ans["paused"] != true {
				t.Fatalf("pause answered %v", ans)
			}
			st := h.sink("label_studio")
			if !st.Paused || !strings.Contains(st.PausedBy, "loopback") {
				t.Fatalf("/api/sinks after pause = %+v, want paused by a loopback caller", st)
			}
			// At most the attempt under way when the pause came is made.
			atPause := ls.RequestCount()
			// Paused for well past max_elapsed (400ms), by the broker's clock.
			h.eventually(10*time.Second, "the request to wait paused past max_elapsed", func() bool {
				return h.sink("label_studio").Oldest > 1.2
			})
			if n := ls.RequestCount(); n > atPause+1 {
				t.Errorf("vendor got %d requests while paused (%d at the pause), want at most the one under way", n-atPause, atPause)
			}
			if ds := h.deadLetters("label_studio"); len(ds) != 0 {
				t.Fatalf("dead letters while paused = %+v, want none", ds)
			}
			if st := h.sink("label_studio"); st.QueueDepth != 1 {
				t.Errorf("queue depth while paused = %d, want 1 (the request held)", st.QueueDepth)
			}
			if broker == "redis" {
				other := newHarnessWith(t, cfg, func(o *pipeline.Options) { o.ReplicaID = "other" })
				if st := other.sink("label_studio"); !st.Paused {
					t.Errorf("another replica on the same Redis sees %+v, want paused", st)
				}
			}

			ls.SetUp()
			if ans := h.control("/api/sinks/label_studio/resume", ""); ans["paused"] != false {
				t.Fatalf("resume answered %v", ans)
			}
			waitFake(t, "the delivery after resume", func(ctx context.Context) error { return ls.WaitAccepted(ctx, 1) })
			h.eventually(10*time.Second, "the queue to empty", func() bool { return h.sink("label_studio").QueueDepth == 0 })
			st = h.sink("label_studio")
			if st.Paused || st.DLQ != 0 || st.Rate != 1 || !strings.Contains(st.LastErr, "503") {
				t.Errorf("/api/sinks after resume = %+v, want running, no dead letter, 1 delivered, last error the 503", st)
			}
			if !strings.Contains(h.logs.String(), "sink paused by an operator") || !strings.Contains(h.logs.String(), "sink resumed by an operator") {
				t.Errorf("the log does not record the pause and the resume:\n%s", h.logs.String())
			}
		})
	}
}

// Resetting an open breaker lets the waiting request through at once,
// rather than after open_timeout; on Redis the shared state says closed.
func TestBreakerResetClosesIt(t *testing.T) {
	for _, broker := range brokers {
		t.Run(broker, func(t *testing.T) {
			ls := vendortest.NewLabelStudio(t, lsToken)
			h := startHarness(t, onBroker(t, broker, head("")+labelStudioSink(ls, `
    retry: {max_attempts: 100, initial_interval: 5ms, max_interval: 10ms, max_elapsed: 0s}
    breaker: {consecutive_failures: 2, open_timeout: 1h}`)))
			ls.SetDown(http.StatusServiceUnavailable)
			body, _ := samplePayload(t, "issue-frames.json")
			h.accept(body)
			h.eventually(10*time.Second, "the breaker to open", func() bool { return h.sink("label_studio").Breaker == "open" })
			ls.SetUp()
			ans := h.control("/api/sinks/label_studio/breaker/reset", "")
			if ans["was"] != "open" || ans["breaker"] != "closed" {
				t.Fatalf("reset answered %v, want was open, now closed", ans)
			}
			// open_timeout is an hour: only the reset lets it through.
			waitFake(t, "the delivery after the reset", func(ctx context.Context) error { return ls.WaitAccepted(ctx, 1) })
			if st := h.sink("label_studio"); st.Breaker != "closed" || st.DLQ != 0 {
				t.Errorf("/api/sinks after the reset = %+v, want closed and no dead letter", st)
			}
			if !strings.Contains(h.logs.String(), "circuit breaker reset by an operator") {
				t.Errorf("the log does not record the reset")
			}
			var e map[string]any
			if code := h.adminDo(http.MethodPost, "/api/sinks/nosuch/breaker/reset", nil, &e); code != http.StatusNotFound {
				t.Errorf("reset of an unknown sink = %d, want 404", code)
			}
		})
	}
}

// rejectingVendor answers 400 to everything and counts the requests.
func rejectingVendor(t *testing.T) (string, *atomic.Int64) {
	hits := &atomic.Int64{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Error(w, `{"error":"bad request"}`, http.StatusBadRequest)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, hits
}

// Replay takes a filter: by export, by Aquarium issue, by the vendor's
// status, by age; it says how many it replayed out of how many matched,
// and, asked to, runs as a job whose progress can be read.
func TestReplayFilter(t *testing.T) {
	for _, broker := range brokers {
		t.Run(broker, func(t *testing.T) {
			vendor, hits := rejectingVendor(t)
			h := startHarness(t, onBroker(t, broker, head("")+fmt.Sprintf(`  - name: vendor
    type: http
    url: %q
%s
`, vendor, fastPolicy)))
			var exports, issues []string
			for range 3 {
				body, issue := samplePayload(t, "issue-frames.json")
				exports = append(exports, h.accept(body).ID)
				issues = append(issues, issue)
			}
			h.waitDeadLetters("vendor", 3)
			type answer struct {
				Replayed int    `json:"replayed"`
				Total    int    `json:"total"`
				Done     bool   `json:"done"`
				Job      string `json:"job"`
				Error    string `json:"error"`
			}
			tests := []struct {
				name, query, body string
				code              int
				replayed          int
			}{
				{name: "by issue id, JSON", body: `{"issue_id": "` + issues[1] + `"}`, code: 200, replayed: 1},
				{name: "by export id, query", query: "?export_id=" + url.QueryEscape(exports[2]), code: 200, replayed: 1},
				{name: "by status and issue", body: `{"status": 400, "issue_id": "` + issues[0] + `"}`, code: 200, replayed: 1},
				{name: "a status none has", body: `{"status": 503}`, code: 200, replayed: 0},
				{name: "older than an hour", query: "?older_than=1h", code: 200, replayed: 0},
				{name: "newer than an hour, all of them", body: `{"newer_than": "1h"}`, code: 200, replayed: 3},
				{name: "an unknown field", body: `{"issue": "x"}`, code: 400},
				{name: "a bad duration", query: "?older_than=soon", code: 400},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					h.waitDeadLetters("vendor", 3) // the replayed ones come back: the vendor still says 400
					before := hits.Load()
					var a answer
					code := h.adminDo(http.MethodPost, "/api/dlq/vendor/replay"+tt.query, strings.NewReader(tt.body), &a)
					if code != tt.code {
						t.Fatalf("replay %s%s = %d %+v, want %d", tt.query, tt.body, code, a, tt.code)
					}
					if code != http.StatusOK {
						if a.Error == "" {
							t.Errorf("a refused replay says nothing")
						}
						if n := len(h.deadLetters("vendor")); n != 3 {
							t.Errorf("DLQ holds %d after a refused replay, want 3", n)
						}
						return
					}
					if a.Replayed != tt.replayed || a.Total != tt.replayed || !a.Done {
						t.Errorf("replay answered %+v, want %d of %d, done", a, tt.replayed, tt.replayed)
					}
					if tt.replayed > 0 {
						h.eventually(10*time.Second, "the replayed requests to reach the vendor", func() bool { return hits.Load() >= before+int64(tt.replayed) })
					}
				})
			}

			// Async: a job id at once, then its progress.
			h.waitDeadLetters("vendor", 3)
			var a answer
			if code := h.adminDo(http.MethodPost, "/api/dlq/vendor/replay?async=1&issue_id="+issues[2], nil, &a); code != http.StatusAccepted || a.Job == "" {
				t.Fatalf("async replay = %d %+v, want 202 with a job", code, a)
			}
			h.eventually(10*time.Second, "the job to finish", func() bool {
				var p answer
				if code := h.adminDo(http.MethodGet, "/api/dlq/replays/"+a.Job, nil, &p); code != http.StatusOK {
					t.Fatalf("GET the job = %d", code)
				}
				return p.Done && p.Replayed == 1 && p.Total == 1
			})
			if code := h.adminDo(http.MethodGet, "/api/dlq/replays/nosuchjob", nil, &a); code != http.StatusNotFound {
				t.Errorf("an unknown job = %d, want 404", code)
			}
			if !strings.Contains(h.logs.String(), "issue_id="+issues[1]) {
				t.Errorf("the log does not record the filtered replay")
			}
		})
	}
}

// The controls are changes: without the credential, or from another
// origin, they do nothing. The console's session cookie is a credential;
// signing in with a wrong token gives none.
func TestControlsGuarded(t *testing.T) {
	crossSite := map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"}
	h, hits := adminHarness(t, `{addr: "", token: `+adminToken+`}`)
	cookie := signIn(t, h, adminToken)
	if cookie == nil {
		t.Fatal("signing in with the token set no cookie")
	}
	if !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode || cookie.Value == "" || strings.Contains(cookie.Value, adminToken) {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, and not the token", cookie)
	}
	if bad := signIn(t, h, adminToken+"x"); bad != nil {
		t.Fatalf("signing in with a wrong token set a cookie %+v", bad)
	}
	session := map[string]string{"Cookie": cookie.Name + "=" + cookie.Value}
	withSession := func(extra map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range session {
			out[k] = v
		}
		for k, v := range extra {
			out[k] = v
		}
		return out
	}
	tests := []struct {
		name string
		call adminCall
		code int
	}{
		{"pause without a credential", adminCall{method: http.MethodPost, path: "/api/sinks/vendor/pause"}, http.StatusUnauthorized},
		{"pause with a made-up session", adminCall{method: http.MethodPost, path: "/api/sinks/vendor/pause", header: map[string]string{"Cookie": "labelpipe_session=forged"}}, http.StatusUnauthorized},
		{"pause from another origin, with the session", adminCall{method: http.MethodPost, path: "/api/sinks/vendor/pause", header: withSession(crossSite)}, http.StatusForbidden},
		{"pause from another origin, with the token", adminCall{method: http.MethodPost, path: "/api/sinks/vendor/pause", header: map[string]string{"Origin": "https://evil.example", "Authorization": "Bearer " + adminToken}}, http.StatusForbidden},
		{"breaker reset without a credential", adminCall{method: http.MethodPost, path: "/api/sinks/vendor/breaker/reset"}, http.StatusUnauthorized},
		{"filtered replay without a credential", adminCall{method: http.MethodPost, path: "/api/dlq/vendor/replay", body: `{"status": 400}`}, http.StatusUnauthorized},
		{"filtered replay from another origin, with the session", adminCall{method: http.MethodPost, path: "/api/dlq/vendor/replay", body: `{"status": 400}`, header: withSession(crossSite)}, http.StatusForbidden},
		{"sign-in from another origin", adminCall{method: http.MethodPost, path: "/console/session", body: "token=" + adminToken, header: crossSite}, http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := hits.Load()
			a := h.adminCall(tt.call)
			if a.code != tt.code {
				t.Fatalf("%s %s = %d %s, want %d", tt.call.method, tt.call.path, a.code, a.raw, tt.code)
			}
			if st := h.sink("vendor"); st.Paused || st.DLQ != 1 {
				t.Errorf("after a refused call /api/sinks = %+v, want running with its 1 dead letter", st)
			}
			if n := hits.Load(); n != before {
				t.Errorf("vendor got %d requests after a refused call", n-before)
			}
			if a.header.Get("Set-Cookie") != "" {
				t.Errorf("a refused call set a cookie")
			}
		})
	}

	// With the session (same-origin, as the console's fetch is): allowed,
	// and the log says it was a console session.
	if a := h.adminCall(adminCall{method: http.MethodPost, path: "/api/sinks/vendor/pause", header: withSession(map[string]string{"Sec-Fetch-Site": "same-origin"})}); a.code != http.StatusOK {
		t.Fatalf("pause with the session = %d %s", a.code, a.raw)
	}
	if st := h.sink("vendor"); !st.Paused || !strings.Contains(st.PausedBy, "console session") {
		t.Errorf("/api/sinks = %+v, want paused by a console session", st)
	}
	// Signed out, the cookie no longer works.
	// (The client follows the 303 back to the console.)
	if a := h.adminCall(adminCall{method: http.MethodPost, path: "/console/signout", header: session}); a.code != http.StatusOK {
		t.Fatalf("sign out = %d", a.code)
	}
	if a := h.adminCall(adminCall{method: http.MethodPost, path: "/api/sinks/vendor/resume", header: session}); a.code != http.StatusUnauthorized {
		t.Errorf("resume with a signed-out session = %d, want 401", a.code)
	}
	// The page and its session status never carry the token.
	for _, path := range []string{"/", "/console/console.js", "/console/session"} {
		a := h.adminCall(adminCall{method: http.MethodGet, path: path, header: session})
		if a.code != http.StatusOK || strings.Contains(a.raw, adminToken) {
			t.Errorf("GET %s = %d, shows the token: %v", path, a.code, strings.Contains(a.raw, adminToken))
		}
		if a.header.Get("X-Frame-Options") != "DENY" || !strings.Contains(a.header.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
			t.Errorf("GET %s may be framed: %v", path, a.header)
		}
	}
}

// signIn posts the token to the console's sign-in form and returns the
// session cookie it set, nil for none.
func signIn(t *testing.T, h *harness, token string) *http.Cookie {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, h.admin.URL+"/console/session",
		strings.NewReader(url.Values{"token": {token}}.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	c := *h.admin.Client()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-in = %d, want 303 back to the console", resp.StatusCode)
	}
	for _, ck := range resp.Cookies() {
		if ck.Name == "labelpipe_session" && ck.MaxAge > 0 {
			return ck
		}
	}
	if loc := resp.Header.Get("Location"); loc != "/?signin=failed" && token == adminToken {
		t.Errorf("sign-in sent the browser to %q", loc)
	}
	return nil
}

// admin.trace_url must say where the trace id goes; /api/dlq links each
// dead letter to its trace.
func TestTraceURL(t *testing.T) {
	for _, tt := range []struct{ url, want string }{
		{"http://jaeger:16686/trace/{trace_id}", ""},
		{"https://tracing.example/trace?id={trace_id}", ""},
		{"http://jaeger:16686/trace/", "has no {trace_id}"},
		{"jaeger/trace/{trace_id}", "not an http(s) URL"},
	} {
		text := "server: {addr: \"\"}\nadmin: {addr: \"\", trace_url: \"" + tt.url + "\"}\nsinks:\n  - {name: a, type: file, path: a.jsonl}\n"
		_, err := pipeline.ParseConfig(filepath.Join(t.TempDir(), "c.yaml"), []byte(text))
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: %v, want no error", tt.url, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "c.yaml:2:")):
			t.Errorf("%s: %v, want an error at line 2 saying %q", tt.url, err, tt.want)
		}
	}

	h, _ := adminHarness(t, `{addr: "", trace_url: "http://jaeger:16686/trace/{trace_id}"}`)
	var ds []struct {
		TraceID  string `json:"trace_id"`
		TraceURL string `json:"trace_url"`
		IssueID  string `json:"issue_id"`
	}
	if code := h.adminDo(http.MethodGet, "/api/dlq", nil, &ds); code != http.StatusOK || len(ds) != 1 {
		t.Fatalf("GET /api/dlq = %d %+v", code, ds)
	}
	if ds[0].TraceID == "" || ds[0].TraceURL != "http://jaeger:16686/trace/"+ds[0].TraceID || ds[0].IssueID == "" {
		t.Errorf("dead letter = %+v, want its trace link and issue id", ds[0])
	}
}

// A console session is made with the admin token in force: rotating the
// token (admin.token_file, then Reload) ends it.
func TestSessionEndsWithTheToken(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "admin-token")
	if err := os.WriteFile(tokenFile, []byte(adminToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := pipelineIn(t, dir, `server: {addr: ""}
admin: {addr: "", token_file: admin-token}
sinks:
  - {name: archive, type: file, path: archive.jsonl}
`)
	serve := func(method, path, body string, cookie *http.Cookie) *httptest.ResponseRecorder {
		return consoleRequest(t, p, method, path, body, cookie)
	}
	rec := serve(http.MethodPost, "/console/session", url.Values{"token": {adminToken}}.Encode(), nil)
	cookies := rec.Result().Cookies()
	if rec.Code != http.StatusSeeOther || len(cookies) != 1 {
		t.Fatalf("sign-in = %d with cookies %v", rec.Code, cookies)
	}
	if rec := serve(http.MethodPost, "/api/sinks/archive/pause", "", cookies[0]); rec.Code != http.StatusOK {
		t.Fatalf("pause with the session = %d %s", rec.Code, rec.Body)
	}
	if err := os.WriteFile(tokenFile, []byte(strings.Repeat("r", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	if rec := serve(http.MethodPost, "/api/sinks/archive/resume", "", cookies[0]); rec.Code != http.StatusUnauthorized {
		t.Errorf("resume with a session made with the old token = %d, want 401", rec.Code)
	}
}

// consoleRequest serves one same-origin request from loopback, as the
// console's page sends it: a form body, if any, and the session cookie.
func consoleRequest(t *testing.T, p *pipeline.Pipeline, method, path, body string, cookie *http.Cookie) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequestWithContext(t.Context(), method, "http://127.0.0.1:9090"+path, strings.NewReader(body))
	req.RemoteAddr = "127.0.0.1:40000"
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	if body != "" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if cookie != nil {
		req.AddCookie(cookie)
	}
	rec := httptest.NewRecorder()
	p.AdminHandler().ServeHTTP(rec, req)
	return rec
}
