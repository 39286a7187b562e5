package pipeline_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/labelpipe/labelpipe/builtin"
	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/internal/vendortest"
	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/backend"
	"github.com/labelpipe/labelpipe/pipeline/backend/memory"
	"github.com/labelpipe/labelpipe/pipeline/telemetry"
)

// reloadTo parses cfgText as the harness's config file and reloads it.
func (h *harness) reloadTo(cfgText string) (pipeline.ReloadResult, error) {
	h.t.Helper()
	cfg, err := pipeline.ParseConfig(filepath.Join(h.dir, "labelpipe.yaml"), []byte(cfgText))
	if err != nil {
		return pipeline.ReloadResult{}, err
	}
	return h.p.ReloadConfig(cfg)
}

// mustReload reloads cfgText and requires it to be taken.
func (h *harness) mustReload(cfgText string) pipeline.ReloadResult {
	h.t.Helper()
	res, err := h.reloadTo(cfgText)
	if err != nil {
		h.t.Fatalf("reload: %v", err)
	}
	return res
}

// reloadScale is a pipeline with one Scale sink at url; extra goes into
// the sink.
func reloadScale(stages, url, extra string) string {
	return head(stages) + scaleSink(url, "\n    max_in_flight: 8"+extra)
}

func TestReloadInvalidConfigKeepsTheOldOne(t *testing.T) {
	sc := vendortest.NewScale(t, scaleKey)
	good := reloadScale("", sc.TaskURL(), "")
	h := startHarness(t, good)
	file := filepath.Join(h.dir, "labelpipe.yaml")

	for _, tc := range []struct{ name, text string }{
		// Errors the loader finds: a jq program that does not compile and
		// a negative timeout.
		{"load", strings.Replace(reloadScale("", sc.TaskURL(), "\n    filter: '.issue | | .x'\n    timeout: -1s"),
			"max_body_bytes: 65536", "max_body_bytes: 65536, read_timeout: -5s", 1)},
		// An error only building finds (validate's offline check).
		{"build", strings.Replace(good, "schema: issue-exported", "schema: no-such-schema", 1)},
	} {
		mark := len(h.logs.String())
		if err := os.WriteFile(file, []byte(tc.text), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := h.p.ReloadFile(file)
		if err == nil {
			t.Fatalf("%s: reload of an invalid config succeeded", tc.name)
		}
		var ce pipeline.ConfigErrors
		if !errors.As(err, &ce) {
			ce = pipeline.ConfigErrors{{Msg: err.Error()}}
		}
		if tc.name == "load" && len(ce) < 2 {
			t.Errorf("load: %d errors, want every one (at least 2): %v", len(ce), err)
		}
		logs := h.logs.String()[mark:]
		if n := strings.Count(logs, "config reload: invalid config"); n != len(ce) {
			t.Errorf("%s: %d invalid-config lines logged, want one per error (%d):\n%s", tc.name, n, len(ce), logs)
		}
		for _, e := range ce {
			if !strings.Contains(logs, strings.ReplaceAll(e.Msg, `"`, `\"`)) {
				t.Errorf("%s: error %q not logged:\n%s", tc.name, e.Msg, logs)
			}
		}
		if !strings.Contains(logs, "config reload refused; the running config stays") {
			t.Errorf("%s: no refusal logged:\n%s", tc.name, logs)
		}
	}

	// The old config still serves: schema issue-exported, the Scale sink.
	body, issue := samplePayload(t, "issue-frames.json")
	h.accept(body)
	h.eventually(10*time.Second, "Scale's tasks", func() bool { return len(scaleTasksOf(sc, issue)) == 3 })
}

func TestReloadStagesTakeEffectOnTheNextWebhook(t *testing.T) {
	sc := vendortest.NewScale(t, scaleKey)
	const dedupe = `  - {type: dedupe, store: memory, ttl: 1h}`
	h := startHarness(t, reloadScale(dedupe, sc.TaskURL(), ""))
	first, _ := samplePayload(t, "issue-frames.json")
	firstID := h.accept(first).ID

	next := strings.Replace(reloadScale(dedupe+"\n"+`  - {type: filter, expr: '.project != "skip_me"'}`, sc.TaskURL(), ""),
		`secrets: ["`+hookOldSecret+`", "`+hookSecret+`"]`, `secrets: ["rotated-secret"]`, 1)
	res := h.mustReload(next)
	if !res.Stages || len(res.Changed) != 0 || len(res.NeedsRestart) != 0 {
		t.Fatalf("reload result %+v, want stages swapped and nothing else", res)
	}
	if a := h.send(hookReq{secret: hookSecret, body: first}); a.Code != http.StatusUnauthorized {
		t.Errorf("old secret after the reload: %d %s, want 401", a.Code, a.Raw)
	}
	body, issue := samplePayload(t, "issue-frames.json")
	if a := h.send(hookReq{secret: "rotated-secret", body: body}); a.Code != http.StatusAccepted {
		t.Fatalf("new secret after the reload: %d %s, want 202", a.Code, a.Raw)
	}
	// The dedupe stage did not change: it is carried over with what it
	// has seen.
	if a := h.send(hookReq{secret: "rotated-secret", body: first}); a.Status != "duplicate" || a.ID != firstID {
		t.Errorf("the first export again after the reload: %d %s, want duplicate of %s", a.Code, a.Raw, firstID)
	}
	var doc map[string]any
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	doc["project"] = "skip_me"
	skip, _ := json.Marshal(doc)
	if a := h.send(hookReq{secret: "rotated-secret", body: skip}); a.Status != "filtered" {
		t.Errorf("export the new filter stage drops: %d %s, want filtered", a.Code, a.Raw)
	}
	h.eventually(10*time.Second, "Scale's tasks", func() bool { return len(scaleTasksOf(sc, issue)) == 3 })
}

// A changed sink finishes its requests under way with the old config and
// sends the next ones with the new, on the same queue; an unchanged sink
// is left alone.
func TestReloadChangedSinkOnEveryBroker(t *testing.T) {
	for _, broker := range brokers {
		t.Run(broker, func(t *testing.T) {
			oldSc, newSc := vendortest.NewScale(t, scaleKey), vendortest.NewScale(t, scaleKey)
			ls := vendortest.NewLabelStudio(t, lsToken)
			cfg := func(url string) string {
				return onBroker(t, broker, reloadScale("", url, "")+labelStudioSink(ls, ""))
			}
			first := cfg(oldSc.TaskURL())
			h := startHarness(t, first)

			oldSc.SetLatency(time.Hour) // held until released below
			body, held := samplePayload(t, "issue-frames.json")
			h.accept(body)
			// On Redis a consumer may hold the other chunks behind the
			// one in flight: they are queued, not in flight, and go with
			// the new config. On memory all three are in flight.
			inFlight := 3
			if broker == "redis" {
				inFlight = 1
			}
			waitFake(t, "the first export's requests at the old Scale", func(ctx context.Context) error { return oldSc.WaitArrived(ctx, inFlight) })

			// The same config but the Scale sink's url, on the same broker.
			next := strings.Replace(first, oldSc.TaskURL(), newSc.TaskURL(), 1)
			res := h.mustReload(next)
			if !slices.Equal(res.Changed, []string{"scale"}) || res.Stages || len(res.NeedsRestart) != 0 {
				t.Fatalf("reload result %+v, want only sink scale changed", res)
			}

			body, after := samplePayload(t, "issue-frames.json")
			h.accept(body)
			if broker == "redis" {
				// A Redis consumer whose handler is busy with a held
				// request holds the message it read next: the next
				// export may wait behind the held one, reload or not.
				oldSc.SetLatency(0)
			}
			h.eventually(10*time.Second, "the next export at the new Scale", func() bool { return len(scaleTasksOf(newSc, after)) == 3 })
			h.eventually(10*time.Second, "both exports at Label Studio", func() bool {
				return len(lsTasksOf(ls, held)) == 3 && len(lsTasksOf(ls, after)) == 3
			})
			if n := len(scaleTasksOf(oldSc, after)); n != 0 {
				t.Errorf("%d of the next export's tasks went to the old Scale", n)
			}

			oldSc.SetLatency(0) // the requests under way finish with the old config
			h.eventually(10*time.Second, "the held export's tasks", func() bool {
				return len(scaleTasksOf(oldSc, held))+len(scaleTasksOf(newSc, held)) == 3
			})
			if n := len(scaleTasksOf(oldSc, held)); n < inFlight {
				t.Errorf("%d of the held export's requests finished at the old Scale; %d were in flight at the reload", n, inFlight)
			}
			// Acked just after the vendor answered: wait for the queue.
			h.eventually(10*time.Second, "scale's queue to empty", func() bool { return h.sink("scale").QueueDepth == 0 })
			if s := h.sink("scale"); s.DLQ != 0 {
				t.Errorf("scale after the reload: %+v, want an empty DLQ", s)
			}
		})
	}
}

func TestReloadReportsKeysThatNeedARestart(t *testing.T) {
	sc := vendortest.NewScale(t, scaleKey)
	ls := vendortest.NewLabelStudio(t, lsToken)
	first := reloadScale("", sc.TaskURL(), "")
	h := startHarness(t, first)

	next := strings.Replace(first, "max_body_bytes: 65536", "max_body_bytes: 1024", 1)
	next = strings.Replace(next, "broker: {type: memory}", "broker: {type: memory, fanout_workers: 2}", 1)
	next = strings.Replace(next, "max_in_flight: 8", "max_in_flight: 2", 1)
	next += labelStudioSink(ls, "")
	res := h.mustReload(next)
	want := []string{"server", "broker", "sinks.scale.max_in_flight"}
	if !slices.Equal(res.Added, []string{"label_studio"}) {
		t.Errorf("reload result %+v, want label_studio added", res)
	}
	for _, k := range want {
		if !slices.Contains(res.NeedsRestart, k) {
			t.Errorf("needs a restart: %q missing from %q", k, res.NeedsRestart)
		}
	}
	logs := h.logs.String()
	for _, k := range want {
		if !strings.Contains(logs, fmt.Sprintf("change needs a restart; left as it was\" key=%q", k)) &&
			!strings.Contains(logs, "change needs a restart; left as it was\" key="+k) {
			t.Errorf("no needs-a-restart log line for %q:\n%s", k, logs)
		}
	}
	// Left as they were: a body of 2 KiB is still within 65536 bytes.
	body, issue := samplePayload(t, "issue-frames.json")
	if len(body) <= 1024 {
		t.Fatalf("sample body is %d bytes; the test needs one over 1024", len(body))
	}
	h.accept(body)
	h.eventually(10*time.Second, "Scale's tasks", func() bool { return len(scaleTasksOf(sc, issue)) == 3 })
	// The added sink is started (TestReloadAddedSinkOnEveryBroker).
	h.eventually(10*time.Second, "the added sink's tasks", func() bool { return len(lsTasksOf(ls, issue)) == 3 })
}

// A sink added by a reload is started: it takes the exports fanned out
// after the reload and none before, /api/sinks and /metrics list it, and
// its failures dead-letter.
func TestReloadAddedSinkOnEveryBroker(t *testing.T) {
	for _, broker := range brokers {
		t.Run(broker, func(t *testing.T) {
			sc, ls := vendortest.NewScale(t, scaleKey), vendortest.NewLabelStudio(t, lsToken)
			first := onBroker(t, broker, head("")+scaleSink(sc.TaskURL(), ""))
			prov, err := telemetry.New(t.Context(), pipeline.TracingConfig{}, telemetry.Info{Version: "test"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = prov.Shutdown(context.Background()) })
			h := newHarnessWith(t, first, func(o *pipeline.Options) { o.MeterProvider, o.Metrics = prov.MeterProvider, prov.Metrics })
			h.run()

			body, before := samplePayload(t, "issue-frames.json")
			h.accept(body)
			h.eventually(10*time.Second, "the first export at Scale", func() bool { return len(scaleTasksOf(sc, before)) == 3 })

			res := h.mustReload(first + labelStudioSink(ls, fastPolicy))
			if !slices.Equal(res.Added, []string{"label_studio"}) || len(res.NeedsRestart) != 0 || len(res.Changed) != 0 {
				t.Fatalf("reload result %+v, want label_studio added and nothing else", res)
			}
			if s := h.sink("label_studio"); s.Breaker != "closed" || s.QueueDepth != 0 || s.DLQ != 0 {
				t.Errorf("label_studio in /api/sinks after the reload: %+v", s)
			}
			if g := h.breakerGauge("label_studio"); g != "0" {
				t.Errorf("label_studio's breaker gauge %s, want 0 (closed)", g)
			}

			body, after := samplePayload(t, "issue-frames.json")
			h.accept(body)
			h.eventually(10*time.Second, "the next export at the added sink", func() bool { return len(lsTasksOf(ls, after)) == 3 })
			h.eventually(10*time.Second, "the next export at Scale", func() bool { return len(scaleTasksOf(sc, after)) == 3 })
			if n := len(lsTasksOf(ls, before)); n != 0 {
				t.Errorf("the added sink got %d tasks of an export fanned out before the reload", n)
			}
			// The export history knows the added sink: its filter finds
			// the export that reached it, and not the one before.
			h.eventually(10*time.Second, "the history to show the export delivered to the added sink", func() bool {
				got := h.exports("sink=label_studio&issue_id=" + after)
				return len(got) == 1 && got[0].Sinks["label_studio"] == "delivered"
			})
			if got := h.exports("sink=label_studio&issue_id=" + before); len(got) != 0 {
				t.Errorf("the history lists %d exports from before the reload for the added sink", len(got))
			}

			// Its failures dead-letter, under its own name.
			ls.SetDown(http.StatusServiceUnavailable)
			body, _ = samplePayload(t, "issue-frames.json")
			failing := h.accept(body)
			dead := h.waitDeadLetters("label_studio", 1)
			for _, d := range dead {
				if d.Sink != "label_studio" || d.ExportID != failing.ID {
					t.Errorf("dead letter %s/%s, want label_studio/%s", d.Sink, d.ExportID, failing.ID)
				}
			}
			h.eventually(10*time.Second, "label_studio's DLQ in /api/sinks", func() bool { return h.sink("label_studio").DLQ == int64(len(dead)) })
			if n := len(h.deadLetters("scale")); n != 0 {
				t.Errorf("%d dead letters for scale, want none", n)
			}
			h.eventually(10*time.Second, "label_studio's queue to empty", func() bool { return h.sink("label_studio").QueueDepth == 0 })

			// The added sink's handlers stop with the router, not at its
			// close timeout.
			stopRun(t, h)
			if logs := h.logs.String(); strings.Contains(logs, "router did not stop cleanly") {
				t.Errorf("the router did not stop cleanly with an added sink:\n%s", logs)
			}
		})
	}
}

// Webhooks keep coming while a reload adds a sink: no export is lost at
// the old sink, every export accepted after the reload returned reaches
// the new one too, and none reaches it in part.
func TestReloadAddingASinkUnderLoadLosesNoExport(t *testing.T) {
	for _, broker := range brokers {
		t.Run(broker, func(t *testing.T) {
			sc, ls := vendortest.NewScale(t, scaleKey), vendortest.NewLabelStudio(t, lsToken)
			first := onBroker(t, broker, head("")+scaleSink(sc.TaskURL(), "\n    max_in_flight: 8"))
			h := startHarness(t, first)
			sc.SetLatency(5 * time.Millisecond) // requests are in flight at the reload

			const exports, reloadAt, waitAt = 40, 12, 28
			type sentExport struct {
				issue       string
				afterReload bool // accepted after the reload returned
			}
			var mu sync.Mutex
			var accepted []sentExport
			var reloaded atomic.Bool
			reloadDone := make(chan struct{})
			sent := make(chan struct{})
			go func() {
				defer close(sent)
				for i := 0; i < exports; i++ {
					if i == waitAt { // some exports surely follow the reload
						select {
						case <-reloadDone:
						case <-t.Context().Done():
							return
						}
					}
					after := reloaded.Load()
					body, issue := samplePayload(t, "issue-frames.json")
					if a := h.send(hookReq{secret: hookSecret, body: body}); a.Code == http.StatusAccepted {
						mu.Lock()
						accepted = append(accepted, sentExport{issue, after})
						mu.Unlock()
					} else {
						t.Errorf("export %d: %d %s", i, a.Code, a.Raw)
					}
				}
			}()
			h.eventually(20*time.Second, "exports accepted", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(accepted) >= reloadAt
			})
			res := h.mustReload(first + labelStudioSink(ls, ""))
			reloaded.Store(true)
			close(reloadDone)
			if !slices.Equal(res.Added, []string{"label_studio"}) || len(res.NeedsRestart) != 0 {
				t.Fatalf("reload result %+v, want label_studio added", res)
			}
			<-sent
			if len(accepted) != exports {
				t.Fatalf("%d of %d exports accepted", len(accepted), exports)
			}
			waitFake(t, "every export's tasks at Scale", func(ctx context.Context) error { return sc.WaitAccepted(ctx, 3*exports) })
			h.eventually(20*time.Second, "both queues to empty", func() bool {
				return h.sink("scale").QueueDepth == 0 && h.sink("label_studio").QueueDepth == 0
			})
			lost, atLS, afterN := 0, 0, 0
			for _, e := range accepted {
				if n := len(scaleTasksOf(sc, e.issue)); n != 3 {
					lost++
					t.Errorf("issue %s: %d tasks at Scale, want 3", e.issue, n)
				}
				n := len(lsTasksOf(ls, e.issue))
				switch {
				case e.afterReload && n != 3:
					lost++
					t.Errorf("issue %s, accepted after the reload: %d tasks at the added sink, want 3", e.issue, n)
				case n != 0 && n != 3:
					t.Errorf("issue %s: %d tasks at the added sink, want all 3 or none", e.issue, n)
				}
				if n == 3 {
					atLS++
				}
				if e.afterReload {
					afterN++
				}
			}
			t.Logf("%s: exports %d, accepted after the reload %d, at the added sink %d, lost %d; Scale requests %d, duplicates %d; reload took %v",
				broker, exports, afterN, atLS, lost, sc.RequestCount(), sc.Duplicates(), res.Took)
			if afterN < exports-waitAt {
				t.Errorf("%d exports accepted after the reload, want at least %d", afterN, exports-waitAt)
			}
			if n := sc.RequestCount(); n != 3*exports {
				t.Errorf("%d requests at Scale, want %d: one per task", n, 3*exports)
			}
			if n := len(ls.Tasks(lsProject)); n != 3*atLS {
				t.Errorf("%d tasks at the added sink, want %d (3 for each of %d exports)", n, 3*atLS, atLS)
			}
			if n := len(h.deadLetters("label_studio")) + len(h.deadLetters("scale")); n != 0 {
				t.Errorf("%d dead letters, want none", n)
			}
		})
	}
}

