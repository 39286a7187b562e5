package waterfall_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/labelpipe/labelpipe/builtin"
	"github.com/labelpipe/labelpipe/configs"
	"github.com/labelpipe/labelpipe/internal/jaegertest"
	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/internal/testutil"
	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/telemetry"
	"github.com/labelpipe/labelpipe/pipeline/telemetry/waterfall"
)

const secret = "waterfall-secret"

// exported runs one export through a real pipeline on the Redis broker,
// exporting its spans over OTLP to j: two sinks, scale failing its first
// request with a 503. It returns the 202's export id and trace id once
// every span is in Jaeger.
func exported(t *testing.T, j *jaegertest.Jaeger, endpoint string) (exportID, traceID string) {
	t.Helper()
	ctx := t.Context()
	var scaleCalls, studioCalls atomic.Int32
	scale := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if scaleCalls.Add(1) == 1 {
			http.Error(w, `{"error":"try again"}`, http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, `{"task_id":"t1"}`)
	}))
	t.Cleanup(scale.Close)
	studio := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		studioCalls.Add(1)
		_, _ = io.WriteString(w, `{}`)
	}))
	t.Cleanup(studio.Close)
	rd := redistest.Start(t)
	webhook, admin := freeAddr(t), freeAddr(t)
	cfg, err := pipeline.ParseConfig("waterfall.yaml", []byte(fmt.Sprintf(`
server: {addr: %q, path: /webhook, shutdown_timeout: 10s}
admin: {addr: %q}
broker: {type: redis}
redis: {url: %q}
tracing: {exporter: otlp, endpoint: %q, sample_ratio: 1}
stages:
  - {type: secret, header: X-Aquarium-Secret, secrets: [%q]}
  - {type: schema, schema: issue-exported}
  - {type: dedupe, store: redis, ttl: 1h}
sinks:
  - name: scale
    type: http
    url: %s
    body: '{id: $export.id}'
    retry: {max_attempts: 3, initial_interval: 10ms, max_interval: 20ms}
  - name: studio
    type: http
    url: %s
    body: '{id: $export.id}'
`, webhook, admin, rd.URL(), endpoint, secret, scale.URL, studio.URL)))
	if err != nil {
		t.Fatal(err)
	}
	tel, err := telemetry.New(ctx, cfg.Tracing, telemetry.Info{Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	logs := &testutil.LockedBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("labelpipe log:\n%s", logs)
		}
	})
	p, err := pipeline.New(cfg, pipeline.Options{Registry: builtin.Registry(),
		Logger:         slog.New(slog.NewTextHandler(logs, nil)),
		TracerProvider: tel.TracerProvider, MeterProvider: tel.MeterProvider, Metrics: tel.Metrics})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(runCtx) }()
	// Ready over the admin listener, which Run starts after the webhook
	// one: p.Ready alone can say yes before the webhook listens.
	waitFor(t, "ready", func() bool {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	body, err := configs.Payloads.ReadFile("payloads/issue-crops.json")
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+webhook+"/webhook", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Aquarium-Secret", secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		ID      string `json:"id"`
		TraceID string `json:"trace_id"`
	}
	err = json.NewDecoder(resp.Body).Decode(&raw)
	_ = resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("webhook answered %d %+v (%v)", resp.StatusCode, raw, err)
	}
	a := raw
	waitFor(t, "both vendors", func() bool { return scaleCalls.Load() == 2 && studioCalls.Load() == 1 })
	stop()
	if err := <-runErr; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := tel.Shutdown(ctx); err != nil { // flushes every span to Jaeger
		t.Fatal(err)
	}
	tr, err := j.WaitTrace(ctx, a.TraceID, func(tr jaegertest.Trace) bool {
		return len(tr.Find("", "attempt scale")) == 2 && len(tr.Find("", "attempt studio")) == 1 && len(tr.Find("", "POST /webhook")) == 1
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, tr)
	}
	return a.ID, a.TraceID
}

