// Package jaegertest runs a real Jaeger for end-to-end tracing tests: the
// v2 all-in-one binary (github.com/jaegertracing/jaeger/cmd/jaeger at
// Version) with in-memory storage, on free loopback ports.
//
// The binary is built with the Go toolchain from the separate tools module
// in ./tools, so Jaeger's many dependencies stay out of labelpipe's go.mod,
// and cached between runs (see CacheDir). The first build takes several
// minutes; to do it ahead of a test run:
//
//	cd internal/jaegertest/tools &&
//	  go build -o ~/.cache/labelpipe/jaeger-v1.76.0 github.com/jaegertracing/jaeger/cmd/jaeger
package jaegertest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/internal/testutil"
)

// Version is the Jaeger release the tools module pins.
const Version = "v1.76.0"

const (
	// buildTimeout bounds the one-off build; it takes ~5 minutes on 2 cores.
	buildTimeout = 30 * time.Minute
	// startTimeout bounds the wait for the query API and OTLP receivers.
	startTimeout = 30 * time.Second
	// stopTimeout bounds the wait after SIGTERM before SIGKILL.
	stopTimeout = 10 * time.Second
	// startAttempts retries a start that lost a port race with another
	// process between picking a free port and Jaeger binding it.
	startAttempts = 3
	// waitTraceTimeout bounds WaitTrace when ctx has no deadline.
	waitTraceTimeout = 30 * time.Second
)

