package pipeline_test

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/internal/vendortest"
	"github.com/labelpipe/labelpipe/pipeline"
)

// exportView is the part of /api/exports the tests read.
type exportView struct {
	ID         string            `json:"id"`
	IssueID    string            `json:"issue_id"`
	TraceID    string            `json:"trace_id"`
	Generation int               `json:"generation"`
	Sinks      map[string]string `json:"sinks"`
	Requests   []struct {
		Sink           string    `json:"sink"`
		Chunk          int       `json:"chunk"`
		State          string    `json:"state"`
		Generation     int       `json:"generation"`
		Status         int       `json:"status"`
		Error          string    `json:"error"`
		IdempotencyKey string    `json:"idempotency_key"`
		Attempts       int       `json:"attempts"`
		DeliveredAt    time.Time `json:"delivered_at"`
		Timeline       []struct {
			At         time.Time `json:"at"`
			Event      string    `json:"event"`
			Generation int       `json:"generation"`
			Attempt    int       `json:"attempt"`
			Status     int       `json:"status"`
			Error      string    `json:"error"`
		} `json:"timeline"`
	} `json:"requests"`
}

func (h *harness) exports(query string) []exportView {
	h.t.Helper()
	var out struct {
		Exports []exportView `json:"exports"`
	}
	if code := h.adminDo(http.MethodGet, "/api/exports?"+query, nil, &out); code != http.StatusOK {
		h.t.Fatalf("GET /api/exports?%s: %d", query, code)
	}
	return out.Exports
}

func (h *harness) export(id string) exportView {
	h.t.Helper()
	var v exportView
	if code := h.adminDo(http.MethodGet, "/api/exports/"+url.PathEscape(id), nil, &v); code != http.StatusOK {
		h.t.Fatalf("GET /api/exports/%s: %d", id, code)
	}
	return v
}

func (h *harness) resend(id, body string) int {
	h.t.Helper()
	var out map[string]any
	return h.adminDo(http.MethodPost, "/api/exports/"+url.PathEscape(id)+"/resend", strings.NewReader(body), &out)
}