// TestPrintRealTrace prints a real pipeline's trace from a real Jaeger
// (issue 12: "the trace is one command away") and checks the waterfall's
// structure, not its timings: every stage, hop and attempt in its place
// under its parent, the failed attempt highlighted with its status, the
// same trace found by the export id, colour only when asked for.
func TestPrintRealTrace(t *testing.T) {
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
	j := jaegertest.Start(t)
	exportID, traceID := exported(t, j, j.OTLPGRPC())

	var out bytes.Buffer
	if err := waterfall.Print(t.Context(), &out, j.QueryURL(), traceID, waterfall.Options{}); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	t.Logf("waterfall:\n%s", text)
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if want := "trace " + traceID + "  export " + exportID; !strings.HasPrefix(lines[0], want) {
		t.Errorf("heading %q, want it to start with %q", lines[0], want)
	}
	if m := regexp.MustCompile(`(\d+) errors?`).FindStringSubmatch(lines[0]); m == nil || m[1] == "0" {
		t.Errorf("heading %q does not count the failed attempt", lines[0])
	}
	if strings.Contains(text, "whose parent is not in Jaeger") || strings.Contains(text, "missing)") {
		t.Errorf("spans without their parent in a whole trace")
	}
	if strings.Contains(text, "\x1b[") {
		t.Errorf("ANSI escapes without Color")
	}

	// find returns the index and indentation of the first row at or
	// after from whose label starts with prefix (after the indentation).
	find := func(from int, prefix string) (int, int) {
		t.Helper()
		for i := from; i < len(lines); i++ {
			l := lines[i]
			trimmed := strings.TrimLeft(l, " ")
			if strings.HasPrefix(trimmed, prefix) && strings.Contains(l, "|") {
				return i, len(l) - len(trimmed)
			}
		}
		t.Fatalf("no row %q after row %d in:\n%s", prefix, from, text)
		return 0, 0
	}
	hook, hookIn := find(0, "POST /webhook [server]")
	stages := []string{"stage secret", "stage schema", "stage dedupe", "publish exports [producer]"}
	at := hook
	for _, s := range stages {
		i, in := find(at+1, s)
		if in != hookIn+2 {
			t.Errorf("%q indented %d, want %d: a child of the webhook span", s, in, hookIn+2)
		}
		at = i
	}
	pubExports, pubIn := find(hook, "publish exports [producer]")
	procExports, procIn := find(pubExports, "process exports [consumer]")
	if procIn != pubIn+2 {
		t.Errorf("the fan-out (indent %d) is not under the publish to exports (indent %d)", procIn, pubIn)
	}
	if !strings.Contains(lines[procExports], "hop +") {
		t.Errorf("the broker hop has no wait: %q", lines[procExports])
	}
	pubScale, _ := find(procExports, "publish sink.scale [producer]")
	procScale, _ := find(pubScale, "process sink.scale [consumer]")
	deliver, deliverIn := find(procScale, "deliver scale")
	a1, a1In := find(deliver, "attempt scale  #1")
	a2, a2In := find(a1, "attempt scale  #2")
	if a1In != deliverIn+2 || a2In != deliverIn+2 {
		t.Errorf("attempts indented %d and %d, want %d: children of the delivery", a1In, a2In, deliverIn+2)
	}
	if !strings.HasSuffix(lines[a1], "ERROR 503") {
		t.Errorf("the failed attempt is not marked with its status: %q", lines[a1])
	}
	if !strings.Contains(lines[a1+1], "error:") {
		t.Errorf("no error text under the failed attempt: %q", lines[a1+1])
	}
	if !strings.Contains(lines[a2], "after ") || !strings.Contains(lines[a2], " ok") {
		t.Errorf("the retry shows neither its backoff nor its success: %q", lines[a2])
	}
	// The only errors are the vendor's 503: its attempt and HTTP call. No
	// Redis command of this Redis-mode trace (CLIENT SETINFO on Redis 7.0,
	// a script's first EVALSHA) is an error (issue 12, observation 10).
	for _, l := range lines[2:] {
		if strings.Contains(l, "ERROR") && !strings.Contains(l, "attempt scale  #1") && !strings.Contains(l, "HTTP POST [client]") {
			t.Errorf("a spurious error row: %q", l)
		}
	}
	find(procExports, "deliver studio")
	find(procExports, "attempt studio  #1")
	if !regexp.MustCompile(`\+\d+ redis`).MatchString(text) {
		t.Errorf("the Redis commands are not counted anywhere")
	}
	bars := regexp.MustCompile(`\|( *█+ *)\|`)
	for _, l := range lines[2:] {
		if strings.Contains(l, "|") && !bars.MatchString(l) {
			t.Errorf("row without a bar: %q", l)
		}
	}

	t.Run("by export id", func(t *testing.T) {
		var byExport bytes.Buffer
		if err := waterfall.Print(t.Context(), &byExport, j.QueryURL(), exportID, waterfall.Options{}); err != nil {
			t.Fatal(err)
		}
		if first, _, _ := strings.Cut(byExport.String(), "\n"); first != lines[0] {
			t.Errorf("by export id: %q, want the same trace %q", first, lines[0])
		}
	})
	t.Run("color", func(t *testing.T) {
		var colored bytes.Buffer
		if err := waterfall.Print(t.Context(), &colored, j.QueryURL(), traceID, waterfall.Options{Color: true}); err != nil {
			t.Fatal(err)
		}
		rows := strings.Split(colored.String(), "\n")
		if !strings.HasPrefix(rows[a1], "\x1b[31m") || !strings.HasPrefix(rows[a2], "\x1b[32m") {
			t.Errorf("failed attempt not red or retry not green:\n%q\n%q", rows[a1], rows[a2])
		}
	})
	t.Run("all redis spans", func(t *testing.T) {
		var all bytes.Buffer
		if err := waterfall.Print(t.Context(), &all, j.QueryURL(), traceID, waterfall.Options{All: true}); err != nil {
			t.Fatal(err)
		}
		if n, m := strings.Count(all.String(), "\n"), len(lines); n <= m {
			t.Errorf("--all printed %d lines, not more than the %d without it", n, m)
		}
	})
	t.Run("unknown ids", func(t *testing.T) {
		for _, id := range []string{"0123456789abcdef0123456789abcdef", "01ARZ3NDEKTSV4RRFFQ69G5FAV"} {
			err := waterfall.Print(t.Context(), io.Discard, j.QueryURL(), id, waterfall.Options{})
			if !errors.Is(err, waterfall.ErrNotFound) {
				t.Errorf("%s: %v, want ErrNotFound", id, err)
			}
		}
	})
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// notFoundSignal is a transport that closes first404 after Jaeger first
// answers 404, so that a test knows the trace was asked for before it
// existed.
type notFoundSignal struct {
	first404 chan struct{}
	once     sync.Once
}

func (n *notFoundSignal) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err == nil && resp.StatusCode == http.StatusNotFound {
		n.once.Do(func() { close(n.first404) })
	}
	return resp, err
}

