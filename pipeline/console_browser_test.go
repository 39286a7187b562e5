package pipeline_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/labelpipe/labelpipe/internal/browsertest"
	"github.com/labelpipe/labelpipe/internal/vendortest"
)

// browserWait is how long the console has to show a change: it polls the
// admin API every second.
const browserWait = 20 * time.Second

// console drives the status console in a real headless Chromium.
type console struct {
	t     *testing.T
	ctx   context.Context
	shots string // where screenshots go
}

func (c *console) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.ctx, browserWait+10*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		c.t.Fatalf("%s: %v", what, err)
	}
}

// waitFor polls a JavaScript condition in the page until it is true.
// A form's submission navigates: a poll under way then ends with the
// page it ran in, and is started again in the new one.
func (c *console) waitFor(what, cond string) {
	c.t.Helper()
	deadline := time.Now().Add(browserWait)
	for {
		ctx, cancel := context.WithDeadline(c.ctx, deadline.Add(time.Second))
		_, err := chromedp.Run(ctx, chromedp.Poll[bool](cond, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(time.Until(deadline))))
		cancel()
		if err == nil {
			return
		}
		// The page's JavaScript context went away with the navigation.
		navigated := strings.Contains(err.Error(), "navigated or closed") || strings.Contains(err.Error(), "context was destroyed") ||
			strings.Contains(err.Error(), "Cannot find context")
		if !navigated || time.Now().After(deadline) {
			c.t.Fatalf("wait for %s: %v", what, err)
		}
	}
}

func (c *console) eval(expr string, out any) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.ctx, browserWait)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[any](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		c.t.Fatalf("evaluate %s: %v", expr, err)
	}
	switch p := out.(type) {
	case *string:
		*p, _ = v.(string)
	case *float64:
		*p, _ = v.(float64)
	case *bool:
		*p, _ = v.(bool)
	}
}

func (c *console) text(sel string) string {
	c.t.Helper()
	var s string
	c.eval(fmt.Sprintf(`document.querySelector(%q)?.textContent ?? ""`, sel), &s)
	return s
}

// screenshot saves the whole page as name.png.
func (c *console) screenshot(name string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.ctx, browserWait)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		c.t.Fatalf("screenshot %s: %v", name, err)
	}
	if !bytes.HasPrefix(png, []byte("\x89PNG")) || len(png) < 10_000 {
		c.t.Fatalf("screenshot %s: %d bytes, not a PNG of a rendered page", name, len(png))
	}
	if err := os.WriteFile(filepath.Join(c.shots, name+".png"), png, 0o644); err != nil {
		c.t.Fatal(err)
	}
}

// row is the CSS selector of a sink's row, or of a cell of it.
func sinkRow(sink, cell string) string {
	return strings.TrimSpace(fmt.Sprintf(`#sinks tbody tr[data-sink=%q] %s`, sink, cell))
}

func exportSink(export, sink string) string {
	return fmt.Sprintf(`#exports-list tr[data-export-row=%q] li[data-sink=%q]`, export, sink)
}

// timelineIs is a condition: the open export's request (<sink>.<chunk>)
// lists these events, in order, each with a <time datetime> that parses.
func timelineIs(request, events string) string {
	return fmt.Sprintf(`(() => {
		const li = [...document.querySelectorAll('#export-requests tr[data-request=%q] ol.timeline > li')];
		return li.map(l => l.dataset.event).join() === %q &&
			li.every(l => !isNaN(Date.parse(l.querySelector("time")?.dateTime)));
	})()`, request, events)
}

func dlqRow(export string) string { return fmt.Sprintf(`#dlq tbody tr[data-export=%q]`, export) }

