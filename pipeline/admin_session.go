package pipeline

// The console's sign-in: the admin token is posted once, from a form, and
// exchanged for a session cookie, so that the token never sits in the page
// or in the browser's storage.

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

const (
	// sessionCookie names the console's session cookie.
	sessionCookie = "labelpipe_session"
	// sessionTTL is how long a console session lasts after signing in.
	sessionTTL = 12 * time.Hour
	// maxSessions bounds the sessions held at once; signing in past it
	// is refused until some expire or sign out.
	maxSessions = 1024
)

// sessions are the console's signed-in browsers, held in this process: a
// browser signs in on each replica it reaches (behind a load balancer,
// use sticky sessions or reach one replica's admin listener).
type sessions struct {
	mu   sync.Mutex
	byID map[[sha256.Size]byte]session // by the SHA-256 of the cookie's value
	// fails slows guessing: wrong tokens are answered at this rate at
	// most, across all callers.
	fails *rate.Limiter
}

type session struct {
	expires time.Time
	// token is the admin token's SHA-256 when the session began: a
	// rotated token (Reload) ends every session made with the old one.
	token [sha256.Size]byte
}

func newSessions() *sessions {
	return &sessions{byID: map[[sha256.Size]byte]session{}, fails: rate.NewLimiter(rate.Every(time.Second), 5)}
}

// start makes a session for a browser that showed the token whose hash
// is token, and returns the cookie's value; "" when too many are held.
func (ss *sessions) start(token [sha256.Size]byte, now time.Time) string {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if len(ss.byID) >= maxSessions {
		for k, s := range ss.byID {
			if now.After(s.expires) {
				delete(ss.byID, k)
			}
		}
		if len(ss.byID) >= maxSessions {
			return ""
		}
	}
	id := rand.Text() + rand.Text() // 2×128 bits
	ss.byID[sha256.Sum256([]byte(id))] = session{expires: now.Add(sessionTTL), token: token}
	return id
}

// valid reports whether r carries a live session made with the current
// token (want), and returns a short name for it, for the log.
func (ss *sessions) valid(r *http.Request, want *[sha256.Size]byte, now time.Time) (string, bool) {
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" || want == nil {
		return "", false
	}
	key := sha256.Sum256([]byte(c.Value))
	ss.mu.Lock()
	s, ok := ss.byID[key]
	if ok && now.After(s.expires) {
		delete(ss.byID, key)
		ok = false
	}
	ss.mu.Unlock()
	if !ok || subtle.ConstantTimeCompare(s.token[:], want[:]) != 1 {
		return "", false
	}
	return "console session " + base64.RawURLEncoding.EncodeToString(key[:4]), true
}

func (ss *sessions) end(r *http.Request) {
	if c, err := r.Cookie(sessionCookie); err == nil {
		ss.mu.Lock()
		delete(ss.byID, sha256.Sum256([]byte(c.Value)))
		ss.mu.Unlock()
	}
}

// signIn is POST /console/session, from the console's form: token=...
// Right, it sets the session cookie; either way it sends the browser back
// to the console, which says what happened.
func (p *Pipeline) signIn(w http.ResponseWriter, r *http.Request) {
	want := p.adminSum.Load()
	if want == nil {
		http.Redirect(w, r, "/?signin=notoken", http.StatusSeeOther)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	tok := strings.TrimSpace(r.PostFormValue("token"))
	sum := sha256.Sum256([]byte(tok))
	if subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
		// Wait for the limiter before answering: many wrong tokens in a
		// row are answered about once a second.
		_ = p.sessions.fails.Wait(r.Context())
		p.log.WarnContext(r.Context(), "console sign-in refused: wrong admin token", "peer", r.RemoteAddr)
		http.Redirect(w, r, "/?signin=failed", http.StatusSeeOther)
		return
	}
	id := p.sessions.start(*want, time.Now())
	if id == "" {
		http.Redirect(w, r, "/?signin=full", http.StatusSeeOther)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: id, Path: "/", MaxAge: int(sessionTTL.Seconds()),
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	p.log.InfoContext(r.Context(), "console sign-in", "peer", r.RemoteAddr)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// signOut is POST /console/signout.
func (p *Pipeline) signOut(w http.ResponseWriter, r *http.Request) {
	p.sessions.end(r)
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}
