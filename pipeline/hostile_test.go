package pipeline_test

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/baggage"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/trace"

	"github.com/labelpipe/labelpipe/builtin"
	"github.com/labelpipe/labelpipe/internal/testutil"
	"github.com/labelpipe/labelpipe/pipeline"
)

// upload is a raw request whose body the test feeds by hand, as a client
// that never finishes would.
type upload struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

// startUpload sends headers and one chunk of a chunked body, then idles.
func startUpload(t *testing.T, addr string, header map[string]string) *upload {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	var b strings.Builder
	b.WriteString("POST /webhook HTTP/1.1\r\nHost: " + addr + "\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n")
	for k, v := range header {
		b.WriteString(k + ": " + v + "\r\n")
	}
	b.WriteString("\r\n1\r\n{\r\n")
	if _, err := conn.Write([]byte(b.String())); err != nil {
		t.Fatal(err)
	}
	return &upload{t: t, conn: conn, r: bufio.NewReader(conn)}
}

// answer waits (bounded) for the server's answer to the unfinished upload.
func (u *upload) answer() (int, string) {
	u.t.Helper()
	_ = u.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(u.r, nil)
	if err != nil {
		return 0, "no answer: " + err.Error()
	}
	defer resp.Body.Close()
	var body strings.Builder
	_, _ = bufio.NewReader(resp.Body).WriteTo(&body)
	return resp.StatusCode, body.String()
}

func hostOf(h *harness) string { return strings.TrimPrefix(h.webhook.URL, "http://") }

// Four uploads that never send a secret once locked out all intake: the
// body budget was taken before the secret was checked. Now the headers
// are judged first, so sixteen of them cost nothing.
func TestStrangersWithoutTheSecretCostNothing(t *testing.T) {
	body, _ := samplePayload(t, "issue-frames.json")
	cfg := strings.Replace(head(""), "max_body_bytes: 65536",
		"max_body_bytes: 65536, max_inflight_bytes: 65536", 1)
	cfg = strings.Replace(cfg, "broker: {type: memory}", "broker: {type: memory, queue_wait: 200ms}", 1)
	h := startHarness(t, cfg+"  - {name: archive, type: file, path: out/archive.jsonl}\n")

	for i := range 16 {
		header := map[string]string{}
		if i%2 == 1 {
			header["X-Aquarium-Secret"] = "guess-" + strconv.Itoa(i)
		}
		u := startUpload(t, hostOf(h), header)
		if code, b := u.answer(); code != http.StatusUnauthorized {
			t.Fatalf("idle upload %d without the secret: got %d %s, want 401 before its body", i, code, b)
		}
	}
	h.accept(body)
}

// An upload answered before its body was read (401 here) is closed soon
// after the answer: the server discards what still arrives for
// leaveBodyLinger (1s), so that an honest client finishing its body reads
// the answer instead of a reset, and then drops the connection. One that
// never sends the rest must not hold it for the whole server.read_timeout
// (60s by default).
func TestAnUploadAnsweredEarlyIsClosedSoon(t *testing.T) {
	h := startHarness(t, head("")+"  - {name: archive, type: file, path: out/archive.jsonl}\n")
	u := startUpload(t, hostOf(h), nil)
	if code, b := u.answer(); code != http.StatusUnauthorized {
		t.Fatalf("upload without the secret: got %d %s, want 401 before its body", code, b)
	}
	// Well under read_timeout, well over the linger.
	_ = u.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	n, err := u.r.Discard(1)
	if !errors.Is(err, io.EOF) {
		t.Fatalf("after the answer: read %d bytes, %v; want the server to close the connection (EOF) within 20s", n, err)
	}
}

func signStandard(key []byte, id, ts string, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(id + "." + ts + "."))
	m.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// A signature can only be checked once the body is in, so well-formed