// "Did export X reach Scale?" is one GET given the Aquarium issue id, on
// both brokers: each sink's state, per request its idempotency key, a dead
// letter's status. A resend to Scale delivers again with the same
// idempotency key, so Scale answers "already done" and makes no second
// task; a fresh resend makes new ones. A resend from another origin
// changes nothing.
func TestExportHistory(t *testing.T) {
	for _, broker := range brokers {
		t.Run(broker, func(t *testing.T) {
			sc := vendortest.NewScale(t, scaleKey)
			ls := vendortest.NewLabelStudio(t, lsToken)
			h := startHarness(t, onBroker(t, broker, head("")+scaleSink(sc.TaskURL(), fastPolicy)+labelStudioSink(ls, `
    retry: {max_attempts: 2, initial_interval: 5ms, max_interval: 20ms, max_elapsed: 0s}
    breaker: {consecutive_failures: 50, open_timeout: 200ms}`)+`  - {name: archive, type: file, path: out/archive.jsonl, filter: 'false'}
`))
			ls.SetDown(http.StatusServiceUnavailable)
			body, issue := samplePayload(t, "issue-frames.json")
			a := h.accept(body)
			waitFake(t, "scale's three tasks", func(ctx context.Context) error { return sc.WaitAccepted(ctx, 3) })
			h.waitDeadLetters("label_studio", 1)

			var got []exportView
			// The dead letter is stored before the history notes it, so the
			// history is waited for too.
			h.eventually(10*time.Second, "scale delivered and label_studio dead-lettered in the history", func() bool {
				got = h.exports("issue_id=" + url.QueryEscape(issue) + "&sink=scale")
				return len(got) == 1 && got[0].Sinks["scale"] == "delivered" && got[0].Sinks["label_studio"] == "dead_lettered"
			})
			v := got[0]
			if v.ID != a.ID || v.TraceID != a.TraceID || v.Sinks["archive"] != "skipped" || v.Sinks["label_studio"] != "dead_lettered" {
				t.Fatalf("export = %+v, want %s (trace %s) with archive skipped and label_studio dead_lettered", v, a.ID, a.TraceID)
			}
			if other := h.exports("issue_id=nope"); len(other) != 0 {
				t.Errorf("issue_id=nope lists %+v", other)
			}
			if dl := h.exports("state=dead_lettered&sink=label_studio"); len(dl) != 1 {
				t.Errorf("state=dead_lettered&sink=label_studio lists %d exports, want 1", len(dl))
			}
			if dl := h.exports("state=dead_lettered&sink=scale"); len(dl) != 0 {
				t.Errorf("state=dead_lettered&sink=scale lists %d exports, want 0", len(dl))
			}
			if later := h.exports("since=" + url.QueryEscape(time.Now().Add(time.Hour).Format(time.RFC3339))); len(later) != 0 {
				t.Errorf("since an hour from now lists %d exports", len(later))
			}

			full := h.export(a.ID)
			keys := map[string]bool{}
			for _, r := range full.Requests {
				switch r.Sink {
				case "scale":
					if r.State != "delivered" || r.IdempotencyKey == "" {
						t.Errorf("scale request %+v, want delivered with an idempotency key", r)
					}
					keys[r.IdempotencyKey] = true
				case "label_studio":
					if r.State != "dead_lettered" || r.Status != http.StatusServiceUnavailable || r.Attempts != 2 {
						t.Errorf("label studio request %+v, want dead_lettered, status 503, 2 attempts", r)
					}
				}
			}
			if len(keys) != 3 {
				t.Fatalf("scale's idempotency keys = %v, want 3 distinct", keys)
			}

			// Cross-origin: refused, nothing resent.
			if ans := h.adminCall(adminCall{method: http.MethodPost, path: "/api/exports/" + a.ID + "/resend",
				header: map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"}}); ans.code != http.StatusForbidden {
				t.Errorf("cross-origin resend = %d %s, want 403", ans.code, ans.raw)
			}
			if g := h.export(a.ID).Generation; g != 0 {
				t.Errorf("generation after a refused resend = %d, want 0", g)
			}

			// Resend to Scale: delivered again, same keys: duplicates, no new task.
			if code := h.resend(a.ID, `{"sink": "scale"}`); code != http.StatusAccepted {
				t.Fatalf("resend = %d, want 202", code)
			}
			waitFake(t, "scale's resent requests", func(ctx context.Context) error { return sc.WaitRequests(ctx, 6) })
			h.eventually(10*time.Second, "the resend delivered", func() bool {
				v := h.export(a.ID)
				return v.Generation == 1 && v.Sinks["scale"] == "delivered"
			})
			if n, d := len(scaleTasksOf(sc, issue)), sc.Duplicates(); n != 3 || d != 3 {
				t.Errorf("after a resend scale has %d tasks and %d duplicates, want 3 and 3", n, d)
			}
			for _, r := range h.export(a.ID).Requests {
				if r.Sink == "scale" && (!keys[r.IdempotencyKey] || r.Generation != 1) {
					t.Errorf("resent scale request %+v, want generation 1 with the first key", r)
				}
				if r.Sink == "label_studio" && r.State != "dead_lettered" {
					t.Errorf("label studio request %+v changed by a resend to scale", r)
				}
			}

			// Label Studio is back: a resend to it delivers what was dead-lettered.
			ls.SetUp()
			if code := h.resend(a.ID, `{"sink": "label_studio"}`); code != http.StatusAccepted {
				t.Fatalf("resend to label_studio = %d, want 202", code)
			}
			h.eventually(10*time.Second, "label studio delivered", func() bool {
				return h.export(a.ID).Sinks["label_studio"] == "delivered"
			})

			// Fresh: new keys, new work.
			if code := h.resend(a.ID, `{"sink": "scale", "fresh": true}`); code != http.StatusAccepted {
				t.Fatalf("fresh resend = %d, want 202", code)
			}
			waitFake(t, "scale's fresh tasks", func(ctx context.Context) error { return sc.WaitAccepted(ctx, 6) })
			if n := len(scaleTasksOf(sc, issue)); n != 6 {
				t.Errorf("after a fresh resend scale has %d tasks, want 6", n)
			}
			if code := h.resend("no-such-export", ""); code != http.StatusNotFound {
				t.Errorf("resend of an unknown export = %d, want 404", code)
			}
		})
	}
}

// The history is shared by the replicas on one Redis: an export accepted
// by one is listed, with its sinks' states, by another.
func TestExportHistorySharedOnRedis(t *testing.T) {
	sc := vendortest.NewScale(t, scaleKey)
	cfg := onBroker(t, "redis", head("")+scaleSink(sc.TaskURL(), fastPolicy))
	h := startHarness(t, cfg)
	body, issue := samplePayload(t, "issue-frames.json")
	a := h.accept(body)
	waitFake(t, "scale's three tasks", func(ctx context.Context) error { return sc.WaitAccepted(ctx, 3) })
	second := newHarnessWith(t, cfg, func(o *pipeline.Options) { o.ReplicaID = "other" })
	second.eventually(10*time.Second, "the other replica to see the export delivered", func() bool {
		got := second.exports("issue_id=" + url.QueryEscape(issue))
		return len(got) == 1 && got[0].ID == a.ID && got[0].Sinks["scale"] == "delivered"
	})
}

// history.enabled: false keeps nothing and says so.
func TestExportHistoryOff(t *testing.T) {
	h := startHarness(t, strings.Replace(head(""), "broker: {type: memory}", "broker: {type: memory}\nhistory: {enabled: false}", 1)+
		`  - {name: archive, type: file, path: out/archive.jsonl}
`)
	if code := h.adminDo(http.MethodGet, "/api/exports", nil, nil); code != http.StatusNotFound {
		t.Errorf("GET /api/exports with the history off = %d, want 404", code)
	}
}

// An export larger than history.max_payload_bytes is listed but its body
// is not kept: a resend says so and sends nothing.
func TestExportHistoryPayloadBound(t *testing.T) {
	sc := vendortest.NewScale(t, scaleKey)
	h := startHarness(t, strings.Replace(head(""), "broker: {type: memory}", "broker: {type: memory}\nhistory: {max_payload_bytes: 10}", 1)+
		scaleSink(sc.TaskURL(), fastPolicy))
	body, issue := samplePayload(t, "issue-frames.json")
	a := h.accept(body)
	waitFake(t, "scale's three tasks", func(ctx context.Context) error { return sc.WaitAccepted(ctx, 3) })
	if got := h.exports("issue_id=" + url.QueryEscape(issue)); len(got) != 1 || got[0].ID != a.ID {
		t.Fatalf("exports of %s = %+v, want %s", issue, got, a.ID)
	}
	if code := h.resend(a.ID, ""); code != http.StatusConflict {
		t.Errorf("resend of an export whose body was not kept = %d, want 409", code)
	}
	if n := sc.RequestCount(); n != 3 {
		t.Errorf("scale got %d requests, want the first 3 only", n)
	}
}

// One export's requests tell what happened to them, with times, on both
// brokers: delivered on the first try is 1 attempt; after two failures it
// is 3, with each failure's time and status; a request at the vendor is
// "delivering" though nothing was written for it; a resend adds the next
// generation after the first. The listing agrees.
func TestExportTimeline(t *testing.T) {
	for _, broker := range brokers {
		t.Run(broker, func(t *testing.T) {
			ls := vendortest.NewLabelStudio(t, lsToken)
			h := startHarness(t, onBroker(t, broker, head("")+labelStudioSink(ls, fastPolicy)))
			type step struct {
				event           string
				generation      int
				attempt, status int
			}
			check := func(id string, wantAttempts int, want []step) {
				t.Helper()
				var r = h.export(id).Requests
				if len(r) != 1 {
					t.Fatalf("export %s has requests %+v, want one", id, r)
				}
				q := r[0]
				if q.State != "delivered" || q.Attempts != wantAttempts || q.DeliveredAt.IsZero() {
					t.Errorf("export %s: request %+v, want delivered after %d attempts, with its time", id, q, wantAttempts)
				}
				var got []step
				for i, ev := range q.Timeline {
					got = append(got, step{ev.Event, ev.Generation, ev.Attempt, ev.Status})
					if ev.At.IsZero() || (i > 0 && ev.At.Before(q.Timeline[i-1].At)) {
						t.Errorf("export %s: timeline %+v: event %d has no time or is before the one before it", id, q.Timeline, i)
					}
				}
				if !slices.Equal(got, want) {
					t.Errorf("export %s: timeline %+v, want %+v", id, got, want)
				}
			}

			bodyA, _ := samplePayload(t, "issue-frames.json")
			a := h.accept(bodyA)
			waitFake(t, "A at the vendor", func(ctx context.Context) error { return ls.WaitAccepted(ctx, 1) })
			h.eventually(10*time.Second, "A delivered in the history", func() bool { return h.export(a.ID).Sinks["label_studio"] == "delivered" })
			check(a.ID, 1, []step{{"queued", 0, 0, 0}, {"delivered", 0, 1, 0}})

			ls.FailNext(2, http.StatusBadGateway, "")
			bodyB, _ := samplePayload(t, "issue-frames.json")
			b := h.accept(bodyB)
			waitFake(t, "B at the vendor", func(ctx context.Context) error { return ls.WaitAccepted(ctx, 2) })
			h.eventually(10*time.Second, "B delivered in the history", func() bool { return h.export(b.ID).Sinks["label_studio"] == "delivered" })
			check(b.ID, 3, []step{{"queued", 0, 0, 0}, {"attempt_failed", 0, 1, 502}, {"attempt_failed", 0, 2, 502}, {"delivered", 0, 3, 0}})

			// Held at the vendor: delivering, from its lease alone.
			ls.SetLatency(time.Hour)
			bodyC, issueC := samplePayload(t, "issue-frames.json")
			c := h.accept(bodyC)
			waitFake(t, "C to reach the vendor", func(ctx context.Context) error { return ls.WaitArrived(ctx, 5) }) // A 1, B 3
			if st := h.export(c.ID).Sinks["label_studio"]; st != "delivering" {
				t.Errorf("export at the vendor shows %q, want delivering", st)
			}
			if l := h.exports("state=delivering"); len(l) != 1 || l[0].ID != c.ID {
				t.Errorf("state=delivering lists %+v, want %s only", l, c.ID)
			}
			ls.SetLatency(0)
			h.eventually(10*time.Second, "C delivered", func() bool {
				l := h.exports("issue_id=" + url.QueryEscape(issueC))
				return len(l) == 1 && l[0].Sinks["label_studio"] == "delivered"
			})

			// Dead-lettered after its 5 attempts, then replayed: delivering
			// again while the vendor holds it, though its state says
			// dead_lettered; delivered after, the failures kept before it.
			ls.SetDown(http.StatusServiceUnavailable)
			bodyD, _ := samplePayload(t, "issue-frames.json")
			d := h.accept(bodyD)
			h.waitDeadLetters("label_studio", 1)
			h.eventually(10*time.Second, "D dead-lettered in the history", func() bool { return h.export(d.ID).Sinks["label_studio"] == "dead_lettered" })
			ls.SetUp()
			ls.SetLatency(time.Hour)
			var out map[string]any
			if code := h.adminDo(http.MethodPost, "/api/dlq/label_studio/replay", nil, &out); code != http.StatusOK {
				t.Fatalf("replay = %d %v", code, out)
			}
			waitFake(t, "D's replay to reach the vendor", func(ctx context.Context) error { return ls.WaitArrived(ctx, 5+5+1) }) // A-C 5, D 5
			if st := h.export(d.ID).Sinks["label_studio"]; st != "delivering" {
				t.Errorf("a replayed dead letter at the vendor shows %q, want delivering", st)
			}
			ls.SetLatency(0)
			h.eventually(10*time.Second, "D delivered", func() bool { return h.export(d.ID).Sinks["label_studio"] == "delivered" })
			var events []string
			dq := h.export(d.ID).Requests[0]
			for _, ev := range dq.Timeline {
				events = append(events, ev.Event)
			}
			if dq.Attempts != 6 || dq.Timeline[len(dq.Timeline)-1].Attempt != 6 {
				t.Errorf("D after its replay: %d attempts, timeline %+v; want 6 (5 failed, 1 delivered)", dq.Attempts, dq.Timeline)
			}
			if want := "queued " + strings.Repeat("attempt_failed ", 5) + "dead_lettered delivered"; strings.Join(events, " ") != want {
				t.Errorf("D's timeline = %v, want %s", events, want)
			}

			// A resend: the first generation's timeline, then the second's.
			if code := h.resend(a.ID, ""); code != http.StatusAccepted {
				t.Fatalf("resend = %d, want 202", code)
			}
			h.eventually(10*time.Second, "the resend delivered", func() bool {
				v := h.export(a.ID)
				return v.Generation == 1 && len(v.Requests) == 1 && v.Requests[0].Generation == 1 && v.Sinks["label_studio"] == "delivered"
			})
			check(a.ID, 1, []step{{"queued", 0, 0, 0}, {"delivered", 0, 1, 0}, {"resent", 1, 0, 0}, {"delivered", 1, 1, 0}})

			if all := h.exports(""); len(all) != 4 || all[0].ID != d.ID || all[1].ID != c.ID || all[3].ID != a.ID {
				t.Errorf("listing = %+v, want D, C, B, A", all)
			} else {
				for _, v := range all {
					if v.Sinks["label_studio"] != "delivered" {
						t.Errorf("listing shows %s as %v, want delivered", v.ID, v.Sinks)
					}
				}
			}
		})
	}
}

// Listing the history reads the delivery records of a page of exports in
// one MGET, whatever the number of requests, filters included: counted by
// Redis itself once every delivery is recorded (nothing else MGETs).
func TestExportListingReadsTheLedgerOncePerPage(t *testing.T) {
	srv := redistest.Start(t)
	sc := vendortest.NewScale(t, scaleKey)
	cfg := strings.Replace(head("")+scaleSink(sc.TaskURL(), fastPolicy), "broker: {type: memory}",
		"broker: {type: redis, claim_idle: 200ms}\nredis: {url: \""+srv.URL()+"\"}", 1)
	h := startHarness(t, cfg)
	for range 3 {
		body, _ := samplePayload(t, "issue-frames.json")
		h.accept(body)
	}
	waitFake(t, "scale's nine tasks", func(ctx context.Context) error { return sc.WaitAccepted(ctx, 9) })
	h.eventually(10*time.Second, "three exports delivered", func() bool {
		l := h.exports("")
		return len(l) == 3 && l[0].Sinks["scale"] == "delivered" && l[1].Sinks["scale"] == "delivered" && l[2].Sinks["scale"] == "delivered"
	})
	rdb := srv.Client(t)
	mgets := func() int {
		t.Helper()
		info, err := rdb.Info(t.Context(), "commandstats").Result()
		if err != nil {
			t.Fatal(err)
		}
		_, rest, ok := strings.Cut(info, "cmdstat_mget:calls=")
		if !ok {
			return 0
		}
		n, err := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, tc := range []struct {
		query string
		want  int
	}{{"", 3}, {"limit=2", 2}, {"state=dead_lettered", 0}, {"sink=scale&state=delivered", 3}} {
		before := mgets()
		if got := h.exports(tc.query); len(got) != tc.want {
			t.Errorf("?%s lists %d exports, want %d", tc.query, len(got), tc.want)
		}
		if n := mgets() - before; n != 1 {
			t.Errorf("?%s made %d MGETs, want 1 for the page (9 requests)", tc.query, n)
		}
	}
}
