package pipeline_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/pipeline"
)

// On Redis, a console session is every replica's: signed in through one
// replica, a browser behind a load balancer may reach the other, and
// signing out through one ends it on both. On the memory broker each
// process keeps its own.
func TestConsoleSessionsAcrossReplicas(t *testing.T) {
	srv := redistest.Start(t)
	for _, tc := range []struct {
		name   string
		broker string
		shared bool
	}{
		{"redis", "broker: {type: redis}\nredis: {url: \"" + srv.URL() + "\"}\n", true},
		{"memory", "broker: {type: memory}\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := `server: {addr: ""}
admin: {addr: "", token: "` + adminToken + `"}
` + tc.broker + `sinks:
  - {name: archive, type: file, path: archive.jsonl}
`
			a, b := pipelineIn(t, t.TempDir(), cfg), pipelineIn(t, t.TempDir(), cfg)
			serve := func(p *pipeline.Pipeline, path, body string, cookie *http.Cookie) *httptest.ResponseRecorder {
				return consoleRequest(t, p, http.MethodPost, path, body, cookie)
			}
			rec := serve(a, "/console/session", url.Values{"token": {adminToken}}.Encode(), nil)
			cookies := rec.Result().Cookies()
			if rec.Code != http.StatusSeeOther || len(cookies) != 1 {
				t.Fatalf("sign-in on a = %d with cookies %v", rec.Code, cookies)
			}
			session := cookies[0]
			if rec := serve(a, "/api/sinks/archive/pause", "", session); rec.Code != http.StatusOK {
				t.Fatalf("pause on a with its session = %d %s", rec.Code, rec.Body)
			}
			want := http.StatusUnauthorized
			if tc.shared {
				want = http.StatusOK
			}
			if rec := serve(b, "/api/sinks/archive/resume", "", session); rec.Code != want {
				t.Fatalf("resume on b with a's session = %d, want %d; %s", rec.Code, want, rec.Body)
			}
			if rec := serve(a, "/console/signout", "", session); rec.Code != http.StatusSeeOther {
				t.Fatalf("sign-out on a = %d", rec.Code)
			}
			for name, p := range map[string]*pipeline.Pipeline{"a": a, "b": b} {
				if rec := serve(p, "/api/sinks/archive/pause", "", session); rec.Code != http.StatusUnauthorized {
					t.Errorf("pause on %s after signing out = %d, want 401", name, rec.Code)
				}
			}
		})
	}
}