// Webhooks keep coming while the stages and a sink are reloaded again
// and again; every accepted export reaches the vendor.
func TestReloadUnderLoadLosesNoExport(t *testing.T) {
	for _, broker := range brokers {
		t.Run(broker, func(t *testing.T) {
			sc := vendortest.NewScale(t, scaleKey)
			cfg := func(gen int) string {
				stages := ""
				if gen%2 == 1 {
					stages = `  - {type: filter, expr: '.project != "skip_me"'}`
				}
				return reloadScale(stages, sc.TaskURL(), fmt.Sprintf("\n    headers: {X-Config-Gen: \"%d\"}", gen))
			}
			base := onBroker(t, broker, cfg(0))
			onSame := func(gen int) string { // keeps the broker and redis of base
				c := cfg(gen)
				i, j := strings.Index(base, "broker:"), strings.Index(base, "stages:")
				return strings.Replace(c, "broker: {type: memory}\n", base[i:j], 1)
			}
			h := startHarness(t, base)
			// A vendor that takes a moment: requests are in flight when
			// the sink's config is swapped.
			sc.SetLatency(5 * time.Millisecond)

			const exports, reloads = 40, 6
			var mu sync.Mutex
			var accepted []string
			sent := make(chan struct{})
			// The sender waits for reload k before export k*step: the
			// reloads interleave with the webhooks, and exports follow
			// the last one.
			reloaded := make(chan struct{}, reloads)
			step := exports / (reloads + 1)
			go func() {
				defer close(sent)
				for i := 0; i < exports; i++ {
					if i > 0 && i%step == 0 && i/step <= reloads {
						select {
						case <-reloaded:
						case <-t.Context().Done():
							return
						}
					}
					body, issue := samplePayload(t, "issue-frames.json")
					a := h.send(hookReq{secret: hookSecret, body: body})
					if a.Code == http.StatusAccepted {
						mu.Lock()
						accepted = append(accepted, issue)
						mu.Unlock()
					} else {
						t.Errorf("export %d: %d %s", i, a.Code, a.Raw)
					}
				}
			}()
			var took []time.Duration
			for gen := 1; gen <= reloads; gen++ {
				// Reload gen once gen*step exports are in; the sender
				// waits for it there.
				h.eventually(20*time.Second, "exports accepted", func() bool {
					mu.Lock()
					defer mu.Unlock()
					return len(accepted) >= gen*step
				})
				res := h.mustReload(onSame(gen))
				if !slices.Equal(res.Changed, []string{"scale"}) || len(res.NeedsRestart) != 0 {
					t.Fatalf("reload %d: %+v", gen, res)
				}
				took = append(took, res.Took)
				reloaded <- struct{}{}
			}
			<-sent
			if len(accepted) != exports {
				t.Fatalf("%d of %d exports accepted", len(accepted), exports)
			}
			waitFake(t, "every export's tasks", func(ctx context.Context) error { return sc.WaitAccepted(ctx, 3*exports) })
			lost := 0
			for _, issue := range accepted {
				if n := len(scaleTasksOf(sc, issue)); n != 3 {
					lost++
					t.Errorf("issue %s: %d tasks at Scale, want 3", issue, n)
				}
			}
			gens := map[string]int{}
			for _, r := range sc.Requests() {
				gens[r.Header.Get("X-Config-Gen")]++
			}
			t.Logf("%s: exports sent %d, accepted %d, lost %d; Scale requests %d, duplicates %d; requests by config generation %v; reload took %v",
				broker, exports, len(accepted), lost, sc.RequestCount(), sc.Duplicates(), gens, took)
			if n := sc.RequestCount(); n != 3*exports {
				t.Errorf("%d requests at Scale, want %d: one per task", n, 3*exports)
			}
			if gens[fmt.Sprint(reloads)] == 0 {
				t.Errorf("no request carried the last config's header: %v", gens)
			}
		})
	}
}