// The daemon exports spans in batches, seconds after the 202: with Wait,
// Print keeps asking for a trace Jaeger does not have yet, and prints it
// once it arrives; without, it says at once that there is none.
func TestPrintWaitsForTheTrace(t *testing.T) {
	j := jaegertest.Start(t)
	exp, err := otlptracehttp.New(t.Context(), otlptracehttp.WithEndpointURL(j.OTLPHTTP()+"/v1/traces"))
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", "labelpipe"))))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	_, root := tp.Tracer("test").Start(context.Background(), "POST /webhook")
	traceID := root.SpanContext().TraceID().String()

	if err := waterfall.Print(t.Context(), io.Discard, j.QueryURL(), traceID, waterfall.Options{}); !errors.Is(err, waterfall.ErrNotFound) {
		t.Fatalf("without Wait: %v, want ErrNotFound", err)
	}
	sig := &notFoundSignal{first404: make(chan struct{})}
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- waterfall.Print(t.Context(), &out, j.QueryURL(), traceID, waterfall.Options{
			Wait: time.Minute, Client: &waterfall.Client{HTTP: &http.Client{Transport: sig}}})
	}()
	select {
	case <-sig.first404:
	case err := <-done:
		t.Fatalf("Print returned before Jaeger had the trace: %v", err)
	}
	root.End() // exported synchronously
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "trace "+traceID) || !strings.Contains(out.String(), "POST /webhook") {
		t.Fatalf("printed:\n%s", out.String())
	}
}
