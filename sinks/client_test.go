package sinks_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/labelpipe/labelpipe/configs"
	"github.com/labelpipe/labelpipe/internal/testutil"
	"github.com/labelpipe/labelpipe/pipeline"
)

// TestFailedDeliveryHidesURLSecrets sends an export to a vendor URL whose
// path and query carry a secret, fails the delivery, and checks that the
// secret is in neither the dead letter (/api/dlq), the log, nor the spans.
func TestFailedDeliveryHidesURLSecrets(t *testing.T) {
	const secret = "Zx9Kq4SECRETw7Lm2Pv5" // token-like, so a path segment of it is hidden
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + l.Addr().String()
	l.Close()
	tests := []struct {
		name, base string
	}{
		{"vendor answers 500", newVendor(t, answer{status: http.StatusInternalServerError, body: `{"error":"boom"}`}).URL},
		{"connection refused", refused},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			target := tc.base + "/services/T0/B0/" + secret + "?sig=" + secret + "&project=7"
			reg := registry()
			cfg, err := pipeline.ParseConfig(t.TempDir()+"/pipeline.yaml", []byte(fmt.Sprintf(`
server: {addr: ""}
admin: {addr: ""}
sinks:
  - name: vendor
    type: http
    url: %q
    retry: {max_attempts: 1}
    body: '{issue: .issue.id}'
`, target)), pipeline.ResolveWith(reg))
			if err != nil {
				t.Fatal(err)
			}
			logs := &testutil.LockedBuffer{}
			spans := tracetest.NewSpanRecorder()
			p, err := pipeline.New(cfg, pipeline.Options{
				Registry:       reg,
				Logger:         slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
				TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans)),
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = p.Close() })
			ctx, stop := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() { done <- p.Run(ctx) }()
			shutdown := sync.OnceFunc(func() { stop(); <-done })
			defer shutdown()
			eventually(t, "ready", func() bool { return p.Ready(ctx) == nil })

			payload, err := configs.Payloads.ReadFile("payloads/issue-crops.json")
			if err != nil {
				t.Fatal(err)
			}
			rec := httptest.NewRecorder()
			p.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/webhook", strings.NewReader(string(payload))))
			if rec.Code != http.StatusAccepted {
				t.Fatalf("webhook answered %d %s", rec.Code, rec.Body)
			}

			var dlq string
			eventually(t, "a dead letter", func() bool {
				rec := httptest.NewRecorder()
				// From loopback, as an operator on the host reads it.
				req := httptest.NewRequest(http.MethodGet, "http://127.0.0.1/api/dlq", nil)
				req.RemoteAddr = "127.0.0.1:1234"
				p.AdminHandler().ServeHTTP(rec, req)
				b, _ := io.ReadAll(rec.Body)
				dlq = string(b)
				return rec.Code == http.StatusOK && strings.Contains(dlq, `"error"`)
			})
			shutdown() // every log line is written

			if strings.Contains(dlq, secret) || !strings.Contains(dlq, "/services/T0/B0/REDACTED?sig=REDACTED") {
				t.Errorf("dead letter shows the secret, or not the redacted URL:\n%s", dlq)
			}
			if got := logs.String(); strings.Contains(got, secret) || !strings.Contains(got, "dead-lettered") {
				t.Errorf("log shows the secret, or no dead letter:\n%s", got)
			}
			sawURL := false
			for _, s := range spans.Ended() {
				seen := []string{s.Name(), s.Status().Description}
				for _, a := range s.Attributes() {
					seen = append(seen, a.Value.Emit())
					// The URL itself, redacted: not just any value under the key.
					sawURL = sawURL || (a.Key == "url.full" && strings.Contains(a.Value.Emit(), "/services/T0/B0/REDACTED?"))
				}
				for _, e := range s.Events() {
					for _, a := range e.Attributes {
						seen = append(seen, a.Value.Emit())
					}
				}
				if joined := strings.Join(seen, "\n"); strings.Contains(joined, secret) {
					t.Errorf("span %q shows the secret:\n%s", s.Name(), joined)
				}
			}
			if !sawURL {
				t.Error("no span recorded url.full as the redacted URL")
			}
		})
	}
}

// eventually polls cond for up to 10s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
