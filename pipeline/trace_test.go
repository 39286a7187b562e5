package pipeline_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// spanTree is the ended spans of one trace, for asserting parent links.
type spanTree struct {
	t     *testing.T
	spans []sdktrace.ReadOnlySpan
}

// traceOf waits (bounded) until the trace holds every span named in want,
// each at least as often as listed, and returns it.
func (h *harness) traceOf(traceID string, want map[string]int) spanTree {
	h.t.Helper()
	var tree spanTree
	h.eventually(10*time.Second, fmt.Sprintf("trace %s to hold %v", traceID, want), func() bool {
		tree = spanTree{t: h.t}
		for _, s := range h.spans.Ended() {
			if s.SpanContext().TraceID().String() == traceID {
				tree.spans = append(tree.spans, s)
			}
		}
		for name, n := range want {
			if len(tree.named(name)) < n {
				return false
			}
		}
		return true
	})
	return tree
}

func (tr spanTree) named(name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range tr.spans {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

// one returns the single span with that name.
func (tr spanTree) one(name string) sdktrace.ReadOnlySpan {
	tr.t.Helper()
	got := tr.named(name)
	if len(got) != 1 {
		tr.t.Fatalf("want one %q span, got %d; trace:\n%s", name, len(got), tr)
	}
	return got[0]
}

// childOf fails unless child's parent is parent.
func (tr spanTree) childOf(child, parent sdktrace.ReadOnlySpan) {
	tr.t.Helper()
	if child.Parent().SpanID() != parent.SpanContext().SpanID() {
		tr.t.Errorf("%q is not a child of %q; trace:\n%s", child.Name(), parent.Name(), tr)
	}
}

// children are the spans whose parent is s, with the given name.
func (tr spanTree) children(s sdktrace.ReadOnlySpan, name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, c := range tr.spans {
		if c.Parent().SpanID() == s.SpanContext().SpanID() && c.Name() == name {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b sdktrace.ReadOnlySpan) int { return a.StartTime().Compare(b.StartTime()) })
	return out
}

func (tr spanTree) String() string {
	var b strings.Builder
	for _, s := range tr.spans {
		fmt.Fprintf(&b, "  %s (%s) parent %s status %v\n", s.Name(), s.SpanContext().SpanID(), s.Parent().SpanID(), s.Status().Code)
	}
	return b.String()
}

func attr(s sdktrace.ReadOnlySpan, key string) attribute.Value {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value
		}
	}
	return attribute.Value{}
}

// An accepted export to three sinks is one trace: the webhook's server
// span, a span per stage, the publish to exports, the fan-out, and per sink
// the publish, the consumer, the delivery, the attempt and the HTTP call.
func TestTraceAcceptedExportToThreeSinks(t *testing.T) {
	v := newVendors(t)
	h := startHarness(t, v.config(fastPolicy))
	body, _ := samplePayload(t, "issue-frames.json")
	a := h.accept(body)

	sinks := map[string]int{"labelbox": 1, "scale": 3, "label_studio": 1} // requests each
	want := map[string]int{"POST /webhook": 1, "stage secret": 1, "stage schema": 1, "stage dedupe": 1,
		"publish exports": 1, "process exports": 1}
	for name, n := range sinks {
		want["publish sink."+name] = 1
		want["process sink."+name] = n
		want["deliver "+name] = n
		want["attempt "+name] = n
	}
	tr := h.traceOf(a.TraceID, want)

	server := tr.one("POST /webhook")
	if server.SpanKind() != trace.SpanKindServer {
		t.Errorf("webhook span kind = %v, want server", server.SpanKind())
	}
	for _, st := range []string{"secret", "schema", "dedupe"} {
		s := tr.one("stage " + st)
		tr.childOf(s, server)
		if got := attr(s, "labelpipe.stage.outcome").AsString(); got != "passed" {
			t.Errorf("stage %s outcome = %q, want passed", st, got)
		}
		if got := attr(s, "labelpipe.stage.type").AsString(); got != st {
			t.Errorf("stage %s type attribute = %q", st, got)
		}
	}
	pub := tr.one("publish exports")
	tr.childOf(pub, server)
	if pub.SpanKind() != trace.SpanKindProducer || attr(pub, "messaging.destination.name").AsString() != "exports" {
		t.Errorf("publish exports: kind %v, destination %q", pub.SpanKind(), attr(pub, "messaging.destination.name").AsString())
	}
	fan := tr.one("process exports")
	tr.childOf(fan, pub)
	if fan.SpanKind() != trace.SpanKindConsumer {
		t.Errorf("fan-out span kind = %v, want consumer", fan.SpanKind())
	}
	for name, n := range sinks {
		sp := tr.one("publish sink." + name)
		tr.childOf(sp, fan)
		procs := tr.children(sp, "process sink."+name)
		if len(procs) != n {
			t.Errorf("sink %s: %d consumer spans under its publish, want %d", name, len(procs), n)
		}
		for _, proc := range procs {
			deliver := tr.children(proc, "deliver "+name)
			if len(deliver) != 1 {
				t.Fatalf("sink %s: %d deliver spans under a consumer span, want 1; trace:\n%s", name, len(deliver), tr)
			}
			attempts := tr.children(deliver[0], "attempt "+name)
			if len(attempts) != 1 || attr(attempts[0], "labelpipe.attempt").AsInt64() != 1 {
				t.Fatalf("sink %s: attempts %d, want one numbered 1", name, len(attempts))
			}
			if got := attr(attempts[0], "labelpipe.breaker.state").AsString(); got != "closed" {
				t.Errorf("sink %s attempt breaker state = %q, want closed", name, got)
			}
			// The vendor call (otelhttp client span) hangs under the attempt.
			var clients int
			for _, c := range tr.spans {
				if c.Parent().SpanID() == attempts[0].SpanContext().SpanID() && c.SpanKind() == trace.SpanKindClient {
					clients++
				}
			}
			if clients != 1 {
				t.Errorf("sink %s: %d HTTP client spans under the attempt, want 1", name, clients)
			}
		}
	}
}

