package pipeline_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/builtin"
	"github.com/labelpipe/labelpipe/pipeline"
)

const adminToken = "test-admin-token-0123456789"

// adminHarness runs a pipeline whose one sink always answers 400, and
// leaves one dead letter in its DLQ: what the admin API's guard protects.
// hits counts the requests the vendor got.
func adminHarness(t *testing.T, admin string) (h *harness, hits *atomic.Int64) {
	t.Helper()
	hits = &atomic.Int64{}
	vendor := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Error(w, `{"error":"bad request"}`, http.StatusBadRequest)
	}))
	t.Cleanup(vendor.Close)
	h = startHarness(t, `server: {addr: "", path: /webhook, max_body_bytes: 65536, shutdown_timeout: 5s}
admin: `+admin+`
broker: {type: memory}
stages:
  - {type: secret, header: X-Aquarium-Secret, secrets: ["`+hookSecret+`"]}
sinks:
  - name: vendor
    type: http
    url: "`+vendor.URL+`"
`+fastPolicy+`
`)
	body, _ := samplePayload(t, "issue-frames.json")
	h.accept(body)
	h.waitDeadLetters("vendor", 1)
	return h, hits
}

// adminCall is one raw request to the admin API.
type adminCall struct {
	method, path string
	host         string // Host header; "" for the server's own
	header       map[string]string
	body         string
}

type adminAnswer struct {
	code   int
	header http.Header
	err    string // the JSON answer's "error"
	raw    string
}

func (h *harness) adminCall(c adminCall) adminAnswer {
	h.t.Helper()
	req, err := http.NewRequestWithContext(h.t.Context(), c.method, h.admin.URL+c.path, strings.NewReader(c.body))
	if err != nil {
		h.t.Fatal(err)
	}
	if c.host != "" {
		req.Host = c.host
	}
	for k, v := range c.header {
		req.Header.Set(k, v)
	}
	resp, err := h.admin.Client().Do(req)
	if err != nil {
		h.t.Fatalf("admin %s %s: %v", c.method, c.path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := adminAnswer{code: resp.StatusCode, header: resp.Header, raw: string(raw)}
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(raw, &e) == nil {
		a.err = e.Error
	}
	return a
}

func bearer(tok string) map[string]string { return map[string]string{"Authorization": "Bearer " + tok} }

// A browser page from elsewhere (CSRF, DNS rebinding) and a caller without
// the token are refused, and nothing they asked for happens; the probes
// stay open for load balancers.
func TestAdminGuardRefuses(t *testing.T) {
	crossSite := map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"}
	tests := []struct {
		name  string
		admin string // the admin section
		call  adminCall
		code  int
		says  string // in the error
	}{
		{
			// The attack as it works today: no token, loopback daemon,
			// a "simple" text/plain POST from any page the operator opens.
			name: "cross-origin simple POST replay, no token", admin: `{addr: ""}`,
			call: adminCall{method: http.MethodPost, path: "/api/dlq/vendor/replay", header: crossSite, body: "x"},
			code: http.StatusForbidden, says: "cross-origin",
		},
		{
			name: "cross-origin POST replay with the token", admin: `{addr: "", token: ` + adminToken + `}`,
			call: adminCall{method: http.MethodPost, path: "/api/dlq/vendor/replay", body: "x",
				header: map[string]string{"Origin": "https://evil.example", "Authorization": "Bearer " + adminToken}},
			code: http.StatusForbidden, says: "cross-origin",
		},
		{
			name: "cross-origin DELETE purge", admin: `{addr: ""}`,
			call: adminCall{method: http.MethodDelete, path: "/api/dlq/vendor", header: crossSite},
			code: http.StatusForbidden, says: "cross-origin",
		},
		{
			name: "DNS rebinding reads dead letters", admin: `{addr: ""}`,
			call: adminCall{method: http.MethodGet, path: "/api/dlq", host: "evil.example:9090"},
			code: http.StatusMisdirectedRequest, says: "admin.allowed_hosts",
		},
		{
			name: "DNS rebinding reads profiles", admin: `{addr: "", pprof: true}`,
			call: adminCall{method: http.MethodGet, path: "/debug/pprof/", host: "rebind.evil.example"},
			code: http.StatusMisdirectedRequest, says: "admin.allowed_hosts",
		},
		{
			name: "DNS rebinding replays, with the token", admin: `{addr: "", token: ` + adminToken + `}`,
			call: adminCall{method: http.MethodPost, path: "/api/dlq/vendor/replay", host: "evil.example", header: bearer(adminToken)},
			code: http.StatusMisdirectedRequest, says: "admin.allowed_hosts",
		},
		{
			name: "replay without the token", admin: `{addr: "", token: ` + adminToken + `}`,
			call: adminCall{method: http.MethodPost, path: "/api/dlq/vendor/replay"},
			code: http.StatusUnauthorized, says: "admin.token",
		},
		{
			name: "purge without the token", admin: `{addr: "", token: ` + adminToken + `}`,
			call: adminCall{method: http.MethodDelete, path: "/api/dlq/vendor"},
			code: http.StatusUnauthorized, says: "admin.token",
		},
		{
			name: "replay with a wrong token", admin: `{addr: "", token: ` + adminToken + `}`,
			call: adminCall{method: http.MethodPost, path: "/api/dlq/vendor/replay", header: bearer(adminToken + "x")},
			code: http.StatusUnauthorized, says: "admin.token",
		},
		{
			name: "purge with the token as Basic", admin: `{addr: "", token: ` + adminToken + `}`,
			call: adminCall{method: http.MethodDelete, path: "/api/dlq/vendor", header: map[string]string{"Authorization": "Basic " + adminToken}},
			code: http.StatusUnauthorized, says: "admin.token",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, hits := adminHarness(t, tt.admin)
			before := hits.Load()
			a := h.adminCall(tt.call)
			if a.code != tt.code || !strings.Contains(a.err, tt.says) {
				t.Fatalf("%s %s = %d %s, want %d with an error naming %q", tt.call.method, tt.call.path, a.code, a.raw, tt.code, tt.says)
			}
			if ct := a.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q, want application/json", ct)
			}
			if tt.code == http.StatusUnauthorized && !strings.HasPrefix(a.header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("WWW-Authenticate = %q, want Bearer", a.header.Get("WWW-Authenticate"))
			}
			// Nothing was replayed or purged: the letter is still there,
			// and the vendor (a paid API) was not called again.
			if ds := h.deadLetters("vendor"); len(ds) != 1 {
				t.Errorf("DLQ holds %d letters after a refused call, want 1", len(ds))
			}
			if n := hits.Load(); n != before {
				t.Errorf("vendor got %d more requests after a refused call", n-before)
			}
			if strings.Contains(a.raw, adminToken) {
				t.Errorf("answer %s shows the token", a.raw)
			}
		})
	}
}