// A reload leaves a sink's breaker as it is: an unchanged sink's, and a
// changed sink's whose retry, breaker and rate_limit did not change.
func TestReloadKeepsBreakerState(t *testing.T) {
	for _, broker := range brokers {
		t.Run(broker, func(t *testing.T) {
			sc, ls := vendortest.NewScale(t, scaleKey), vendortest.NewLabelStudio(t, lsToken)
			const policy = `
    retry: {max_attempts: 1000, initial_interval: 5ms, max_interval: 20ms, max_elapsed: 0s}
    breaker: {consecutive_failures: 2, open_timeout: 1h}`
			first := onBroker(t, broker, head("")+scaleSink(sc.TaskURL(), policy)+labelStudioSink(ls, policy))
			h := startHarness(t, first)
			sc.SetDown(http.StatusServiceUnavailable)
			ls.SetDown(http.StatusServiceUnavailable)
			body, _ := samplePayload(t, "issue-frames.json")
			h.accept(body)
			h.eventually(10*time.Second, "both breakers open", func() bool {
				return h.sink("scale").Breaker == "open" && h.sink("label_studio").Breaker == "open"
			})

			next := strings.Replace(first, "conflict_is_success: true", "conflict_is_success: true\n    headers: {X-Reloaded: \"1\"}", 1)
			res := h.mustReload(next)
			if !slices.Equal(res.Changed, []string{"scale"}) {
				t.Fatalf("reload result %+v, want sink scale changed", res)
			}
			for _, name := range []string{"scale", "label_studio"} {
				if s := h.sink(name); s.Breaker != "open" {
					t.Errorf("%s after the reload: breaker %q, want open still", name, s.Breaker)
				}
			}
		})
	}
}

