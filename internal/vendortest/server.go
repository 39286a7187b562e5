// Package vendortest runs fake labeling-vendor APIs (Labelbox, Scale AI,
// Label Studio) on 127.0.0.1 for tests. Each fake enforces the shape of the
// real API (see /work/shared/vendors.md), answers errors the way the real
// one does, records every request, counts requests it acted on and
// repeats, and can be told to fail: a script of failures, an outage, or
// latency.
//
// A request the fake acts on is "accepted"; a request that repeats earlier
// work (Scale: a used unique_id; Labelbox: a taken batch name; Label
// Studio: tasks already imported) is a "duplicate". A test asserts
// "delivered once" as Accepted() == 1 && Duplicates() == 0.
//
// The same counts are kept per key, for every request that carries one
// whatever the answer (see CountsFor): Scale's unique_id, Labelbox's
// batch name, Label Studio's issue element (LabelStudioKey). So a test can
// tell which piece of work was repeated, and how often, not only that
// something was.
package vendortest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"
)

// Outcome is what a fake did with a request.
type Outcome string

const (
	// Accepted: the fake acted on the request.
	Accepted Outcome = "accepted"
	// Duplicate: the request repeated earlier work. Scale and Labelbox
	// refuse it; Label Studio imports it again.
	Duplicate Outcome = "duplicate"
	// Rejected: bad auth, bad shape or unknown route.
	Rejected Outcome = "rejected"
	// Injected: a scripted failure or outage answered instead.
	Injected Outcome = "injected"
)

// Request is one request a fake received, and how it answered.
type Request struct {
	Method string
	Path   string
	Query  url.Values
	// Header holds the request's headers (traceparent included).
	Header http.Header
	Body   []byte
	// Status is the status the fake answered.
	Status  int
	Outcome Outcome
	At      time.Time
}

// KeyCount is what a fake saw of one key: an idempotency key, or for Label
// Studio, which has none, an issue element.
type KeyCount struct {
	// Requests counts every request carrying the key, whatever the
	// answer: injected failures and rejections included.
	Requests int
	// Accepted counts the requests the fake acted on.
	Accepted int
	// Duplicates counts the requests that repeated earlier work for the
	// key. Scale and Labelbox answer them "already done" (409, "already
	// exists") and change nothing; Label Studio acts on them again, so
	// they count as accepted too.
	Duplicates int
}

// Traceparent is the request's W3C traceparent header.
func (r Request) Traceparent() string { return r.Header.Get("Traceparent") }

// reply is what a vendor handler answers.
type reply struct {
	status  int
	header  map[string]string
	body    any // encoded as JSON unless []byte
	outcome Outcome
	// dupKeys, when set, are the request's keys that repeated earlier
	// work although the request as a whole is accepted (Label Studio).
	dupKeys map[string]bool
}

// failure is one scripted failure.
type failure struct {
	status     int
	retryAfter string
	// body, when set, replaces the vendor's usual error body.
	body any
}

// Server is what every fake shares: the listener, the record of requests
// and the failure script. Its methods are safe for concurrent use.
type Server struct {
	// URL is the base URL, http://127.0.0.1:port.
	URL string

	srv     *httptest.Server
	closing chan struct{}
	// handle is the vendor's own behaviour.
	handle func(r *http.Request, body []byte) reply
	// failBody is the vendor's error body for an injected status.
	failBody func(status int) any
	// keysOf names the keys a request carries (nil: none), for the counts
	// per key. It sees every request, also those never handled.
	keysOf func(r *http.Request, body []byte) []string

	// acting is held across handling and recording a request, and read
	// by the vendors' accessors, so that work seen there (a task, a
	// batch) is also in the counts: a test reads the one, then the other.
	acting sync.RWMutex

	mu         sync.Mutex
	reqs       []Request
	arrived    int // requests that reached a handler, answered or not
	accepted   int
	duplicates int
	perKey     map[string]*KeyCount
	script     []failure
	down       *failure
	latency    time.Duration
	// latencyOn, when set, limits latency to the requests it matches.
	latencyOn func(method, path string) bool
	// latencyChanged is closed and replaced by SetLatency, so that held
	// requests re-check.
	latencyChanged chan struct{}
	changed        chan struct{} // closed and replaced on every arrival and record
	closeOnce      sync.Once
}

