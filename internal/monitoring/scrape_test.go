package monitoring

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/builtin"
	"github.com/labelpipe/labelpipe/configs"
	"github.com/labelpipe/labelpipe/internal/testutil"
	"github.com/labelpipe/labelpipe/internal/vendortest"
	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/telemetry"
)

const hookSecret = "s3cret"

// scrape is one /metrics answer: its raw text and every sample by series
// (name plus its labels as written).
type scrape struct {
	raw     []byte
	samples map[string]float64 // `name{labels}` → value
	names   map[string]bool    // sample names, e.g. x_bucket, x_sum, x_count
}

var sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)`)

func parseScrape(raw []byte) scrape {
	s := scrape{raw: raw, samples: map[string]float64{}, names: map[string]bool{}}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		m := sampleLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			continue
		}
		s.names[m[1]] = true
		s.samples[m[1]+m[2]] = v
	}
	return s
}

// value is the sum of the samples of name whose labels include every
// label="value" pair in want; ok is false when there is none.
func (s scrape) value(name string, want ...string) (sum float64, ok bool) {
	for series, v := range s.samples {
		n, labels, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		all := true
		for _, w := range want {
			if !strings.Contains("{"+labels, "{"+w+",") && !strings.Contains(","+labels, ","+w+",") &&
				!strings.Contains("{"+labels, "{"+w+"}") && !strings.Contains(","+labels, ","+w+"}") {
				all = false
				break
			}
		}
		if all {
			sum, ok = sum+v, true
		}
	}
	return sum, ok
}

// livePipeline runs a real pipeline with the Prometheus exporter
// labelpipe's daemon uses: a file sink "archive" that delivers, and an
// http sink "down" at a fake Label Studio that answers 503, which
// dead-letters and opens its breaker. It sends one export and returns
// the /metrics scrape once the export is delivered to archive,
// dead-lettered on down and down's breaker is open.
func livePipeline(t *testing.T) scrape {
	t.Helper()
	prov, err := telemetry.New(t.Context(), pipeline.TracingConfig{}, telemetry.Info{Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = prov.Shutdown(context.Background()) })

	ls := vendortest.NewLabelStudio(t, "ls-token")
	ls.SetDown(http.StatusServiceUnavailable)

	dir := t.TempDir()
	cfgText := `server: {addr: "", path: /webhook, max_body_bytes: 65536, shutdown_timeout: 5s}
admin: {addr: ""}
broker: {type: memory}
stages:
  - {type: secret, header: X-Aquarium-Secret, secrets: ["` + hookSecret + `"]}
  - {type: schema, schema: issue-exported}
sinks:
  - {name: archive, type: file, path: out/archive.jsonl}
  - name: down
    type: http
    url: "` + ls.ImportURL(7) + `"
    headers: {Authorization: "Token ls-token"}
    retry: {max_attempts: 2, initial_interval: 1ms, max_interval: 2ms, max_elapsed: 0s}
    breaker: {consecutive_failures: 2, open_timeout: 1h}
`
	cfg, err := pipeline.ParseConfig(filepath.Join(dir, "labelpipe.yaml"), []byte(cfgText))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, cfgText)
	}
	logs := &testutil.LockedBuffer{}
	p, err := pipeline.New(cfg, pipeline.Options{
		Registry:      builtin.Registry(),
		Logger:        slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		MeterProvider: prov.MeterProvider,
		Metrics:       prov.Metrics,
		ReplicaID:     "test",
		Version:       "test",
	})
	if err != nil {
		t.Fatalf("pipeline.New: %v", err)
	}
	webhook := httptest.NewServer(p.Handler())
	admin := httptest.NewServer(p.AdminHandler())
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("Run did not return within 30s of cancel")
		}
		webhook.Close()
		admin.Close()
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if t.Failed() {
			t.Logf("pipeline log:\n%s", logs.String())
		}
	})
	poll(t, 10*time.Second, "the pipeline to be ready", func() bool { return p.Ready(t.Context()) == nil })

	body, err := configs.Payloads.ReadFile("payloads/issue-frames.json")
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, webhook.URL+"/webhook", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Aquarium-Secret", hookSecret)
	resp, err := webhook.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("webhook answered %d %s, want 202", resp.StatusCode, answer)
	}

	get := func() scrape {
		resp, err := admin.Client().Get(admin.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
		}
		return parseScrape(raw)
	}
	var last scrape
	poll(t, 15*time.Second, "a delivery to archive, a dead letter on down and down's breaker open in /metrics", func() bool {
		last = get()
		delivered, _ := last.value("labelpipe_sink_deliveries_total", `sink="archive"`, `outcome="delivered"`)
		dead, _ := last.value("labelpipe_sink_deliveries_total", `sink="down"`, `outcome="dead_lettered"`)
		breaker, _ := last.value("labelpipe_sink_breaker_state", `sink="down"`)
		dlq, _ := last.value("labelpipe_sink_dlq_size", `sink="down"`)
		return delivered >= 1 && dead >= 1 && breaker == 2 && dlq >= 1
	})
	return last
}

// poll calls cond every 5ms until it holds, failing the test after limit.
func poll(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		<-tick.C
	}
}