// Jaeger is one running Jaeger all-in-one process owned by a test.
type Jaeger struct {
	otlpGRPC, otlpHTTP, query string
	dir                       string
	client                    *http.Client

	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// Start builds the binary if it is not cached, runs Jaeger with memory
// storage on free 127.0.0.1 ports and waits until its OTLP receivers and
// query API answer. It stops when the test ends; if the test failed, the
// tail of Jaeger's log is printed.
func Start(t testing.TB) *Jaeger {
	t.Helper()
	bin := Binary(t)
	var errs []error
	for range startAttempts {
		j, err := start(t, bin)
		if err == nil {
			return j
		}
		errs = append(errs, err)
	}
	t.Fatalf("jaegertest: %v", errors.Join(errs...))
	return nil
}

// OTLPGRPC is the OTLP/gRPC receiver as host:port (plain text).
func (j *Jaeger) OTLPGRPC() string { return j.otlpGRPC }

// OTLPHTTP is the OTLP/HTTP receiver's base URL, http://host:port; spans go
// to its /v1/traces.
func (j *Jaeger) OTLPHTTP() string { return "http://" + j.otlpHTTP }

// QueryURL is the query API and UI's base URL, Jaeger's usual :16686.
func (j *Jaeger) QueryURL() string { return "http://" + j.query }

// Log returns the tail of Jaeger's own log, for failure messages.
func (j *Jaeger) Log() string {
	b, err := os.ReadFile(filepath.Join(j.dir, "jaeger.log"))
	if err != nil {
		return ""
	}
	return "jaeger log (tail):\n" + testutil.Tail(string(b), 40)
}

// CacheDir is where the built binary is kept: $LABELPIPE_CACHE, else
// $XDG_CACHE_HOME/labelpipe, else ~/.cache/labelpipe.
func CacheDir() (string, error) {
	if d := os.Getenv("LABELPIPE_CACHE"); d != "" {
		return d, nil
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "labelpipe"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory: set LABELPIPE_CACHE: %w", err)
	}
	return filepath.Join(home, ".cache", "labelpipe"), nil
}

// Binary returns the path of the cached Jaeger binary, building it first if
// needed. A file lock lets test binaries of several packages share one build.
func Binary(t testing.TB) string {
	t.Helper()
	path, err := Build(t.Logf)
	if err != nil {
		t.Fatalf("jaegertest: %v", err)
	}
	return path
}

// Build returns the path of the cached Jaeger binary, building it first if
// needed (logging its progress with logf). A file lock lets several
// processes share one build.
func Build(logf func(format string, args ...any)) (string, error) {
	dir, err := CacheDir()
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "jaeger-"+Version)
	if isExecutable(path) {
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	unlock, err := lockFile(path + ".lock")
	if err != nil {
		return "", err
	}
	defer unlock()
	if isExecutable(path) { // another process built it while we waited
		return path, nil
	}
	if err := build(logf, path); err != nil {
		return "", err
	}
	return path, nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// build compiles Jaeger into a temporary file and renames it into place,
// so an interrupted build never leaves a broken binary in the cache.
func build(logf func(format string, args ...any), path string) error {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return errors.New("cannot locate the jaegertest source to find its tools module")
	}
	tools := filepath.Join(filepath.Dir(file), "tools")
	if _, err := os.Stat(filepath.Join(tools, "go.mod")); err != nil {
		return fmt.Errorf("tools module not found (built with -trimpath?): %w", err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	tmp := fmt.Sprintf("%s.tmp-%d", path, os.Getpid())
	defer func() { _ = os.Remove(tmp) }()

	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", tmp, "github.com/jaegertracing/jaeger/cmd/jaeger")
	cmd.Dir = tools
	// GOWORK=off: a go.work above the repo must not pull the tools module
	// into another build list.
	cmd.Env = append(os.Environ(), "GOWORK=off")
	cmd.Stdout, cmd.Stderr = &out, &out
	logf("jaegertest: building Jaeger %s into %s (first run only; takes several minutes)", Version, path)
	began := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start go build: %w", err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	for {
		select {
		case err := <-waited:
			if err != nil {
				return fmt.Errorf("go build jaeger %s in %s: %w\n%s", Version, tools, err, testutil.Tail(out.String(), 40))
			}
			logf("jaegertest: built Jaeger in %s", time.Since(began).Round(time.Second))
			if err := os.Rename(tmp, path); err != nil {
				return fmt.Errorf("cache jaeger binary: %w", err)
			}
			return nil
		case <-tick.C:
			logf("jaegertest: still building Jaeger (%s)", time.Since(began).Round(time.Second))
		}
	}
}

// start runs one Jaeger process; an error means it may be retried.
func start(t testing.TB, bin string) (*Jaeger, error) {
	t.Helper()
	ports, err := freePorts(4)
	if err != nil {
		return nil, err
	}
	j := &Jaeger{
		otlpGRPC: ports[0], otlpHTTP: ports[1], query: ports[2],
		dir:    t.TempDir(),
		client: &http.Client{Timeout: 5 * time.Second},
	}
	cfgPath := filepath.Join(j.dir, "jaeger.yaml")
	if err := os.WriteFile(cfgPath, []byte(Config(j.otlpGRPC, j.otlpHTTP, j.query, ports[3])), 0o600); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(j.dir, "jaeger.log"))
	if err != nil {
		return nil, err
	}
	defer func() { _ = logf.Close() }() // the child keeps its own descriptor

	j.cmd = exec.Command(bin, "--config", cfgPath)
	j.cmd.Stdout, j.cmd.Stderr = logf, logf
	setSysProcAttr(j.cmd)
	if err := j.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	j.done = make(chan struct{})
	go func() {
		_ = j.cmd.Wait()
		close(j.done)
	}()
	if err := j.waitReady(); err != nil {
		j.stop()
		return nil, fmt.Errorf("%w\n%s", err, j.Log())
	}
	t.Cleanup(func() {
		j.stop()
		if t.Failed() {
			t.Logf("jaegertest: query %s, otlp grpc %s, otlp http %s\n%s", j.QueryURL(), j.OTLPGRPC(), j.OTLPHTTP(), j.Log())
		}
	})
	return j, nil
}

// Config is a minimal Jaeger v2 config: OTLP in (gRPC and HTTP), memory
// storage, the query API out (HTTP and gRPC), each on the host:port given.
// Jaeger's own metrics and self-tracing are off so that it opens no other
// ports and sends nothing anywhere.
func Config(otlpGRPC, otlpHTTP, query, queryGRPC string) string {
	return fmt.Sprintf(`service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
  jaeger_query:
    enable_tracing: false
    storage:
      traces: memstore
    http:
      endpoint: %s
    grpc:
      endpoint: %s
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: %s
      http:
        endpoint: %s
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
`, query, queryGRPC, otlpGRPC, otlpHTTP)
}

// freePorts reserves n distinct loopback ports by listening on them all at
// once, then releases them for Jaeger to bind.
func freePorts(n int) ([]string, error) {
	var addrs []string
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		ls = append(ls, l)
		addrs = append(addrs, l.Addr().String())
	}
	return addrs, nil
}

// waitReady polls until the query API answers and both OTLP receivers
// accept connections. The collector starts receivers last, so this means
// the whole pipeline is up.
func (j *Jaeger) waitReady() error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if last = j.ready(ctx); last == nil {
			return nil
		}
		select {
		case <-j.done:
			return errors.New("jaeger exited during start")
		case <-ctx.Done():
			return fmt.Errorf("jaeger not ready within %s: %w", startTimeout, last)
		case <-tick.C:
		}
	}
}

func (j *Jaeger) ready(ctx context.Context) error {
	for _, addr := range []string{j.otlpGRPC, j.otlpHTTP} {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		_ = c.Close()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.QueryURL()+"/api/services", nil)
	if err != nil {
		return err
	}
	resp, err := j.client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /api/services: %s", resp.Status)
	}
	return nil
}

// stop sends SIGTERM, then SIGKILL after stopTimeout, and waits for exit.
func (j *Jaeger) stop() {
	testutil.Stop(j.cmd.Process, j.done, syscall.SIGTERM, stopTimeout)
}