func newServer(tb testing.TB, handle func(*http.Request, []byte) reply, failBody func(int) any,
	keysOf func(*http.Request, []byte) []string) *Server {
	s := &Server{handle: handle, failBody: failBody, keysOf: keysOf, perKey: map[string]*KeyCount{},
		changed: make(chan struct{}), closing: make(chan struct{}), latencyChanged: make(chan struct{})}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	s.URL = s.srv.URL
	if tb != nil {
		tb.Cleanup(s.Close)
	}
	return s
}

// Close stops the server; a request held by SetLatency is let go. It is
// safe to call twice.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.srv.CloseClientConnections()
		s.srv.Close()
	})
}

// maxBody bounds a request body (Label Studio accepts 200 MB; tests send
// far less).
const maxBody = 64 << 20

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
	if err != nil {
		s.record(r, body, reply{outcome: Rejected})
		return
	}
	s.mu.Lock()
	s.arrived++
	s.notify()
	s.mu.Unlock()
	s.delay(r, time.Now())
	s.acting.Lock()
	rep := s.injected()
	if rep == nil {
		x := s.handle(r, body)
		rep = &x
	}
	// Recorded before answering, so a client that got its answer sees the
	// request in Requests.
	s.record(r, body, *rep)
	s.acting.Unlock()
	s.write(w, *rep)
}

// settled waits for the request being handled to be recorded too, and
// holds off the next until the returned func is called.
func (s *Server) settled() func() {
	s.acting.RLock()
	return s.acting.RUnlock
}

// delay holds a request that arrived at start for the current latency.
// Like a real server, it finishes the work even if the client gave up:
// that is how a timed-out attempt can still have created a task.
func (s *Server) delay(r *http.Request, start time.Time) {
	for {
		s.mu.Lock()
		remaining := time.Until(start.Add(s.latency))
		if s.latencyOn != nil && !s.latencyOn(r.Method, r.URL.Path) {
			remaining = 0
		}
		changed := s.latencyChanged
		s.mu.Unlock()
		if remaining <= 0 {
			return
		}
		t := time.NewTimer(remaining)
		select {
		case <-t.C:
		case <-changed:
		case <-s.closing:
			t.Stop()
			return
		}
		t.Stop()
	}
}

// injected takes the answer an outage or the failure script dictates.
func (s *Server) injected() *reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	var f *failure
	switch {
	case s.down != nil:
		f = s.down
	case len(s.script) > 0:
		f = &s.script[0]
		s.script = s.script[1:]
	default:
		return nil
	}
	rep := &reply{status: f.status, outcome: Injected, body: f.body}
	if rep.body == nil {
		rep.body = s.failBody(f.status)
	}
	if f.retryAfter != "" {
		rep.header = map[string]string{"Retry-After": f.retryAfter}
	}
	return rep
}

func (s *Server) write(w http.ResponseWriter, rep reply) {
	for k, v := range rep.header {
		w.Header().Set(k, v)
	}
	var b []byte
	switch x := rep.body.(type) {
	case nil:
	case []byte:
		b = x
	default:
		b, _ = json.Marshal(x)
		w.Header().Set("Content-Type", "application/json")
	}
	w.WriteHeader(rep.status)
	_, _ = w.Write(b)
}

func (s *Server) record(r *http.Request, body []byte, rep reply) {
	var keys []string
	if s.keysOf != nil {
		keys = s.keysOf(r, body)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	o := rep.outcome
	s.reqs = append(s.reqs, Request{
		Method: r.Method, Path: r.URL.Path, Query: r.URL.Query(), Header: r.Header.Clone(),
		Body: body, Status: rep.status, Outcome: o, At: time.Now(),
	})
	switch o {
	case Accepted:
		s.accepted++
	case Duplicate:
		s.duplicates++
	}
	for _, k := range keys {
		c := s.perKey[k]
		if c == nil {
			c = &KeyCount{}
			s.perKey[k] = c
		}
		c.Requests++
		if o == Accepted {
			c.Accepted++
		}
		if o == Duplicate || rep.dupKeys[k] {
			c.Duplicates++
		}
	}
	s.notify()
}

// notify wakes waiters; s.mu is held.
func (s *Server) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// countDuplicateAccepted records a request the vendor acted on although
// it repeated earlier work (Label Studio imports duplicates).
func (s *Server) countDuplicateAccepted() {
	s.mu.Lock()
	s.duplicates++
	s.mu.Unlock()
}

// Requests returns every request received so far, in order.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.reqs...)
}