// signed headers reach a budget. It is not the one callers proven by a
// header secret use, each client address gets only a share of it, and a
// body that does not arrive is cut off.
func TestSignedStrangersGetAShareAndADeadline(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	secret := "whsec_" + base64.StdEncoding.EncodeToString(key)
	body, _ := samplePayload(t, "issue-frames.json")
	cfg := `server:
  addr: ""
  path: /webhook
  max_body_bytes: 65536
  max_inflight_bytes: 65536
  trusted_proxies: [127.0.0.1]
  unverified: {max_inflight_bytes: 131072, per_client_bytes: 65536, read_timeout: 300ms}
admin: {addr: ""}
broker: {type: memory, queue_wait: 200ms}
stages:
  - {type: secret, scheme: standard_webhooks, secrets: ["` + secret + `"]}
sinks:
  - {name: archive, type: file, path: out/archive.jsonl}
`
	// One IPv6 host usually holds a whole /64: its addresses share one share.
	for _, tc := range []struct{ name, first, second string }{
		{"one address", "203.0.113.9", "203.0.113.9"},
		{"one IPv6 /64", "2001:db8:1:2::a", "2001:db8:1:2:ffff::b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startHarness(t, cfg)
			ts := strconv.FormatInt(time.Now().Unix(), 10)
			stranger := func(addr string) map[string]string {
				return map[string]string{"X-Forwarded-For": addr, "webhook-id": "msg_x", "webhook-timestamp": ts,
					"webhook-signature": "v1," + base64.StdEncoding.EncodeToString(make([]byte, 32))}
			}
			a, b := startUpload(t, hostOf(h), stranger(tc.first)), startUpload(t, hostOf(h), stranger(tc.second))

			// One of the two takes the stranger's whole share; the other is
			// refused at once, whichever came first.
			answers := make(chan [2]any, 2)
			for _, u := range []*upload{a, b} {
				go func() {
					code, msg := u.answer()
					answers <- [2]any{code, msg}
				}()
			}
			got := <-answers
			if got[0] != http.StatusServiceUnavailable || !strings.Contains(got[1].(string), "per_client_bytes") {
				t.Fatalf("second upload from one stranger: got %v %v, want 503 naming per_client_bytes", got[0], got[1])
			}

			// The stranger holds a body's worth, as much as server.max_inflight_bytes:
			// a real caller still gets in.
			id := "msg_real"
			a2 := h.send(hookReq{body: body, header: map[string]string{"X-Forwarded-For": "198.51.100.7",
				"webhook-id": id, "webhook-timestamp": ts, "webhook-signature": signStandard(key, id, ts, body)}})
			if a2.Code != http.StatusAccepted {
				t.Fatalf("signed export while a stranger idles: got %d %s, want 202", a2.Code, a2.Raw)
			}

			// The idle upload is cut off by unverified.read_timeout, and answered.
			got = <-answers
			if code := got[0].(int); code < 400 || code >= 500 {
				t.Errorf("idle signed upload: got %v %v, want a 4xx once unverified.read_timeout passed", got[0], got[1])
			}
		})
	}
}

// otelhttp put the Host header on every http.server.* series: 2,000
// distinct hosts grew memory by 390 MB and /metrics to 10 GB.
func TestHostHeadersDoNotMintMetricSeries(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	h := newHarnessWith(t, head("")+"  - {name: archive, type: file, path: out/archive.jsonl}\n",
		func(o *pipeline.Options) { o.MeterProvider = mp })
	h.run()
	for i := range 300 {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, h.webhook.URL+"/webhook", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		req.Host = fmt.Sprintf("h%d-%s.example:%d", i, strings.Repeat("x", 200), 1000+i)
		resp, err := h.webhook.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("request %d: %d, want 401", i, resp.StatusCode)
		}
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(t.Context(), &rm); err != nil {
		t.Fatal(err)
	}
	series := map[string]int{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if !strings.HasPrefix(m.Name, "http.server.") {
				continue
			}
			switch d := m.Data.(type) {
			case metricdata.Histogram[float64]:
				series[m.Name] += len(d.DataPoints)
			case metricdata.Histogram[int64]:
				series[m.Name] += len(d.DataPoints)
			case metricdata.Sum[int64]:
				series[m.Name] += len(d.DataPoints)
			}
		}
	}
	if len(series) == 0 {
		t.Fatal("no http.server.* metrics recorded; the test measures nothing")
	}
	for name, n := range series {
		if n > 2 {
			t.Errorf("%s has %d series after 300 distinct Host headers, want them not to depend on Host", name, n)
		}
	}
}

// baggageProbe is a stage that records the baggage it sees.
type baggageProbe struct{ seen chan string }

func (b baggageProbe) Process(ctx context.Context, _ *pipeline.Export) error {
	b.seen <- baggage.FromContext(ctx).String()
	return nil
}