// Trace is one trace as Jaeger's query API returns it.
type Trace struct {
	// TraceID is 32 lower-case hex digits.
	TraceID string
	// Spans in the order Jaeger returned them.
	Spans []Span
	// Warnings are Jaeger's notes about the trace (for example a span whose
	// parent it never received).
	Warnings []string
}

// Span is one span of a Trace, with Jaeger's OTLP translation undone where
// it matters for assertions.
type Span struct {
	SpanID string
	// ParentSpanID is the CHILD_OF reference; empty for a root span.
	ParentSpanID  string
	OperationName string
	// ServiceName comes from the span's process (the OTel resource).
	ServiceName string
	// Kind is the OTel span kind: server, client, producer, consumer or
	// internal (Jaeger's span.kind tag).
	Kind string
	// Error is true when the span's status is Error.
	Error bool
	// Tags are the span attributes plus Jaeger's otel.* and span.kind tags.
	// Values are string, bool, int64, float64 or []byte as typed by Jaeger.
	Tags map[string]any
	// Process holds the resource attributes (host.name, service.version...).
	Process map[string]any
	// Events are the span events (Jaeger logs); the event name is Name.
	Events   []Event
	Start    time.Time
	Duration time.Duration
	Warnings []string
}

// Event is one span event.
type Event struct {
	Name   string
	Time   time.Time
	Fields map[string]any
}

// Span returns the span with the given ID.
func (tr Trace) Span(id string) (Span, bool) {
	for _, s := range tr.Spans {
		if s.SpanID == id {
			return s, true
		}
	}
	return Span{}, false
}

// Find returns the spans of service (any if empty) named operation, in
// start order.
func (tr Trace) Find(service, operation string) []Span {
	var out []Span
	for _, s := range tr.Spans {
		if s.OperationName == operation && (service == "" || s.ServiceName == service) {
			out = append(out, s)
		}
	}
	sortByStart(out)
	return out
}

// Children returns the spans whose parent is id, in start order.
func (tr Trace) Children(id string) []Span {
	var out []Span
	for _, s := range tr.Spans {
		if s.ParentSpanID == id {
			out = append(out, s)
		}
	}
	sortByStart(out)
	return out
}

// Roots returns the spans with no parent in this trace, in start order.
func (tr Trace) Roots() []Span {
	var out []Span
	for _, s := range tr.Spans {
		if _, ok := tr.Span(s.ParentSpanID); !ok {
			out = append(out, s)
		}
	}
	sortByStart(out)
	return out
}

// String draws the span tree, one span a line, for failure messages.
func (tr Trace) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "trace %s (%d spans)\n", tr.TraceID, len(tr.Spans))
	var walk func(s Span, depth int)
	walk = func(s Span, depth int) {
		fmt.Fprintf(&b, "%s%s: %s", strings.Repeat("  ", depth+1), s.ServiceName, s.OperationName)
		if s.Kind != "" {
			fmt.Fprintf(&b, " [%s]", s.Kind)
		}
		if s.Error {
			b.WriteString(" ERROR")
		}
		fmt.Fprintf(&b, " span=%s\n", s.SpanID)
		for _, c := range tr.Children(s.SpanID) {
			walk(c, depth+1)
		}
	}
	for _, r := range tr.Roots() {
		if r.ParentSpanID != "" {
			fmt.Fprintf(&b, "  (parent %s missing)\n", r.ParentSpanID)
		}
		walk(r, 0)
	}
	return b.String()
}

func sortByStart(s []Span) {
	slices.SortStableFunc(s, func(a, b Span) int { return a.Start.Compare(b.Start) })
}

// WaitTrace polls GET /api/traces/{traceID} until the trace exists and
// pred (nil: any span) holds for it, or ctx ends; without a deadline on ctx
// it gives up after 30s. On timeout it returns the last trace it saw, so a
// test can show what was missing.
func (j *Jaeger) WaitTrace(ctx context.Context, traceID string, pred func(Trace) bool) (Trace, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, waitTraceTimeout)
		defer cancel()
	}
	traceID = strings.ToLower(strings.TrimSpace(traceID))
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last Trace
	lastErr := errors.New("no answer yet")
	for {
		tr, found, err := j.getTrace(ctx, traceID)
		switch {
		case err != nil && ctx.Err() != nil:
			// The deadline cut this request short; keep the last real answer.
		case err != nil:
			lastErr = err
		case !found:
			lastErr = errors.New("trace not found")
		default:
			last, lastErr = tr, errors.New("predicate not met")
			if pred == nil || pred(tr) {
				return tr, nil
			}
		}
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("wait for trace %s: %w (%w)", traceID, ctx.Err(), lastErr)
		case <-tick.C:
		}
	}
}