// The console in a real browser, against a running pipeline and fake
// vendors: it shows the sinks; a vendor outage opens the breaker and fills
// the DLQ before the operator's eyes; without signing in, and from
// another origin even once signed in, nothing changes; signed in, the
// operator resets the breaker, replays one dead letter and a filtered
// one, and watches them delivered, then pauses and resumes the sink from
// the keyboard. Screenshots are kept in testdata/console with -update.
func TestConsoleInBrowser(t *testing.T) {
	start := time.Now()
	ls := vendortest.NewLabelStudio(t, lsToken)
	sc := vendortest.NewScale(t, scaleKey)
	cfg := strings.Replace(head(""), `admin: {addr: ""}`,
		`admin: {addr: "", token: `+adminToken+`, trace_url: "http://jaeger.example:16686/trace/{trace_id}"}`, 1) +
		labelStudioSink(ls, `
    retry: {max_attempts: 2, initial_interval: 5ms, max_interval: 10ms, max_elapsed: 0s}
    breaker: {consecutive_failures: 4, open_timeout: 1h}`) +
		scaleSink(sc.TaskURL(), fastPolicy)
	h := startHarness(t, cfg)

	shots := t.TempDir()
	if *update {
		shots = filepath.Join("testdata", "console")
		if err := os.MkdirAll(shots, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	c := &console{t: t, ctx: browsertest.Start(t), shots: shots}
	t.Logf("browser up after %v", time.Since(start).Round(time.Millisecond))

	// Loopback reads without signing in: the sinks are there.
	c.do("load the console", chromedp.Navigate(h.admin.URL+"/"),
		chromedp.WaitVisible(chromedp.CSS(sinkRow("label_studio", ""))),
		chromedp.WaitVisible(chromedp.CSS(sinkRow("scale", ""))),
		chromedp.WaitVisible(chromedp.CSS("#signin")))
	if b := c.text(sinkRow("label_studio", "td.breaker")); b != "closed" {
		t.Errorf("label_studio's breaker shows %q, want closed", b)
	}
	var disabled bool
	c.eval(`document.querySelector('`+sinkRow("label_studio", `button[data-action="pause"]`)+`').disabled`, &disabled)
	if !disabled {
		t.Errorf("the pause button is enabled before signing in")
	}
	c.waitFor("the empty export history", `!document.querySelector('#exports-empty').hidden`)
	c.screenshot("01-sinks")

	// The vendor goes down: the first export is dead-lettered after its
	// two attempts, the second trips the breaker (4 failures in a row).
	ls.SetDown(http.StatusServiceUnavailable)
	bodyA, _ := samplePayload(t, "issue-frames.json")
	a := h.accept(bodyA)
	c.waitFor("the first dead letter", fmt.Sprintf(`!!document.querySelector('%s')`, dlqRow(a.ID)))
	bodyB, issueB := samplePayload(t, "issue-frames.json")
	b := h.accept(bodyB)
	c.waitFor("the second dead letter", fmt.Sprintf(`!!document.querySelector('%s')`, dlqRow(b.ID)))
	c.waitFor("the breaker to show open", fmt.Sprintf(`document.querySelector('%s')?.textContent === "open"`, sinkRow("label_studio", "td.breaker")))
	if got := c.text(dlqRow(a.ID) + " td.status"); got != "503" {
		t.Errorf("dead letter status shows %q, want 503", got)
	}
	if got := c.text(dlqRow(a.ID) + " td.answer"); got == "" || got == "—" {
		t.Errorf("dead letter shows no vendor answer")
	}
	var href string
	c.eval(`document.querySelector('`+dlqRow(a.ID)+` a')?.href ?? ""`, &href)
	if href != "http://jaeger.example:16686/trace/"+a.TraceID {
		t.Errorf("trace link = %q, want the trace of export %s (%s)", href, a.ID, a.TraceID)
	}
	if got := c.text(sinkRow("label_studio", "td.error")); !strings.Contains(got, "503") {
		t.Errorf("last error shows %q, want the 503", got)
	}
	c.screenshot("02-breaker-open-dlq")

	// Without signing in, a change from the page itself is refused.
	var status float64
	c.eval(`fetch('/api/dlq/label_studio/replay', {method: 'POST'}).then(r => r.status)`, &status)
	if status != http.StatusUnauthorized {
		t.Errorf("replay from the page without signing in = %v, want 401", status)
	}
	c.eval(`fetch('/api/sinks/label_studio/pause', {method: 'POST'}).then(r => r.status)`, &status)
	if status != http.StatusUnauthorized {
		t.Errorf("pause from the page without signing in = %v, want 401", status)
	}
	if st := h.sink("label_studio"); st.Paused || st.DLQ != 2 || st.Breaker != "open" {
		t.Fatalf("after refused changes /api/sinks = %+v, want running, 2 dead letters, open", st)
	}

	// A wrong token: the page says so, and still offers no controls.
	c.do("sign in with a wrong token", chromedp.SendKeys(chromedp.CSS("#token"), adminToken+"-wrong"),
		chromedp.Click(chromedp.CSS(`#signin button[type="submit"]`)))
	c.waitFor("the sign-in failure", `document.querySelector('#status').textContent.includes("Sign-in failed")`)
	c.waitFor("the page to be live again", `!!document.querySelector('`+dlqRow(b.ID)+`')`)
	c.eval(`document.querySelector('`+sinkRow("label_studio", `button[data-action="pause"]`)+`').disabled && !document.querySelector('#signin').hidden`, &disabled)
	if !disabled {
		t.Errorf("after a wrong token the controls are enabled or the sign-in form is gone")
	}

	// Signing in: the token goes in the form once; the page and
	// document.cookie never show it or the session.
	c.do("sign in", chromedp.SendKeys(chromedp.CSS("#token"), adminToken),
		chromedp.Click(chromedp.CSS(`#signin button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#signout")),
		chromedp.WaitVisible(chromedp.CSS(dlqRow(b.ID))))
	c.waitFor("the controls to be enabled", `!document.querySelector('`+sinkRow("label_studio", `button[data-action="reset"]`)+`').disabled`)
	var html, cookies string
	c.eval(`document.documentElement.outerHTML`, &html)
	c.eval(`document.cookie`, &cookies)
	if strings.Contains(html, adminToken) || cookies != "" {
		t.Errorf("after signing in the page shows the token (%v) or scripts see the cookie (%q)", strings.Contains(html, adminToken), cookies)
	}
	c.screenshot("03-signed-in")

	// Another origin (a page on another port of this machine), with the
	// session cookie in the browser: its requests change nothing.
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `<!doctype html><title>elsewhere</title><p>elsewhere</p>`)
	}))
	defer evil.Close()
	other, closeOther := chromedp.NewContext(c.ctx)
	// The tab lives as long as the context of its first run: no timeout.
	if err := chromedp.Do(other); err != nil {
		t.Fatalf("open a second tab: %v", err)
	}
	ec := &console{t: t, ctx: other, shots: shots}
	ec.do("open the other origin", chromedp.Navigate(evil.URL))
	for _, path := range []string{"/api/sinks/label_studio/pause", "/api/sinks/label_studio/breaker/reset", "/api/dlq/label_studio/replay"} {
		var sent string
		ec.eval(fmt.Sprintf(`fetch(%q, {method: 'POST', mode: 'no-cors', credentials: 'include', headers: {'Content-Type': 'text/plain'}, body: '{}'}).then(() => 'sent', e => 'failed: ' + e)`,
			h.admin.URL+path), &sent)
		if sent != "sent" {
			t.Fatalf("the other origin's request to %s was not sent (%s): the test proves nothing", path, sent)
		}
	}
	closeOther()
	// They reached the admin API, which refused them (the browser sent
	// them: no-cors fetches that only the server can stop).
	if n := strings.Count(h.logs.String(), "admin API refused a cross-origin change"); n != 3 {
		t.Errorf("the admin API logged %d refused cross-origin changes, want 3", n)
	}
	if st := h.sink("label_studio"); st.Paused || st.DLQ != 2 || st.Breaker != "open" {
		t.Fatalf("after another origin's requests /api/sinks = %+v, want running, 2 dead letters, open", st)
	}
	if ls.RequestCount() != 4 {
		t.Errorf("vendor got %d requests, want the 4 failures only", ls.RequestCount())
	}

	// The vendor is back. Reset the breaker, replay A by its row's button
	// and B by the filter (its Aquarium issue id): both are delivered.
	ls.SetUp()
	c.do("reset the breaker", chromedp.Click(chromedp.CSS(sinkRow("label_studio", `button[data-action="reset"]`))))
	c.waitFor("the breaker to show closed", fmt.Sprintf(`document.querySelector('%s')?.textContent === "closed"`, sinkRow("label_studio", "td.breaker")))
	c.do("replay A", chromedp.Click(chromedp.CSS(dlqRow(a.ID)+` button[data-action="replay-one"]`)))
	c.waitFor("A to leave the DLQ", fmt.Sprintf(`!document.querySelector('%s')`, dlqRow(a.ID)))
	c.do("replay by issue", chromedp.SetValue(chromedp.CSS("#f-sink"), "label_studio"),
		chromedp.SendKeys(chromedp.CSS("#f-issue"), issueB),
		chromedp.Click(chromedp.CSS("#replay-filtered")))
	c.waitFor("the filtered replay's answer", `document.querySelector('#status').textContent.includes("Replayed 1 of 1")`)
	c.waitFor("B to leave the DLQ", fmt.Sprintf(`!document.querySelector('%s')`, dlqRow(b.ID)))
	c.waitFor("two deliveries", fmt.Sprintf(`document.querySelector('%s')?.textContent === "2"`, sinkRow("label_studio", "td.rate")))
	waitFake(t, "both exports at the vendor", func(ctx context.Context) error { return ls.WaitAccepted(ctx, 2) })
	c.screenshot("04-replayed-delivered")

	// Recent exports: A is listed with label_studio delivered; its row
	// opens its requests; a resend to Scale from the page delivers again
	// with the same idempotency keys (Scale answers "already done").
	c.waitFor("A delivered in recent exports", fmt.Sprintf(`document.querySelector('%s')?.textContent === "label_studio: delivered"`, exportSink(a.ID, "label_studio")))
	c.do("open A", chromedp.Click(chromedp.CSS(fmt.Sprintf(`#exports-list tr[data-export-row=%q] button[data-action="open"]`, a.ID))))
	c.waitFor("A's requests", fmt.Sprintf(`document.querySelector('#export-detail')?.dataset.export === %q && document.querySelectorAll('#export-requests tbody tr').length === 4`, a.ID))
	// Its label_studio request's timeline: the two failures, the dead
	// letter, the delivery after the replay, each with a machine-readable
	// time.
	c.waitFor("A's label_studio timeline", timelineIs("label_studio.0", "queued,attempt_failed,attempt_failed,dead_lettered,delivered"))
	scaleBefore := sc.RequestCount()
	c.do("resend A to scale", chromedp.SetValue(chromedp.CSS("#resend-sink"), "scale"), chromedp.Click(chromedp.CSS("#resend-same")))
	c.waitFor("the resend's answer", `document.querySelector('#status').textContent.includes("generation 1")`)
	waitFake(t, "scale's resent requests", func(ctx context.Context) error { return sc.WaitRequests(ctx, scaleBefore+3) })
	c.waitFor("generation 1 shown", `[...document.querySelectorAll('#export-requests td.generation')].filter(td => td.textContent === "1").length === 3`)
	c.waitFor("the resend in scale's timeline", timelineIs("scale.0", "queued,delivered,resent,delivered"))
	if d := sc.Duplicates(); d != 3 {
		t.Errorf("scale counted %d duplicates after the resend, want 3 (same idempotency keys)", d)
	}
	c.screenshot("05-export-resent")

	// Pause from the page: the next export waits in the queue; resume,
	// from the keyboard, delivers it.
	c.do("pause", chromedp.Click(chromedp.CSS(sinkRow("label_studio", `button[data-action="pause"]`))))
	c.waitFor("the sink to show paused", fmt.Sprintf(`document.querySelector('%s')?.textContent.startsWith("paused by console session")`, sinkRow("label_studio", "td.state")))
	bodyC, _ := samplePayload(t, "issue-frames.json")
	h.accept(bodyC)
	c.waitFor("the export to wait in the queue", fmt.Sprintf(`document.querySelector('%s')?.textContent === "1"`, sinkRow("label_studio", "td.queue")))
	if n := ls.Accepted(); n != 2 {
		t.Errorf("vendor accepted %d imports while paused, want still 2", n)
	}
	c.screenshot("06-paused")
	c.do("resume from the keyboard", chromedp.Focus(chromedp.CSS(sinkRow("label_studio", `button[data-action="resume"]`))),
		chromedp.KeyEvent(kb.Enter))
	c.waitFor("three deliveries", fmt.Sprintf(`document.querySelector('%s')?.textContent === "3"`, sinkRow("label_studio", "td.rate")))
	if st := h.sink("label_studio"); st.Paused || st.DLQ != 0 || st.QueueDepth != 0 {
		t.Errorf("at the end /api/sinks = %+v, want running, no dead letter, empty queue", st)
	}
	t.Logf("browser test took %v", time.Since(start).Round(time.Millisecond))
}