// What is allowed: loopback reads without the token, the probes from
// anywhere, names in admin.allowed_hosts, and changes with the token.
func TestAdminGuardAllows(t *testing.T) {
	h, hits := adminHarness(t, `{addr: "", token: `+adminToken+`, allowed_hosts: [Admin.Example.internal]}`)
	for _, c := range []adminCall{
		{method: http.MethodGet, path: "/api/dlq?sink=vendor"},
		{method: http.MethodGet, path: "/api/sinks", host: "localhost:9090"},
		{method: http.MethodGet, path: "/api/sinks", host: "[::1]:9090"},
		{method: http.MethodGet, path: "/api/sinks", host: "10.1.2.3:9090"}, // an address cannot be rebound
		{method: http.MethodGet, path: "/api/sinks", host: "admin.example.internal."},
		{method: http.MethodGet, path: "/healthz", host: "evil.example"},
		{method: http.MethodGet, path: "/readyz", host: "evil.example"},
		// Same-origin: the browser says so, or Origin matches Host.
		{method: http.MethodDelete, path: "/api/dlq/vendor?id=none", header: map[string]string{"Sec-Fetch-Site": "same-origin", "Authorization": "Bearer " + adminToken}},
	} {
		if a := h.adminCall(c); a.code != http.StatusOK {
			t.Errorf("%s %s (Host %q) = %d %s, want 200", c.method, c.path, c.host, a.code, a.raw)
		}
	}

	before := hits.Load()
	var rep struct {
		Replayed int `json:"replayed"`
	}
	a := h.adminCall(adminCall{method: http.MethodPost, path: "/api/dlq/vendor/replay", header: bearer(adminToken)})
	if err := json.Unmarshal([]byte(a.raw), &rep); err != nil || a.code != http.StatusOK || rep.Replayed != 1 {
		t.Fatalf("replay with the token = %d %s, want 200 and 1 replayed", a.code, a.raw)
	}
	// The vendor still says 400, so the letter comes back.
	h.eventually(10*time.Second, "the replayed request to reach the vendor", func() bool { return hits.Load() > before })
	h.waitDeadLetters("vendor", 1)

	a = h.adminCall(adminCall{method: http.MethodDelete, path: "/api/dlq/vendor", header: map[string]string{"Authorization": "bearer " + adminToken}})
	if a.code != http.StatusOK || !strings.Contains(a.raw, `"purged":1`) {
		t.Fatalf("purge with the token = %d %s, want 200 and 1 purged", a.code, a.raw)
	}
	if ds := h.deadLetters("vendor"); len(ds) != 0 {
		t.Errorf("DLQ holds %d letters after the purge, want 0", len(ds))
	}
	if a := h.adminCall(adminCall{method: http.MethodDelete, path: "/api/dlq/vendr", header: bearer(adminToken)}); a.code != http.StatusNotFound || !strings.Contains(a.err, "sinks: vendor") {
		t.Errorf("purge of a misspelt sink = %d %s, want 404 naming the sinks there are", a.code, a.raw)
	}
}