// Query API JSON (Jaeger's UI model).
type apiResponse struct {
	Data   []apiTrace `json:"data"`
	Errors []struct {
		Code int    `json:"code"`
		Msg  string `json:"msg"`
	} `json:"errors"`
}

type apiTrace struct {
	TraceID   string                `json:"traceID"`
	Spans     []apiSpan             `json:"spans"`
	Processes map[string]apiProcess `json:"processes"`
	Warnings  []string              `json:"warnings"`
}

type apiSpan struct {
	SpanID        string `json:"spanID"`
	OperationName string `json:"operationName"`
	References    []struct {
		RefType string `json:"refType"`
		TraceID string `json:"traceID"`
		SpanID  string `json:"spanID"`
	} `json:"references"`
	StartTime uint64        `json:"startTime"` // µs since the epoch
	Duration  uint64        `json:"duration"`  // µs
	Tags      []apiKeyValue `json:"tags"`
	Logs      []struct {
		Timestamp uint64        `json:"timestamp"`
		Fields    []apiKeyValue `json:"fields"`
	} `json:"logs"`
	ProcessID string   `json:"processID"`
	Warnings  []string `json:"warnings"`
}

type apiProcess struct {
	ServiceName string        `json:"serviceName"`
	Tags        []apiKeyValue `json:"tags"`
}

type apiKeyValue struct {
	Key   string          `json:"key"`
	Type  string          `json:"type"`
	Value json.RawMessage `json:"value"`
}

func (j *Jaeger) getTrace(ctx context.Context, traceID string) (Trace, bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.QueryURL()+"/api/traces/"+traceID, nil)
	if err != nil {
		return Trace{}, false, err
	}
	resp, err := j.client.Do(req)
	if err != nil {
		return Trace{}, false, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode == http.StatusNotFound {
		return Trace{}, false, nil
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return Trace{}, false, err
	}
	if resp.StatusCode != http.StatusOK {
		return Trace{}, false, fmt.Errorf("GET /api/traces/%s: %s: %s", traceID, resp.Status, body)
	}
	var ar apiResponse
	if err := json.Unmarshal(body, &ar); err != nil {
		return Trace{}, false, fmt.Errorf("decode trace: %w", err)
	}
	if len(ar.Data) == 0 {
		return Trace{}, false, nil
	}
	return convert(ar.Data[0]), true, nil
}

func convert(at apiTrace) Trace {
	tr := Trace{TraceID: padID(at.TraceID, 32), Warnings: at.Warnings}
	for _, as := range at.Spans {
		proc := at.Processes[as.ProcessID]
		s := Span{
			SpanID:        padID(as.SpanID, 16),
			OperationName: as.OperationName,
			ServiceName:   proc.ServiceName,
			Tags:          values(as.Tags),
			Process:       values(proc.Tags),
			Start:         time.UnixMicro(int64(as.StartTime)),
			Duration:      time.Duration(as.Duration) * time.Microsecond,
			Warnings:      as.Warnings,
		}
		for _, r := range as.References {
			if r.RefType == "CHILD_OF" && padID(r.TraceID, 32) == tr.TraceID {
				s.ParentSpanID = padID(r.SpanID, 16)
				break
			}
		}
		s.Kind, _ = s.Tags["span.kind"].(string)
		s.Error = s.Tags["error"] == true || s.Tags["otel.status_code"] == "ERROR"
		for _, l := range as.Logs {
			f := values(l.Fields)
			name, _ := f["event"].(string)
			s.Events = append(s.Events, Event{Name: name, Time: time.UnixMicro(int64(l.Timestamp)), Fields: f})
		}
		tr.Spans = append(tr.Spans, s)
	}
	return tr
}

// padID restores leading zeros Jaeger may drop from hex IDs.
func padID(id string, n int) string {
	id = strings.ToLower(id)
	if len(id) < n {
		id = strings.Repeat("0", n-len(id)) + id
	}
	return id
}

func values(kvs []apiKeyValue) map[string]any {
	m := make(map[string]any, len(kvs))
	for _, kv := range kvs {
		m[kv.Key] = value(kv)
	}
	return m
}

func value(kv apiKeyValue) any {
	switch kv.Type {
	case "bool":
		var b bool
		if json.Unmarshal(kv.Value, &b) == nil {
			return b
		}
	case "int64":
		// Jaeger writes int64 as a JSON number; decode it exactly.
		if i, err := strconv.ParseInt(strings.Trim(string(kv.Value), `"`), 10, 64); err == nil {
			return i
		}
	case "float64":
		var f float64
		if json.Unmarshal(kv.Value, &f) == nil {
			return f
		}
	case "binary":
		var b []byte
		if json.Unmarshal(kv.Value, &b) == nil {
			return b
		}
	}
	var s string
	if json.Unmarshal(kv.Value, &s) == nil {
		return s
	}
	return string(kv.Value)
}