// A removed sink takes no new exports, and what its queue holds is never
// dropped: on memory it is still delivered, on Redis it waits there until
// the sink is back; put back, the sink takes new exports again.
func TestReloadRemovedSinkOnEveryBroker(t *testing.T) {
	for _, broker := range brokers {
		t.Run(broker, func(t *testing.T) {
			sc, ls := vendortest.NewScale(t, scaleKey), vendortest.NewLabelStudio(t, lsToken)
			const policy = `
    retry: {max_attempts: 100000, initial_interval: 5ms, max_interval: 20ms, max_elapsed: 0s}
    breaker: {consecutive_failures: 100000}`
			withLS := onBroker(t, broker, head("")+scaleSink(sc.TaskURL(), "")+labelStudioSink(ls, policy))
			i, j := strings.Index(withLS, "  - name: label_studio"), strings.Index(withLS, "retry: {max_attempts: 100000")
			lsEnd := j + strings.Index(withLS[j:], "consecutive_failures: 100000}") + len("consecutive_failures: 100000}")
			without := withLS[:i] + withLS[lsEnd:]
			h := startHarness(t, withLS)

			ls.SetDown(http.StatusServiceUnavailable) // the export waits in label_studio's queue
			body, queued := samplePayload(t, "issue-frames.json")
			h.accept(body)
			waitFake(t, "label_studio's failed attempts", func(ctx context.Context) error { return ls.WaitRequests(ctx, 2) })

			res := h.mustReload(without)
			if !slices.Equal(res.Removed, []string{"label_studio"}) || len(res.NeedsRestart) != 0 {
				t.Fatalf("reload result %+v, want label_studio removed", res)
			}
			body, during := samplePayload(t, "issue-frames.json")
			h.accept(body)
			h.eventually(10*time.Second, "the next export at Scale", func() bool { return len(scaleTasksOf(sc, during)) == 3 })

			if broker == "redis" {
				// Stopped: its failed attempt is handed back, not retried,
				// and once its consumers are gone nothing can be sent.
				h.eventually(10*time.Second, "the removed sink to stop", func() bool {
					return strings.Contains(h.logs.String(), "removed sink stopped")
				})
				ls.SetUp()
				if n := len(lsTasksOf(ls, queued)); n != 0 {
					t.Errorf("the stopped sink delivered %d tasks", n)
				}
				if d := h.sink("label_studio").QueueDepth; d != 1 {
					t.Errorf("the stopped sink's queue holds %d requests, want the queued export's one", d)
				}
				res = h.mustReload(withLS)
				if !slices.Equal(res.Restored, []string{"label_studio"}) {
					t.Fatalf("reload result %+v, want label_studio restored", res)
				}
			}
			ls.SetUp()
			h.eventually(10*time.Second, "the queued export delivered", func() bool { return len(lsTasksOf(ls, queued)) == 3 })
			h.eventually(10*time.Second, "label_studio's queue to empty", func() bool { return h.sink("label_studio").QueueDepth == 0 })
			if n := len(lsTasksOf(ls, during)); n != 0 {
				t.Errorf("the removed sink got %d tasks of an export accepted after its removal", n)
			}

			if broker == "memory" {
				res = h.mustReload(withLS)
				if !slices.Equal(res.Restored, []string{"label_studio"}) {
					t.Fatalf("reload result %+v, want label_studio restored", res)
				}
			}
			body, after := samplePayload(t, "issue-frames.json")
			h.accept(body)
			h.eventually(10*time.Second, "the export after the sink came back", func() bool { return len(lsTasksOf(ls, after)) == 3 })
			if n := len(h.deadLetters("label_studio")); n != 0 {
				t.Errorf("%d dead letters for label_studio, want none", n)
			}
		})
	}
}