// A caller's traceparent is linked by default, or continued when trusted;
// its baggage is never taken: 4 KB of it was stored in every message.
func TestCallerTraceContext(t *testing.T) {
	const callerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	body, _ := samplePayload(t, "issue-frames.json")
	for _, tt := range []struct {
		name, tracing string
		continued     bool
	}{
		{name: "linked by default", tracing: ""},
		{name: "continued when trusted", tracing: "tracing: {caller_context: parent}\n", continued: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			probe := baggageProbe{seen: make(chan string, 1)}
			cfg := strings.Replace(head("  - {type: probe}"), "stages:", tt.tracing+"stages:", 1)
			h := newHarnessWith(t, cfg+"  - {name: archive, type: file, path: out/archive.jsonl}\n", func(o *pipeline.Options) {
				o.Registry = builtin.Registry()
				o.Registry.RegisterStage("probe", pipeline.NewStageType("records baggage",
					func() *struct{} { return &struct{}{} },
					func(*struct{}, pipeline.Env) (pipeline.Stage, error) { return probe, nil }))
			})
			h.run()
			a := h.send(hookReq{secret: hookSecret, body: body, header: map[string]string{
				"Traceparent": "00-" + callerTrace + "-00f067aa0ba902b7-01",
				"Baggage":     "user=mallory,blob=" + strings.Repeat("b", 4000),
			}})
			if a.Code != http.StatusAccepted {
				t.Fatalf("got %d %s, want 202", a.Code, a.Raw)
			}
			if got := <-probe.seen; got != "" {
				t.Errorf("stages saw baggage %.40q..., want none taken from the caller", got)
			}
			if (a.TraceID == callerTrace) != tt.continued {
				t.Errorf("answer trace_id = %s, caller's %s; continued = %v", a.TraceID, callerTrace, tt.continued)
			}
			var linked bool
			for _, s := range h.spans.Ended() {
				if s.SpanKind() != trace.SpanKindServer {
					continue
				}
				for _, l := range s.Links() {
					linked = linked || l.SpanContext.TraceID().String() == callerTrace
				}
			}
			if linked == tt.continued {
				t.Errorf("server span linked to the caller's trace = %v, want %v", linked, !tt.continued)
			}
		})
	}
}

// listenerHarness runs a pipeline on a real loopback listener, so that
// the http.Server's own limits and TLS apply.
func listenerHarness(t *testing.T, cfg string) (*harness, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := newHarnessWith(t, cfg, func(o *pipeline.Options) {
		o.Listeners = map[string]net.Listener{"webhook": ln}
	})
	h.run()
	return h, ln.Addr().String()
}

func TestHugeHeadersAreRefused(t *testing.T) {
	h, addr := listenerHarness(t, head("")+"  - {name: archive, type: file, path: out/archive.jsonl}\n")
	_ = h
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://"+addr+"/webhook", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Padding", strings.Repeat("p", 100<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("100 KB of headers: got %d, want 431 (server.max_header_bytes)", resp.StatusCode)
	}
}

func TestConnectionsAreCapped(t *testing.T) {
	cfg := strings.Replace(head(""), "max_body_bytes: 65536", "max_body_bytes: 65536, max_connections: 1", 1)
	_, addr := listenerHarness(t, cfg+"  - {name: archive, type: file, path: out/archive.jsonl}\n")
	held, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	// The held connection is served: it has the only slot.
	if _, err := held.Write([]byte("GET /webhook HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(held)
	if resp, err := http.ReadResponse(r, nil); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("held connection: %v %v, want 405", resp, err)
	}
	done := make(chan int, 1)
	go func() {
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := c.Get("http://" + addr + "/webhook")
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	select {
	case code := <-done:
		t.Fatalf("second connection served (%d) while the only slot was held", code)
	default:
	}
	held.Close()
	if code := <-done; code != http.StatusMethodNotAllowed {
		t.Errorf("second connection after the first closed: %d, want 405", code)
	}
}

// writeCert writes a fresh self-signed certificate for 127.0.0.1.
// The webhook is served over TLS, and a new certificate is picked up on
// Reload (SIGHUP) without a restart.
func TestTLSAndReload(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	testutil.WriteCert(t, dir, 1)
	cfg := strings.Replace(head(""), "max_body_bytes: 65536",
		fmt.Sprintf("max_body_bytes: 65536, tls: {cert_file: %q, key_file: %q}", filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")), 1)
	h := newHarnessWith(t, cfg+"  - {name: archive, type: file, path: out/archive.jsonl}\n", func(o *pipeline.Options) {
		o.Listeners = map[string]net.Listener{"webhook": ln}
	})
	h.run()
	body, _ := samplePayload(t, "issue-frames.json")

	serial := func() int64 { return testutil.CertSerial(t, ln.Addr().String()) }
	if got := serial(); got != 1 {
		t.Fatalf("serial %d, want 1", got)
	}
	pool := x509.NewCertPool()
	pemBytes, _ := os.ReadFile(filepath.Join(dir, "tls.crt"))
	pool.AppendCertsFromPEM(pemBytes)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, "https://"+ln.Addr().String()+"/webhook", strings.NewReader(string(body)))
	req.Header.Set("X-Aquarium-Secret", hookSecret)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("over TLS: %d, want 202", resp.StatusCode)
	}

	testutil.WriteCert(t, dir, 2)
	if err := h.p.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := serial(); got != 2 {
		t.Errorf("serial after Reload %d, want 2", got)
	}
	// A broken file keeps the certificate in use.
	if err := os.WriteFile(filepath.Join(dir, "tls.crt"), []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := h.p.Reload(); err == nil {
		t.Error("Reload with a broken certificate: no error")
	}
	if got := serial(); got != 2 {
		t.Errorf("serial after a failed Reload %d, want 2 still", got)
	}
}