// Reads from another machine need the token even when changes are not
// asked for; without a token only loopback peers are answered. The
// httptest server's peers are all loopback, so these requests are handed
// to the handler with the peer address they would have.
func TestAdminGuardRemotePeers(t *testing.T) {
	const remote = "203.0.113.7:40000"
	withToken, _ := adminHarness(t, `{addr: "", token: `+adminToken+`}`)
	noToken, _ := adminHarness(t, `{addr: ""}`)
	tests := []struct {
		name   string
		h      *harness
		peer   string
		path   string
		header map[string]string
		code   int
	}{
		{name: "remote read without the token", h: withToken, peer: remote, path: "/api/dlq", code: http.StatusUnauthorized},
		{name: "remote read with a wrong token", h: withToken, peer: remote, path: "/api/sinks", header: bearer("nope-nope-nope-nope"), code: http.StatusUnauthorized},
		{name: "remote read with the token", h: withToken, peer: remote, path: "/api/sinks", header: bearer(adminToken), code: http.StatusOK},
		{name: "remote probe", h: withToken, peer: remote, path: "/healthz", code: http.StatusOK},
		{name: "loopback read through a local proxy", h: withToken, peer: "127.0.0.1:40000", path: "/api/dlq",
			header: map[string]string{"X-Forwarded-For": "198.51.100.9"}, code: http.StatusUnauthorized},
		{name: "loopback read", h: withToken, peer: "[::1]:40000", path: "/api/dlq", code: http.StatusOK},
		{name: "remote read, no token configured", h: noToken, peer: remote, path: "/api/sinks", code: http.StatusForbidden},
		{name: "remote probe, no token configured", h: noToken, peer: remote, path: "/readyz", code: http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "http://127.0.0.1:9090"+tt.path, nil)
			req.RemoteAddr = tt.peer
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			tt.h.p.AdminHandler().ServeHTTP(rec, req)
			if rec.Code != tt.code {
				t.Errorf("GET %s from %s = %d %s, want %d", tt.path, tt.peer, rec.Code, rec.Body, tt.code)
			}
		})
	}
}