// On Redis a removed sink stops: its requests in flight finish, nothing
// more is sent, and its queue stays in Redis, pending, until the sink is
// back in the config, by a reload or a restart; it then delivers every
// request exactly once.
func TestReloadRemovedSinkKeepsItsQueueOnRedis(t *testing.T) {
	for _, back := range []string{"reload", "restart"} {
		t.Run(back, func(t *testing.T) {
			sc, ls := vendortest.NewScale(t, scaleKey), vendortest.NewLabelStudio(t, lsToken)
			srv := redistest.Start(t)
			without := redisHead(srv, "") + scaleSink(sc.TaskURL(), "")
			withLS := without + labelStudioSink(ls, "\n    max_in_flight: 2")
			h := startHarness(t, withLS)

			// Label Studio takes an export's 3 tasks in one request.
			ls.SetLatency(time.Hour) // held until released below
			const exports = 5
			var issues []string
			for range exports {
				body, issue := samplePayload(t, "issue-frames.json")
				h.accept(body)
				issues = append(issues, issue)
			}
			// max_in_flight 2: two requests in flight, the others queued.
			waitFake(t, "two requests in flight at Label Studio", func(ctx context.Context) error { return ls.WaitArrived(ctx, 2) })
			// Every export fanned out before the removal: one fanned out after
			// it would not be queued for the removed sink.
			h.eventually(10*time.Second, "every export queued for label_studio", func() bool { return h.sink("label_studio").QueueDepth == exports })

			res := h.mustReload(without)
			if !slices.Equal(res.Removed, []string{"label_studio"}) {
				t.Fatalf("reload result %+v, want label_studio removed", res)
			}
			ls.SetLatency(0) // the requests in flight finish
			waitFake(t, "the requests in flight answered", func(ctx context.Context) error { return ls.WaitRequests(ctx, 2) })
			h.eventually(10*time.Second, "the removed sink to stop", func() bool {
				return strings.Contains(h.logs.String(), "removed sink stopped")
			})
			if n := ls.RequestCount(); n != 2 {
				t.Errorf("%d requests at the removed sink, want the 2 in flight at the removal", n)
			}
			// The requests never sent are all queued; the two in flight may have
			// been acked if they finished before the stop reached the subscriber.
			if d := h.sink("label_studio").QueueDepth; d < exports-2 || d > exports {
				t.Errorf("the removed sink's queue holds %d requests, want %d to %d", d, exports-2, exports)
			}
			rdb := srv.Client(t)
			streams, err := rdb.Keys(t.Context(), "*sink.label_studio").Result()
			if err != nil || len(streams) != 1 {
				t.Fatalf("label_studio's stream: %v %v", streams, err)
			}
			if n, err := rdb.XLen(t.Context(), streams[0]).Result(); err != nil || n != exports {
				t.Errorf("XLEN %s = %d (%v), want %d", streams[0], n, err, exports)
			}

			if back == "reload" {
				res = h.mustReload(withLS)
				if !slices.Equal(res.Restored, []string{"label_studio"}) {
					t.Fatalf("reload result %+v, want label_studio restored", res)
				}
			} else {
				stopRun(t, h)
				h = startHarness(t, withLS) // the same replica id: its consumers' names
			}
			h.eventually(10*time.Second, "every export at Label Studio", func() bool {
				for _, issue := range issues {
					if len(lsTasksOf(ls, issue)) != 3 {
						return false
					}
				}
				return true
			})
			h.eventually(10*time.Second, "label_studio's queue to empty", func() bool { return h.sink("label_studio").QueueDepth == 0 })
			counts := ls.CountsByKey()
			if len(counts) != 3*exports {
				t.Errorf("%d keys at Label Studio, want %d", len(counts), 3*exports)
			}
			for k, c := range counts {
				if c.Requests != 1 || c.Duplicates != 0 {
					t.Errorf("key %q: %+v, want exactly one request", k, c)
				}
			}
			if n := ls.RequestCount(); n != exports {
				t.Errorf("%d requests at Label Studio, want %d: one per export", n, exports)
			}
			if n := len(h.deadLetters("label_studio")); n != 0 {
				t.Errorf("%d dead letters, want none", n)
			}
		})
	}
}

