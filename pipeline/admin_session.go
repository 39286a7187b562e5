package pipeline

// The console's sign-in: the admin token is posted once, from a form, and
// exchanged for a session cookie, so that the token never sits in the page
// or in the browser's storage.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/labelpipe/labelpipe/pipeline/backend"
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

// sessions are the console's signed-in browsers. With a backend shared by
// replicas (Redis) they are in its store, so a browser signed in on one
// replica is signed in on every one behind a load balancer; otherwise
// they are held in this process.
type sessions struct {
	store backend.SessionStore // nil: byID
	log   *slog.Logger

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
// is token, and returns the cookie's value; "" when too many are held or
// the store failed.
func (ss *sessions) start(ctx context.Context, token [sha256.Size]byte, now time.Time) string {
	if ss.store != nil {
		id := rand.Text() + rand.Text()
		err := ss.store.StartSession(ctx, sha256.Sum256([]byte(id)), backend.Session{Expires: now.Add(sessionTTL), Token: token})
		if err != nil {
			ss.log.ErrorContext(ctx, "console sign-in: could not store the session", "err", err)
			return ""
		}
		return id
	}
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
	s, ok := ss.get(r.Context(), key, now)
	if !ok || subtle.ConstantTimeCompare(s.token[:], want[:]) != 1 {
		return "", false
	}
	return "console session " + base64.RawURLEncoding.EncodeToString(key[:4]), true
}

// get returns key's live session. A store that fails signs nobody in.
func (ss *sessions) get(ctx context.Context, key [sha256.Size]byte, now time.Time) (session, bool) {
	if ss.store != nil {
		st, ok, err := ss.store.Session(ctx, key)
		if err != nil {
			ss.log.WarnContext(ctx, "console session not checked; treated as signed out", "err", err)
			return session{}, false
		}
		return session{expires: st.Expires, token: st.Token}, ok && !now.After(st.Expires)
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s, ok := ss.byID[key]
	if ok && now.After(s.expires) {
		delete(ss.byID, key)
		ok = false
	}
	return s, ok
}

func (ss *sessions) end(r *http.Request) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return
	}
	key := sha256.Sum256([]byte(c.Value))
	if ss.store != nil {
		if err := ss.store.EndSession(r.Context(), key); err != nil {
			ss.log.WarnContext(r.Context(), "console sign-out: could not end the session", "err", err)
		}
		return
	}
	ss.mu.Lock()
	delete(ss.byID, key)
	ss.mu.Unlock()
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
	id := p.sessions.start(r.Context(), *want, time.Now())
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
