package pipeline

// The admin API's guard: who may call it, from where. It is modelled on
// Caddy's admin endpoint (Host and Origin checks), plus a bearer token.

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"
)

// adminGuard wraps the admin API. In order:
//
//  1. /healthz and /readyz pass: load balancers probe them, and they
//     reveal nothing an operator would hide.
//  2. The Host header must be a loopback name, an IP address, the host of
//     admin.addr, or in admin.allowed_hosts; else 421. A DNS rebinding page
//     reaches 127.0.0.1 under its own name, so this is what keeps it from
//     reading dead letters (vendor answers) or profiles.
//  3. A cross-origin browser request that changes something gets 403
//     (http.CrossOriginProtection): a page an operator happens to open
//     cannot replay dead letters with a "simple" text/plain POST.
//  4. The console's page, its static files, its session status and its
//     sign-in form pass: they hold no data, and signing in is how a
//     browser gets a credential.
//  5. With admin.token set, changes always need a credential, and reads
//     need it unless they come from a loopback peer; else 401. The
//     credential is Authorization: Bearer <token>, or the console's
//     session cookie (got by posting the token to /console/session).
//     Without a token (only allowed on a loopback admin.addr), only
//     loopback peers are answered: the handler may be mounted, or its
//     listener handed over, where the config cannot see.
//
// The handler behind it finds who called in the request's context
// (adminWho), for the log of what operators did.
type adminGuard struct {
	next  http.Handler
	hosts map[string]bool
	// sum is the token's SHA-256; compared in constant time. Hashing
	// first keeps the comparison's time independent of the length, too.
	// It is swapped when Reload re-reads admin.token_file.
	sum      *atomic.Pointer[[sha256.Size]byte]
	token    bool
	cop      *http.CrossOriginProtection
	sessions *sessions
	log      *slog.Logger
}

func newAdminGuard(c *AdminConfig, sum *atomic.Pointer[[sha256.Size]byte], ss *sessions, log *slog.Logger, next http.Handler) *adminGuard {
	g := &adminGuard{next: next, hosts: map[string]bool{}, cop: http.NewCrossOriginProtection(), sum: sum, sessions: ss, log: log}
	g.token = sum.Load() != nil
	if host, _, err := net.SplitHostPort(c.Addr); err == nil && host != "" {
		g.hosts[normalHost(host)] = true
	}
	for _, h := range c.AllowedHosts {
		g.hosts[normalHost(h)] = true
	}
	return g
}

func (g *adminGuard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	safe := r.Method == http.MethodGet || r.Method == http.MethodHead || r.Method == http.MethodOptions
	if safe && (r.URL.Path == "/healthz" || r.URL.Path == "/readyz") {
		g.next.ServeHTTP(w, r)
		return
	}
	if !g.hostAllowed(r.Host) {
		writeJSON(w, http.StatusMisdirectedRequest, map[string]any{"error": fmt.Sprintf(
			"the admin API does not answer to host %q; if that is how you reach it, add it to admin.allowed_hosts "+
				"(other names are refused so that a DNS rebinding web page cannot use the API)", r.Host)})
		return
	}
	if err := g.cop.Check(r); err != nil {
		// Worth a line: a page the operator opened tried to change something.
		g.log.WarnContext(r.Context(), "admin API refused a cross-origin change", "method", r.Method, "path", r.URL.Path,
			"origin", r.Header.Get("Origin"), "sec_fetch_site", r.Header.Get("Sec-Fetch-Site"), "peer", r.RemoteAddr)
		writeJSON(w, http.StatusForbidden, map[string]any{"error": "cross-origin requests that change something are refused by the admin API (" + err.Error() + "); call it from curl or labelpipe, not from a web page"})
		return
	}
	if consolePublic(r) {
		g.next.ServeHTTP(w, r)
		return
	}
	local := loopbackPeer(r)
	who, authorized := g.credential(r)
	switch {
	case !g.token && !local:
		writeJSON(w, http.StatusForbidden, map[string]any{"error": "without admin.token the admin API answers only on loopback; set admin.token or admin.token_file to call it from elsewhere"})
		return
	case g.token && (!safe || !local) && !authorized:
		w.Header().Set("WWW-Authenticate", `Bearer realm="labelpipe admin"`)
		why := "reads from another machine"
		if !safe {
			why = "changes"
		}
		writeJSON(w, http.StatusUnauthorized, map[string]any{"error": "missing or wrong admin token: " + why +
			" need the header Authorization: Bearer <admin.token> (or, in the console, signing in)"})
		return
	}
	if !authorized {
		who = "loopback without a token"
	}
	r = r.WithContext(context.WithValue(r.Context(), adminWhoKey{}, who+" from "+r.RemoteAddr))
	g.next.ServeHTTP(w, r)
}