// A rejected export ends at its stage: the stage span records the reject
// and nothing is published.
func TestTraceRejectedExport(t *testing.T) {
	v := newVendors(t)
	h := startHarness(t, v.config(fastPolicy))
	body, _ := samplePayload(t, "issue-frames.json")
	a := h.send(hookReq{secret: "wrong", body: body})
	if a.Code != http.StatusUnauthorized || a.TraceID == "" {
		t.Fatalf("want 401 with a trace id, got %d %s", a.Code, a.Raw)
	}
	tr := h.traceOf(a.TraceID, map[string]int{"POST /webhook": 1, "stage secret": 1})
	secret := tr.one("stage secret")
	tr.childOf(secret, tr.one("POST /webhook"))
	if secret.Status().Code != codes.Error || attr(secret, "labelpipe.stage.outcome").AsString() != "rejected" {
		t.Errorf("secret span status %v outcome %q, want error / rejected", secret.Status(), attr(secret, "labelpipe.stage.outcome").AsString())
	}
	var rejected bool
	for _, e := range secret.Events() {
		rejected = rejected || e.Name == "rejected"
	}
	if !rejected {
		t.Errorf("secret span has no rejected event: %v", secret.Events())
	}
	for _, name := range []string{"stage schema", "publish exports"} {
		if got := tr.named(name); len(got) != 0 {
			t.Errorf("a rejected export has %d %q spans, want none", len(got), name)
		}
	}
}

// A delivery retried then successful shows each attempt, the failed one in
// error, under one delivery span that ends well.
func TestTraceRetriedThenDelivered(t *testing.T) {
	ls := newVendors(t).ls
	ls.FailNext(1, http.StatusServiceUnavailable, "")
	h := startHarness(t, head("")+labelStudioSink(ls, fastPolicy))
	body, _ := samplePayload(t, "issue-frames.json")
	a := h.accept(body)
	waitFake(t, "the retried import", func(ctx context.Context) error { return ls.WaitAccepted(ctx, 1) })

	tr := h.traceOf(a.TraceID, map[string]int{"deliver label_studio": 1, "attempt label_studio": 2})
	deliver := tr.one("deliver label_studio")
	attempts := tr.children(deliver, "attempt label_studio")
	if len(attempts) != 2 {
		t.Fatalf("attempts under the delivery = %d, want 2; trace:\n%s", len(attempts), tr)
	}
	first, second := attempts[0], attempts[1]
	if attr(first, "labelpipe.attempt").AsInt64() != 1 || attr(second, "labelpipe.attempt").AsInt64() != 2 {
		t.Errorf("attempt numbers = %d, %d; want 1, 2", attr(first, "labelpipe.attempt").AsInt64(), attr(second, "labelpipe.attempt").AsInt64())
	}
	if first.Status().Code != codes.Error || attr(first, "http.response.status_code").AsInt64() != 503 {
		t.Errorf("first attempt: status %v, http status %d; want error, 503", first.Status(), attr(first, "http.response.status_code").AsInt64())
	}
	if second.Status().Code == codes.Error {
		t.Errorf("second attempt in error: %v", second.Status())
	}
	if deliver.Status().Code == codes.Error {
		t.Errorf("delivery span in error after a successful retry: %v", deliver.Status())
	}
}

// A dead-lettered delivery ends in error, with an event holding the
// vendor's answer.
func TestTraceDeadLettered(t *testing.T) {
	ls := newVendors(t).ls
	ls.FailNext(1, http.StatusBadRequest, "")
	h := startHarness(t, head("")+labelStudioSink(ls, fastPolicy))
	body, _ := samplePayload(t, "issue-frames.json")
	a := h.accept(body)
	h.waitDeadLetters("label_studio", 1)

	tr := h.traceOf(a.TraceID, map[string]int{"process sink.label_studio": 1, "deliver label_studio": 1})
	proc := tr.one("process sink.label_studio")
	deliver := tr.one("deliver label_studio")
	tr.childOf(deliver, proc)
	if deliver.Status().Code != codes.Error {
		t.Errorf("delivery span status = %v, want error", deliver.Status())
	}
	if proc.Status().Code != codes.Error || !strings.Contains(proc.Status().Description, "dead-lettered") {
		t.Errorf("consumer span status = %v, want an error saying dead-lettered", proc.Status())
	}
	var event *sdktrace.Event
	for _, e := range proc.Events() {
		if e.Name == "dead_lettered" {
			event = &e
		}
	}
	if event == nil {
		t.Fatalf("no dead_lettered event on the consumer span: %v", proc.Events())
	}
	var status int64
	var answer string
	for _, kv := range event.Attributes {
		switch kv.Key {
		case "http.response.status_code":
			status = kv.Value.AsInt64()
		case "labelpipe.vendor_answer":
			answer = kv.Value.AsString()
		}
	}
	if status != 400 || answer == "" {
		t.Errorf("dead_lettered event: status %d, answer %q; want 400 and the vendor's answer", status, answer)
	}
}