// RequestCount is how many requests were received.
func (s *Server) RequestCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.reqs)
}

// Accepted is how many requests the fake acted on.
func (s *Server) Accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

// Duplicates is how many requests repeated earlier work.
func (s *Server) Duplicates() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.duplicates
}

// CountsFor is what the fake saw of one key: Scale's unique_id,
// Labelbox's batch name, or LabelStudioKey(issue, element).
func (s *Server) CountsFor(key string) KeyCount {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.perKey[key]; c != nil {
		return *c
	}
	return KeyCount{}
}

// CountsByKey returns the counts of every key seen so far.
func (s *Server) CountsByKey() map[string]KeyCount {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]KeyCount, len(s.perKey))
	for k, c := range s.perKey {
		out[k] = *c
	}
	return out
}

// FailNext answers the next n requests with status (and a Retry-After
// header when retryAfter is not empty: seconds or an HTTP-date), with the
// vendor's usual error body. Calls queue up.
func (s *Server) FailNext(n, status int, retryAfter string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.script = append(s.script, failure{status: status, retryAfter: retryAfter})
	}
}

// failNextWith queues n failures with a vendor-specific body.
func (s *Server) failNextWith(n, status int, retryAfter string, body any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.script = append(s.script, failure{status: status, retryAfter: retryAfter, body: body})
	}
}

// AnswerNext answers the next n requests with status and body (JSON
// unless []byte) without acting on them: a vendor answer a test needs
// that the fake would not give on its own (a 201 with a wrong count).
func (s *Server) AnswerNext(n, status int, body any) {
	s.failNextWith(n, status, "", body)
}

// SetDown starts an outage: every request is answered with status until
// SetUp.
func (s *Server) SetDown(status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = &failure{status: status}
}

// SetUp ends an outage.
func (s *Server) SetUp() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = nil
}

// SetLatency delays every answer by d after the request arrived (0 for
// none). It applies to requests already held too: lowering it releases
// them. A request whose client gives up meanwhile is still carried out.
func (s *Server) SetLatency(d time.Duration) { s.SetLatencyOn(d, nil) }

// SetLatencyOn is SetLatency for the requests match accepts (all when
// match is nil): a multi-step vendor's one step can hang while the others
// answer.
func (s *Server) SetLatencyOn(d time.Duration, match func(method, path string) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
	s.latencyOn = match
	close(s.latencyChanged)
	s.latencyChanged = make(chan struct{})
}

// WaitArrived blocks until at least n requests have reached the fake, even
// if it has not answered them yet (see SetLatency), or ctx ends.
func (s *Server) WaitArrived(ctx context.Context, n int) error {
	return s.wait(ctx, func() bool { return s.arrived >= n }, fmt.Sprintf("%d arrived requests", n))
}

// WaitRequests blocks until at least n requests were received and
// answered, or ctx ends.
func (s *Server) WaitRequests(ctx context.Context, n int) error {
	return s.wait(ctx, func() bool { return len(s.reqs) >= n }, fmt.Sprintf("%d requests", n))
}

// WaitAccepted blocks until at least n requests were accepted, or ctx ends.
func (s *Server) WaitAccepted(ctx context.Context, n int) error {
	return s.wait(ctx, func() bool { return s.accepted >= n }, fmt.Sprintf("%d accepted requests", n))
}

func (s *Server) wait(ctx context.Context, done func() bool, what string) error {
	for {
		s.mu.Lock()
		ok := done()
		ch := s.changed
		got, acc := len(s.reqs), s.accepted
		s.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s (have %d requests, %d accepted): %w", what, got, acc, context.Cause(ctx))
		}
	}
}