// consolePublic reports whether r is for the console's page, its static
// files, its session status or its sign-in and sign-out forms: what a
// browser needs before it has a credential. None of it holds data.
func consolePublic(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		return r.URL.Path == "/" || strings.HasPrefix(r.URL.Path, "/console/")
	case http.MethodPost:
		return r.URL.Path == "/console/session" || r.URL.Path == "/console/signout"
	}
	return false
}

// adminWhoKey is the request context key of who called the admin API.
type adminWhoKey struct{}

// adminWho says who made an admin request: the credential and the peer.
func adminWho(r *http.Request) string {
	who, _ := r.Context().Value(adminWhoKey{}).(string)
	return who
}

// credential reports whether r carries the admin token (a bearer header)
// or a console session made with it, and names which.
func (g *adminGuard) credential(r *http.Request) (string, bool) {
	want := g.sum.Load()
	if want == nil {
		return "", false
	}
	if scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
		sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
		if subtle.ConstantTimeCompare(sum[:], want[:]) == 1 {
			return "admin token", true
		}
	}
	if g.sessions != nil {
		return g.sessions.valid(r, want, time.Now())
	}
	return "", false
}

// hostAllowed reports whether a Host header may reach the admin API. An
// IP address always may: DNS rebinding needs a name, and Prometheus or a
// load balancer often calls by address.
func (g *adminGuard) hostAllowed(hostport string) bool {
	if hostport == "" {
		return true // HTTP/1.0 without Host: not a browser
	}
	host := normalHost(hostport)
	if _, err := netip.ParseAddr(host); err == nil {
		return true
	}
	return isLoopbackHost(host) || g.hosts[host]
}

// normalHost is a Host header or host name without port, brackets,
// trailing dot or case.
func normalHost(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	return strings.ToLower(strings.TrimSuffix(h, "."))
}

// isLoopbackHost reports whether a listen or Host name stays on this
// machine: localhost or a loopback address. "" and 0.0.0.0 do not.
func isLoopbackHost(host string) bool {
	host = normalHost(host)
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// loopbackPeer reports whether r came from this machine and not through a
// proxy on it: a local reverse proxy adds Forwarded or X-Forwarded-For,
// and what it forwards may come from anywhere.
func loopbackPeer(r *http.Request) bool {
	if r.Header.Get("Forwarded") != "" || r.Header.Get("X-Forwarded-For") != "" {
		return false
	}
	a := addrOf(r.RemoteAddr)
	if !a.IsValid() {
		// A unix socket has no address; reaching it takes file access.
		return strings.HasPrefix(r.RemoteAddr, "@") || r.RemoteAddr == ""
	}
	return a.IsLoopback()
}

// adminToken holds the admin token's SHA-256, nil without a token.
func adminToken(c *AdminConfig) *atomic.Pointer[[sha256.Size]byte] {
	p := new(atomic.Pointer[[sha256.Size]byte])
	if tok := c.token(); tok != "" {
		sum := sha256.Sum256([]byte(tok))
		p.Store(&sum)
	}
	return p
}

// reloadAdminToken re-reads admin.token_file, so a token can be rotated
// without a restart; a bad file keeps the token in use.
func (p *Pipeline) reloadAdminToken() error {
	c := p.cfg.Admin
	if c.TokenFile == "" {
		return nil
	}
	path := configPath(p.cfg.dir, c.TokenFile)
	tok, err := readTokenFile(path)
	if err != nil {
		return fmt.Errorf("admin.token_file: %w", err)
	}
	if problem := tokenProblem(tok); problem != "" {
		return fmt.Errorf("admin.token_file %s: the token in it %s", path, problem)
	}
	sum := sha256.Sum256([]byte(tok))
	p.adminSum.Store(&sum)
	p.log.Info("admin token reloaded", "token_file", path)
	return nil
}