// admin.token_file is read relative to the config file, without its
// trailing newline; admin.addr's host needs no allowed_hosts entry.
func TestAdminTokenFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "secrets"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "secrets", "admin"), []byte(adminToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := pipelineIn(t, dir, `server: {addr: ""}
admin: {addr: "labelpipe-admin.internal:9090", token_file: secrets/admin}
sinks:
  - {name: archive, type: file, path: archive.jsonl}
`)
	h := p.AdminHandler()
	check := func(when string, tests []struct {
		auth string
		code int
	}) {
		t.Helper()
		for _, tt := range tests {
			// admin.addr's host is allowed without listing it.
			req := httptest.NewRequestWithContext(t.Context(), http.MethodPost, "http://labelpipe-admin.internal:9090/api/dlq/nosuch/replay", nil)
			req.RemoteAddr = "127.0.0.1:40000"
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tt.code {
				t.Errorf("%s: Authorization %q: %d %s, want %d", when, tt.auth, rec.Code, rec.Body, tt.code)
			}
		}
	}
	type row = struct {
		auth string
		code int
	}
	const past = http.StatusBadRequest // past the guard: no such sink
	check("at start", []row{
		{"", http.StatusUnauthorized},
		{"Bearer " + adminToken[:len(adminToken)-1], http.StatusUnauthorized},
		{"Bearer " + adminToken, past},
	})

	// Rotated on disk, then Reload (SIGHUP): the new token works at once,
	// on the handler already serving, and the old one no longer does.
	rotated := strings.Repeat("r", 32)
	if err := os.WriteFile(filepath.Join(dir, "secrets", "admin"), []byte(rotated+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	check("after a rotation", []row{{"Bearer " + adminToken, http.StatusUnauthorized}, {"Bearer " + rotated, past}})

	// A file that no longer holds a usable token keeps the one in use.
	if err := os.WriteFile(filepath.Join(dir, "secrets", "admin"), []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.Reload(); err == nil || !strings.Contains(err.Error(), "shorter than") {
		t.Errorf("Reload with a short token: %v, want an error saying it is too short", err)
	}
	check("after a bad file", []row{{"Bearer short", http.StatusUnauthorized}, {"Bearer " + rotated, past}})
}

// Which admin listeners need a token: any that other machines can reach.
func TestAdminConfigNeedsToken(t *testing.T) {
	t.Setenv("LP_TEST_ADMIN_TOKEN", "")
	tests := []struct {
		admin string
		opts  []pipeline.LoadOption
		want  string // in the error; "" for none
	}{
		{admin: `{addr: ""}`},
		{admin: `{addr: "127.0.0.1:9090"}`},
		{admin: `{addr: "127.3.4.5:9090"}`},
		{admin: `{addr: "localhost:9090"}`},
		{admin: `{addr: "[::1]:9090"}`},
		{admin: `{addr: ":9090"}`, want: `":9090" is reachable from other machines`},
		{admin: `{addr: "0.0.0.0:9090"}`, want: "set admin.token"},
		{admin: `{addr: "[::]:9090"}`, want: "set admin.token"},
		{admin: `{addr: "10.0.0.5:9090"}`, want: "set admin.token"},
		{admin: `{addr: "admin.internal:9090"}`, want: "set admin.token"},
		{admin: `{addr: "9090"}`, want: "is not host:port"},
		{admin: `{addr: ":9090", token: "` + adminToken + `"}`},
		{admin: `{addr: ":9090", token: "${LP_TEST_ADMIN_TOKEN:-}"}`, want: "set admin.token"},
		{admin: `{addr: ":9090", token: "two words and more words"}`, want: "spaces"},
		// preview and dlq read the config without the daemon's secrets.
		{admin: `{addr: ":9090", token: "${LP_TEST_ADMIN_TOKEN}"}`, opts: []pipeline.LoadOption{pipeline.AllowUnsetEnv()}},
		{admin: `{addr: ":9090", token_file: missing}`, opts: []pipeline.LoadOption{pipeline.AllowUnsetEnv()}},
	}
	for _, tt := range tests {
		t.Run(tt.admin, func(t *testing.T) {
			text := "server: {addr: \"\"}\nadmin: " + tt.admin + "\nsinks:\n  - {name: a, type: file, path: a.jsonl}\n"
			_, err := pipeline.ParseConfig(filepath.Join(t.TempDir(), "c.yaml"), []byte(text), tt.opts...)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("got %v, want no error", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("got %v, want an error saying %q", err, tt.want)
			case err != nil && !strings.Contains(err.Error(), "c.yaml:2:"):
				t.Errorf("error %q is not positioned at admin (line 2)", err)
			}
		})
	}
}

// pipelineIn builds (not runs) a pipeline from yaml as if read from
// dir/c.yaml, so that relative paths in it resolve against dir.
func pipelineIn(t *testing.T, dir, yaml string) *pipeline.Pipeline {
	t.Helper()
	cfg, err := pipeline.ParseConfig(filepath.Join(dir, "c.yaml"), []byte(yaml), pipeline.ResolveWith(builtin.Registry()))
	if err != nil {
		t.Fatal(err)
	}
	p, err := pipeline.New(cfg, pipeline.Options{Registry: builtin.Registry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}