// Webhooks keep coming while a sink is removed and put back: no export
// is lost at the sink that stays, an export fanned out to the removed
// sink before its removal still reaches it, every export accepted after
// it is back reaches it, and none reaches it in part or twice.
func TestReloadRemovingAndRestoringASinkUnderLoadLosesNoExport(t *testing.T) {
	for _, broker := range brokers {
		t.Run(broker, func(t *testing.T) {
			sc, ls := vendortest.NewScale(t, scaleKey), vendortest.NewLabelStudio(t, lsToken)
			without := onBroker(t, broker, head("")+scaleSink(sc.TaskURL(), "\n    max_in_flight: 8"))
			withLS := without + labelStudioSink(ls, "\n    max_in_flight: 4")
			h := startHarness(t, withLS)
			sc.SetLatency(5 * time.Millisecond) // requests are in flight at the reloads
			ls.SetLatency(5 * time.Millisecond)

			const exports, removeAt, restoreAt = 45, 10, 25
			type sentExport struct {
				issue    string
				phase    int // 0 before the removal, 1 while removed, 2 after the restore
				fannedTo bool
			}
			var mu sync.Mutex
			var accepted []sentExport
			var phase atomic.Int32
			gate := make(chan struct{}) // the sender waits at removeAt and restoreAt
			sent := make(chan struct{})
			go func() {
				defer close(sent)
				for i := 0; i < exports; i++ {
					if i == removeAt || i == restoreAt {
						select {
						case <-gate:
						case <-t.Context().Done():
							return
						}
					}
					ph := int(phase.Load())
					body, issue := samplePayload(t, "issue-frames.json")
					if a := h.send(hookReq{secret: hookSecret, body: body}); a.Code == http.StatusAccepted {
						mu.Lock()
						accepted = append(accepted, sentExport{issue: issue, phase: ph})
						mu.Unlock()
					} else {
						t.Errorf("export %d: %d %s", i, a.Code, a.Raw)
					}
				}
			}()
			acceptedN := func(n int) func() bool {
				return func() bool {
					mu.Lock()
					defer mu.Unlock()
					return len(accepted) >= n
				}
			}
			h.eventually(20*time.Second, "exports accepted", acceptedN(removeAt))
			// Those fanned out to label_studio already must reach it.
			mu.Lock()
			before := slices.Clone(accepted)
			mu.Unlock()
			h.eventually(20*time.Second, "the first exports fanned out to label_studio", func() bool {
				for _, e := range before {
					if !lsSeen(ls, e.issue) {
						return false
					}
				}
				return true
			})
			res := h.mustReload(without)
			if !slices.Equal(res.Removed, []string{"label_studio"}) {
				t.Fatalf("reload result %+v, want label_studio removed", res)
			}
			phase.Store(1)
			gate <- struct{}{}
			h.eventually(20*time.Second, "exports accepted", acceptedN(restoreAt))
			res2 := h.mustReload(withLS)
			if !slices.Equal(res2.Restored, []string{"label_studio"}) {
				t.Fatalf("reload result %+v, want label_studio restored", res2)
			}
			phase.Store(2)
			gate <- struct{}{}
			<-sent
			if len(accepted) != exports {
				t.Fatalf("%d of %d exports accepted", len(accepted), exports)
			}
			waitFake(t, "every export's tasks at Scale", func(ctx context.Context) error { return sc.WaitAccepted(ctx, 3*exports) })
			h.eventually(20*time.Second, "both queues to empty", func() bool {
				return h.sink("scale").QueueDepth == 0 && h.sink("label_studio").QueueDepth == 0
			})
			lost, atLS := 0, 0
			for _, e := range accepted {
				if n := len(scaleTasksOf(sc, e.issue)); n != 3 {
					lost++
					t.Errorf("issue %s: %d tasks at Scale, want 3", e.issue, n)
				}
				n := len(lsTasksOf(ls, e.issue))
				switch {
				case e.phase != 1 && n != 3:
					lost++
					t.Errorf("issue %s (phase %d): %d tasks at label_studio, want 3", e.issue, e.phase, n)
				case n != 0 && n != 3:
					t.Errorf("issue %s: %d tasks at label_studio, want all 3 or none", e.issue, n)
				}
				if n == 3 {
					atLS++
				}
			}
			t.Logf("%s: exports %d, at label_studio %d, lost %d; Scale requests %d, duplicates %d; label_studio requests %d, duplicates %d; removal took %v, restore took %v",
				broker, exports, atLS, lost, sc.RequestCount(), sc.Duplicates(), ls.RequestCount(), ls.Duplicates(), res.Took, res2.Took)
			if n := sc.RequestCount(); n != 3*exports {
				t.Errorf("%d requests at Scale, want %d: one per task", n, 3*exports)
			}
			if n := ls.RequestCount(); n != atLS {
				t.Errorf("%d requests at label_studio, want %d: one per export it got", n, atLS)
			}
			if n := len(h.deadLetters("label_studio")) + len(h.deadLetters("scale")); n != 0 {
				t.Errorf("%d dead letters, want none", n)
			}
		})
	}
}

