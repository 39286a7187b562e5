package pipeline

// The status console: one page served by the admin listener at /, plain
// HTML, CSS and JavaScript embedded in the binary (no build step, nothing
// fetched from elsewhere). It reads the admin API and polls it; its
// buttons call the admin API's controls with the session cookie that
// signing in sets (admin_session.go).

import (
	"embed"
	"net/http"
	"time"
)

//go:embed console
var consoleFiles embed.FS

// consolePoll is how often the console reads the admin API again.
const consolePoll = time.Second

func (p *Pipeline) mountConsole(mux *http.ServeMux) {
	static := func(name, ctype string) http.HandlerFunc {
		body, err := consoleFiles.ReadFile("console/" + name)
		if err != nil {
			panic(err) // embedded at build time
		}
		return func(w http.ResponseWriter, r *http.Request) {
			consoleHeaders(w)
			w.Header().Set("Content-Type", ctype)
			_, _ = w.Write(body)
		}
	}
	mux.HandleFunc("GET /{$}", static("index.html", "text/html; charset=utf-8"))
	mux.HandleFunc("GET /console/console.js", static("console.js", "text/javascript; charset=utf-8"))
	mux.HandleFunc("GET /console/console.css", static("console.css", "text/css; charset=utf-8"))
	mux.HandleFunc("GET /console/session", p.consoleSession)
	mux.HandleFunc("POST /console/session", p.signIn)
	mux.HandleFunc("POST /console/signout", p.signOut)
}

// consoleHeaders keep the console out of other sites' frames (its buttons
// must not be clickjacked) and let it load only its own files.
func consoleHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-cache")
}

// consoleSession is GET /console/session: what this browser may do, so
// that the page offers signing in, or the controls. It never holds the
// token or data.
func (p *Pipeline) consoleSession(w http.ResponseWriter, r *http.Request) {
	consoleHeaders(w)
	want := p.adminSum.Load()
	_, signedIn := p.sessions.valid(r, want, time.Now())
	local := loopbackPeer(r)
	tokenSet := want != nil
	canRead := local || signedIn
	canChange := signedIn || (!tokenSet && local)
	ans := map[string]any{
		"token_configured": tokenSet, "signed_in": signedIn, "loopback": local,
		"can_read": canRead, "can_change": canChange,
		"poll_ms": consolePoll.Milliseconds(),
	}
	if canRead {
		ans["replica"] = p.opts.ReplicaID
		ans["version"] = p.opts.Version
		ans["broker"] = p.cfg.Broker.Type
		ans["pauses_shared"] = p.pauses.store != nil
	}
	writeJSON(w, http.StatusOK, ans)
}