// lsSeen says whether Label Studio got a request for a task of issue.
func lsSeen(ls *vendortest.LabelStudio, issue string) bool {
	for k, c := range ls.CountsByKey() {
		if strings.HasPrefix(k, vendortest.LabelStudioKey(issue, "")) && c.Requests > 0 {
			return true
		}
	}
	return false
}

// flakyBroker is the memory broker with a failure injected on demand: no
// workers for one topic, or workers of one topic that cannot subscribe.
// It counts each topic's live subscriptions.
type flakyBroker struct {
	backend.Broker
	mu                         sync.Mutex
	failWorkers, failSubscribe string // a topic, "" for none
	live                       map[string]int
}

func (b *flakyBroker) set(failWorkers, failSubscribe string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.failWorkers, b.failSubscribe = failWorkers, failSubscribe
}

func (b *flakyBroker) liveOn(topic string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.live[topic]
}

func (b *flakyBroker) Workers(topic, group string, n int) ([]message.Subscriber, error) {
	b.mu.Lock()
	fail := b.failWorkers == topic
	b.mu.Unlock()
	if fail {
		return nil, errors.New("injected: no workers")
	}
	subs, err := b.Broker.Workers(topic, group, n)
	for i := range subs {
		subs[i] = flakySub{subs[i], b}
	}
	return subs, err
}

type flakySub struct {
	message.Subscriber
	b *flakyBroker
}

func (s flakySub) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if s.b.failSubscribe == topic {
		return nil, errors.New("injected: cannot subscribe")
	}
	ch, err := s.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		return nil, err
	}
	s.b.live[topic]++
	context.AfterFunc(ctx, func() {
		s.b.mu.Lock()
		s.b.live[topic]--
		s.b.mu.Unlock()
	})
	return ch, nil
}

type flakyBackend struct {
	backend.Backend
	br *flakyBroker
}

func (f flakyBackend) Broker() (backend.Broker, error) { return f.br, nil }

// A reload that fails while starting the sinks it adds leaves none of
// their handlers behind: the running config stays, and a later reload
// adding them starts each once.
func TestReloadFailingToStartASinkLeavesNoHandler(t *testing.T) {
	for _, tc := range []struct{ name, failWorkers, failSubscribe string }{
		// The second added sink gets no workers: the first one's
		// handlers are on the router, not started.
		{"workers", "sink.ls2", ""},
		// The second added sink's handler cannot subscribe: the router
		// may have started the first one's.
		{"subscribe", "", "sink.ls2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := vendortest.NewScale(t, scaleKey)
			ls, ls2 := vendortest.NewLabelStudio(t, lsToken), vendortest.NewLabelStudio(t, lsToken)
			br := &flakyBroker{live: map[string]int{}}
			reg := builtin.Registry()
			reg.RegisterBackend("flaky", pipeline.BackendType{Doc: "memory with injected failures",
				Open: func(ctx context.Context, env pipeline.BackendEnv) (backend.Backend, error) {
					b, err := memory.Type.Open(ctx, env)
					if err != nil {
						return nil, err
					}
					if br.Broker, err = b.Broker(); err != nil {
						return nil, err
					}
					return flakyBackend{b, br}, nil
				}})
			first := strings.Replace(head("")+scaleSink(sc.TaskURL(), ""), "broker: {type: memory}", "broker: {type: flaky}", 1)
			h := newHarnessWith(t, first, func(o *pipeline.Options) { o.Registry = reg })
			h.run()
			next := first + labelStudioSink(ls, "") + strings.Replace(labelStudioSink(ls2, ""), "name: label_studio", "name: ls2", 1)

			br.set(tc.failWorkers, tc.failSubscribe)
			res, err := h.reloadTo(next)
			if err == nil || !strings.Contains(err.Error(), "injected") || len(res.Added) != 0 {
				t.Fatalf("reload with a sink failing to start: %+v, %v; want the injected error and nothing added", res, err)
			}
			if !strings.Contains(h.logs.String(), "config reload refused; the running config stays") {
				t.Errorf("no refusal logged")
			}
			h.eventually(10*time.Second, "no live subscription of the sinks that failed to start", func() bool {
				return br.liveOn("sink.label_studio") == 0 && br.liveOn("sink.ls2") == 0
			})
			// The running config stays: Scale only.
			body, before := samplePayload(t, "issue-frames.json")
			h.accept(body)
			h.eventually(10*time.Second, "the export at Scale", func() bool { return len(scaleTasksOf(sc, before)) == 3 })

			br.set("", "")
			res = h.mustReload(next)
			if !slices.Equal(res.Added, []string{"label_studio", "ls2"}) {
				t.Fatalf("reload result %+v, want label_studio and ls2 added", res)
			}
			for _, topic := range []string{"sink.label_studio", "sink.ls2"} {
				if n := br.liveOn(topic); n != 1 {
					t.Errorf("%s: %d live subscriptions, want 1 (none left by the failed reload)", topic, n)
				}
			}
			body, after := samplePayload(t, "issue-frames.json")
			h.accept(body)
			h.eventually(10*time.Second, "the next export at both added sinks", func() bool {
				return len(lsTasksOf(ls, after)) == 3 && len(lsTasksOf(ls2, after)) == 3
			})
			if n := len(lsTasksOf(ls, before)) + len(lsTasksOf(ls2, before)); n != 0 {
				t.Errorf("%d tasks of the export accepted while the reload was refused reached the sinks it would have added", n)
			}
			stopRun(t, h)
			if logs := h.logs.String(); strings.Contains(logs, "router did not stop cleanly") {
				t.Errorf("the router did not stop cleanly after a failed reload:\n%s", logs)
			}
		})
	}
}

// A stage or sink whose config is unchanged but whose file changed (the
// secret stage's secrets_file, a schema file, a preset's api_key_file) is
// rebuilt by a reload; one whose files are unchanged is kept as it is
// (a memory dedupe stage keeps its keys).
func TestReloadRebuildsWhatReadAChangedFile(t *testing.T) {
	sc, ls := vendortest.NewScale(t, scaleKey), vendortest.NewLabelStudio(t, lsToken)
	dir := t.TempDir()
	write := func(name, text string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	secrets := write("secrets.txt", hookSecret+"\n")
	schema := write("extra.schema.json", `{}`)
	key := write("ls.key", "stale-key\n")
	stages := fmt.Sprintf("  - {type: schema, name: extra, schema: %q}\n  - {type: dedupe, store: memory, ttl: 1h}", schema)
	cfgText := strings.Replace(head(stages), `secrets: ["`+hookOldSecret+`", "`+hookSecret+`"]`, fmt.Sprintf("secrets_file: %q", secrets), 1) +
		scaleSink(sc.TaskURL(), "") +
		fmt.Sprintf("  - name: label_studio\n    type: label_studio\n    url: %q\n    api_key_file: %q\n    project_id: %d\n    retry: {max_attempts: 1}\n", ls.URL, key, lsProject)
	h := startHarness(t, cfgText)
	file := write("labelpipe.yaml", cfgText)

	first, firstIssue := samplePayload(t, "issue-frames.json")
	firstID := h.accept(first).ID
	h.eventually(10*time.Second, "the first export at Scale", func() bool { return len(scaleTasksOf(sc, firstIssue)) == 3 })
	h.waitDeadLetters("label_studio", 1) // the stale key is refused

	// Files unchanged: nothing is rebuilt.
	res, err := h.p.ReloadFile(file)
	if err != nil || res.Stages || len(res.Changed) != 0 {
		t.Fatalf("reload with every file unchanged: %+v, %v; want nothing rebuilt", res, err)
	}

	write("secrets.txt", "rotated-secret\n")
	write("extra.schema.json", `{"properties": {"project": {"not": {"const": "blocked"}}}}`)
	write("ls.key", lsToken+"\n")
	res, err = h.p.ReloadFile(file)
	if err != nil || !res.Stages || !slices.Equal(res.Changed, []string{"label_studio"}) || len(res.NeedsRestart) != 0 {
		t.Fatalf("reload after the files changed: %+v, %v; want the stages swapped and label_studio rebuilt", res, err)
	}

	if a := h.send(hookReq{secret: hookSecret, body: first}); a.Code != http.StatusUnauthorized {
		t.Errorf("the secret rotated out of secrets_file: %d %s, want 401", a.Code, a.Raw)
	}
	body, issue := samplePayload(t, "issue-frames.json")
	if a := h.send(hookReq{secret: "rotated-secret", body: body}); a.Code != http.StatusAccepted {
		t.Fatalf("the secret rotated into secrets_file: %d %s, want 202", a.Code, a.Raw)
	}
	var doc map[string]any
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	doc["project"] = "blocked"
	blocked, _ := json.Marshal(doc)
	if a := h.send(hookReq{secret: "rotated-secret", body: blocked}); a.Code != http.StatusUnprocessableEntity {
		t.Errorf("an export the changed schema file refuses: %d %s, want 422", a.Code, a.Raw)
	}
	// The dedupe stage's config and files did not change: kept, with
	// what it has seen.
	if a := h.send(hookReq{secret: "rotated-secret", body: first}); a.Status != "duplicate" || a.ID != firstID {
		t.Errorf("the first export again: %d %s, want duplicate of %s", a.Code, a.Raw, firstID)
	}
	// The sink sends with the key now in api_key_file.
	h.eventually(10*time.Second, "the next export at Label Studio", func() bool { return len(lsTasksOf(ls, issue)) == 3 })
	if n := len(lsTasksOf(ls, firstIssue)); n != 0 {
		t.Errorf("%d tasks of the export sent with the stale key", n)
	}
}
