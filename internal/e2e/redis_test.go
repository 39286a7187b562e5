package e2e_test

// Redis integration tests: the real labelpipe binary, run as replica
// processes on loopback ports, against a real redis-server
// (internal/redistest) and the fake vendors (internal/vendortest). Each
// subtest is one "Done when" item of the Redis issue.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/labelpipe/labelpipe/configs"
	"github.com/labelpipe/labelpipe/internal/redistest"
	"github.com/labelpipe/labelpipe/internal/testutil"
	"github.com/labelpipe/labelpipe/internal/vendortest"
)

// Vendor credentials of the fakes.
const (
	scaleKey    = "scale-e2e-key"
	labelboxKey = "labelbox-e2e-key"
	lsToken     = "ls-e2e-token"
	lsProject   = 7
	lbProject   = "lb-project"
	e2eSecret   = "e2e-redis-secret"
)

// elementsPerExport is how many elements issue-crops.json has: Scale gets
// one request per element, Labelbox and Label Studio one per export.
const elementsPerExport = 2

// TestRedis builds the daemon once and runs every scenario against it.
func TestRedis(t *testing.T) {
	bin := buildLabelpipe(t)
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, bin string)
	}{
		{"replica killed under load and restarted", testCrashUnderLoad},
		{"two replicas split the work and the survivor finishes", testTwoReplicas},
		{"redis restarted with AOF under load", testRedisRestart},
		{"dedupe", testDedupe},
		{"vendor outage opens the shared breaker", testSharedBreaker},
		{"dead letter and replay", testDLQReplay},
		{"a hanging vendor fills only its own queue", testHangingVendor},
		{"daemon started while redis is down", testStartWithRedisDown},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, bin) })
	}
}

// testCrashUnderLoad: two replicas take a steady load; one is SIGKILLed
// and restarted under the same replica id. Every 202'd export reaches
// every sink; Scale and Labelbox (idempotency keys) hold no duplicate, and
// Label Studio (none) at most the requests in flight at the kill.
func testCrashUnderLoad(t *testing.T, bin string) {
	// A short hold: the load's retry of an export whose replica died
	// before confirming it is accepted again within its retry window.
	r := newRig(t, bin, rigOptions{latency: 20 * time.Millisecond, dedupeHold: "2s"})
	a, b := r.start("a"), r.start("b")
	l := r.startLoad(10*time.Millisecond, a, b)
	l.waitAccepted(t, 30)
	a.kill()
	l.waitAccepted(t, l.acceptedCount()+30) // b alone
	a.restart()
	l.waitAccepted(t, l.acceptedCount()+30)
	ids := l.stop()
	if got := l.acceptedBy(a); got == 0 {
		t.Fatal("replica a accepted nothing")
	}
	r.waitDelivered(t, ids, 60*time.Second)
	r.checkExactlyOnce(t, ids, killRepeats)
	// Label Studio has no idempotency key: only requests in flight at the
	// kill may repeat, at most its max_in_flight.
	if d := r.ls.Duplicates(); d > lsInFlight {
		t.Fatalf("label studio got %d duplicate imports, more than the %d in flight at the kill", d, lsInFlight)
	}
	t.Logf("%d exports accepted, %d label studio repeats after the kill", len(ids), r.ls.Duplicates())
}

// testTwoReplicas: both replicas answer webhooks and deliver; then one is
// killed while it holds work and the other finishes that work.
func testTwoReplicas(t *testing.T, bin string) {
	r := newRig(t, bin, rigOptions{claimIdle: time.Second, dedupeHold: "2s"})
	a, b := r.start("a"), r.start("b")
	l := r.startLoad(5*time.Millisecond, a, b)
	l.waitAccepted(t, 40)
	ids := l.stop()
	for _, rp := range []*replica{a, b} {
		if l.acceptedBy(rp) == 0 {
			t.Fatalf("replica %s answered no webhook with 202", rp.name)
		}
	}
	r.waitDelivered(t, ids, 30*time.Second)
	for _, rp := range []*replica{a, b} {
		if n := rp.delivered(t); n == 0 {
			t.Fatalf("replica %s delivered nothing", rp.name)
		}
	}

	// Slow Scale down so that work piles up on both, then kill a for
	// good, under load, while its consumers hold some; the callers retry
	// what a dropped on b.
	r.scale.SetLatency(300 * time.Millisecond)
	l = r.startLoad(5*time.Millisecond, a, b)
	l.waitAccepted(t, 20)
	r.waitPending(t, "sink.scale", "sink-scale", a.name)
	a.kill()
	r.scale.SetLatency(0)
	l.waitAccepted(t, l.acceptedCount()+20)
	more := l.stop()
	r.waitDelivered(t, append(ids, more...), 30*time.Second)
	r.checkExactlyOnce(t, append(ids, more...), killRepeats) // a was killed holding work
}

// testRedisRestart: Redis is killed (AOF, fsync always) under load and
// started again. Ingress answers 503 with Retry-After while it is down,
// recovers without a daemon restart, and nothing accepted is lost.
func testRedisRestart(t *testing.T, bin string) {
	r := newRig(t, bin, rigOptions{aof: true})
	a := r.start("a")
	l := r.startLoad(10*time.Millisecond, a)
	l.waitAccepted(t, 30)
	r.redis.Kill()

	status, hdr, body := r.post(t, a, r.exportBody("while-down"))
	if status != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" {
		t.Fatalf("webhook while redis is down: %d (Retry-After %q) %s; want 503 with Retry-After", status, hdr.Get("Retry-After"), body)
	}
	if code := a.readyz(); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz while redis is down: %d", code)
	}

	r.redis.Restart()
	a.waitReady(t, 30*time.Second)
	l.waitAccepted(t, l.acceptedCount()+30)
	ids := l.stop()
	for code, n := range l.statuses() {
		switch code {
		case http.StatusAccepted, http.StatusOK, http.StatusServiceUnavailable:
		default:
			t.Fatalf("load got %d answers %d; want only 202, 200 duplicate and 503", n, code)
		}
	}
	r.waitDelivered(t, ids, 60*time.Second)
	r.checkExactlyOnce(t, ids, killRepeats) // redis died under deliveries and publishes
}

// testStartWithRedisDown: the daemon starts while Redis is down (nothing
// at startup, shared breakers included, may need it). Until Redis is up it
// is not ready and ingress answers 503 with Retry-After; once Redis is
// started it becomes ready by itself, without a restart, and delivers.
func testStartWithRedisDown(t *testing.T, bin string) {
	r := newRig(t, bin, rigOptions{})
	r.redis.Stop()
	a := r.launch("a")

	// Wait until it serves /readyz at all; it must not exit instead.
	a.waitReadyz(t, 30*time.Second, "answering /readyz while redis is down", func(code int) bool { return code != 0 })
	if code := a.readyz(); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz while redis is down: %d, want 503", code)
	}
	status, hdr, body := r.post(t, a, r.exportBody("before-redis"))
	if status != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" {
		t.Fatalf("webhook while redis is down: %d (Retry-After %q) %s; want 503 with Retry-After", status, hdr.Get("Retry-After"), body)
	}

	r.redis.Restart() // started on the same socket
	up := time.Now()
	a.waitReady(t, 30*time.Second)
	t.Logf("ready %s after redis started", time.Since(up).Round(time.Millisecond))
	status, _, body = r.post(t, a, r.exportBody("after-redis"))
	if status != http.StatusAccepted {
		t.Fatalf("webhook once redis is up: %d %s, want 202", status, body)
	}
	ids := []string{issueOf(t, r.exportBody("after-redis"))}
	r.waitDelivered(t, ids, 30*time.Second)
	r.checkExactlyOnce(t, ids, noRepeat)
}

// testDedupe: the same export twice is delivered once; an export whose
// durable publish failed after its dedupe key was reserved is accepted
// when sent again.
func testDedupe(t *testing.T, bin string) {
	r := newRig(t, bin, rigOptions{redisUser: true})
	a := r.start("a")

	body := r.exportBody("twice")
	status, _, first := r.post(t, a, body)
	if status != http.StatusAccepted {
		t.Fatalf("first: %d %s", status, first)
	}
	status, _, second := r.post(t, a, body)
	if status != http.StatusOK || !strings.Contains(string(second), "duplicate") {
		t.Fatalf("second: %d %s, want 200 duplicate", status, second)
	}

	// XADD is refused, SET NX is not: the key is reserved, the publish
	// fails, and the caller's retry must not be taken for a duplicate.
	if err := r.rdb.Do(t.Context(), "ACL", "SETUSER", "labelpipe", "-xadd").Err(); err != nil {
		t.Fatal(err)
	}
	retried := r.exportBody("publish-fails")
	if status, _, b := r.post(t, a, retried); status != http.StatusServiceUnavailable {
		t.Fatalf("with publish failing: %d %s, want 503", status, b)
	}
	if err := r.rdb.Do(t.Context(), "ACL", "SETUSER", "labelpipe", "+xadd").Err(); err != nil {
		t.Fatal(err)
	}
	status, _, third := r.post(t, a, retried)
	if status != http.StatusAccepted {
		t.Fatalf("retry after the failed publish: %d %s, want 202", status, third)
	}
	ids := []string{issueOf(t, body), issueOf(t, retried)}
	r.waitDelivered(t, ids, 30*time.Second)
	r.checkExactlyOnce(t, ids, noRepeat)
}

// testSharedBreaker: Scale is down with two replicas. Replica b's own
// trip rule would never open its breaker, so b reporting open and sending
// nothing is the shared state at work. No attempts are made while it is
// open (so no retry budget is spent and nothing is dead-lettered),
// Labelbox and Label Studio deliver everything meanwhile, and Scale drains
// once it is back.
func testSharedBreaker(t *testing.T, bin string) {
	const trip = 4
	openFor := time.Second
	r := newRig(t, bin, rigOptions{
		scaleInFlight: 1,
		scaleBreaker:  fmt.Sprintf("{consecutive_failures: %d, open_timeout: %s}", trip, openFor),
		scaleBreakerOf: map[string]string{
			"b": fmt.Sprintf("{consecutive_failures: 1000000, open_timeout: %s}", openFor),
		},
		scaleRetry: "{max_attempts: 12, initial_interval: 20ms, max_interval: 50ms, max_elapsed: 0s}",
	})
	a, b := r.start("a"), r.start("b")
	r.scale.SetDown(http.StatusServiceUnavailable)
	outage := time.Now()

	var ids []string
	for i := range 6 {
		rp := []*replica{a, b}[i%2]
		req := r.exportBody(fmt.Sprintf("outage-%d", i))
		status, _, body := r.post(t, rp, req)
		if status != http.StatusAccepted {
			t.Fatalf("export %d: %d %s", i, status, body)
		}
		ids = append(ids, issueOf(t, req))
	}
	a.waitBreaker(t, "scale", "open")
	b.waitBreaker(t, "scale", "open")
	atOpen := r.scale.RequestCount()

	// The other sinks are not held up by Scale.
	r.waitSink(t, "labelbox", ids, 15*time.Second)
	r.waitSink(t, "label_studio", ids, 15*time.Second)
	if r.scale.Accepted() != 0 {
		t.Fatal("scale accepted during its outage")
	}
	// Keep Scale down for a few open periods.
	waitUntil(t, outage.Add(3*openFor))
	down := time.Since(outage)
	r.scale.SetUp()
	during := r.scale.RequestCount()
	// While open nothing is sent; each open period ends with at most one
	// half-open probe per replica.
	probes := 2 * (int(down/openFor) + 1)
	if during > atOpen+probes {
		t.Fatalf("%d scale requests during a %s outage: %d to open it and %d more, want at most %d half-open probes",
			during, down.Round(time.Millisecond), atOpen, during-atOpen, probes)
	}
	r.waitDelivered(t, ids, 30*time.Second)
	r.checkExactlyOnce(t, ids, noRepeat)
	if n := r.rdb.XLen(t.Context(), "labelpipe:dlq.scale").Val(); n != 0 {
		t.Fatalf("%d scale requests dead-lettered: retry budget spent while the breaker was open", n)
	}
	t.Logf("outage %s: %d scale requests (%d until open)", down.Round(time.Millisecond), during, atOpen)
}

// testDLQReplay: a 400 from Scale dead-letters one request with its
// error; `labelpipe dlq replay` after the vendor is fixed delivers it
// once. show and purge work on a second one.
func testDLQReplay(t *testing.T, bin string) {
	r := newRig(t, bin, rigOptions{})
	a := r.start("a")
	const dlqKey = "labelpipe:dlq.scale"

	r.scale.FailNext(1, http.StatusBadRequest, "")
	status, _, body := r.post(t, a, r.exportBody("dlq"))
	if status != http.StatusAccepted {
		t.Fatalf("%d %s", status, body)
	}
	id, exp := issueOf(t, r.exportBody("dlq")), exportID(t, body)
	pollFor(t, "one dead letter", func() bool { return r.rdb.XLen(t.Context(), dlqKey).Val() == 1 })
	r.waitSink(t, "labelbox", []string{id}, 15*time.Second)
	if got := len(r.scaleTasks()[id]); got != elementsPerExport-1 {
		t.Fatalf("scale has %d tasks of the export before replay, want %d", got, elementsPerExport-1)
	}

	out := r.cli(t, 0, "dlq", "list", "-c", a.config, "--sink", "scale", "--json")
	var letters []map[string]any
	for line := range strings.Lines(out) {
		var d map[string]any
		if err := json.Unmarshal([]byte(line), &d); err != nil {
			t.Fatalf("dlq list --json: %v\n%s", err, out)
		}
		letters = append(letters, d)
	}
	if len(letters) != 1 {
		t.Fatalf("dlq list: %d entries, want 1\n%s", len(letters), out)
	}
	d := letters[0]
	if d["export_id"] != exp || d["status"] != float64(400) || d["error"] == "" || d["sink"] != "scale" {
		t.Fatalf("dead letter %v", d)
	}
	out = r.cli(t, 0, "dlq", "list", "-c", a.config)
	if !hasLine(out, "scale", "1") {
		t.Fatalf("dlq list without --sink:\n%s", out)
	}

	out = r.cli(t, 0, "dlq", "replay", "-c", a.config, "--sink", "scale", "--all")
	if !strings.Contains(out, "replayed 1") {
		t.Fatalf("replay said %q", out)
	}
	r.waitDelivered(t, []string{id}, 15*time.Second)
	r.checkExactlyOnce(t, []string{id}, noRepeat)
	if n := r.rdb.XLen(t.Context(), dlqKey).Val(); n != 0 {
		t.Fatalf("%d left in the DLQ after replay", n)
	}
	// Replaying again finds nothing and sends nothing.
	before := r.scale.RequestCount()
	out = r.cli(t, 0, "dlq", "replay", "-c", a.config, "--sink", "scale", "--all")
	if !strings.Contains(out, "replayed 0") || r.scale.RequestCount() != before {
		t.Fatalf("second replay: %q, %d requests after %d", out, r.scale.RequestCount(), before)
	}

	// show and purge.
	r.scale.FailNext(1, http.StatusBadRequest, "")
	_, _, body = r.post(t, a, r.exportBody("dlq-purge"))
	pollFor(t, "a second dead letter", func() bool { return r.rdb.XLen(t.Context(), dlqKey).Val() == 1 })
	entry := r.rdb.XRange(t.Context(), dlqKey, "-", "+").Val()[0]
	out = r.cli(t, 0, "dlq", "show", "-c", a.config, "--sink", "scale", "--id", entry.ID)
	var shown struct {
		ID       string `json:"id"`
		ExportID string `json:"export_id"`
		Message  struct {
			Payload json.RawMessage `json:"payload"`
		} `json:"message"`
	}
	if err := json.Unmarshal([]byte(out), &shown); err != nil || shown.ID != entry.ID || shown.ExportID != exportID(t, body) || len(shown.Message.Payload) == 0 {
		t.Fatalf("dlq show: %v\n%s", err, out)
	}
	r.cli(t, 2, "dlq", "purge", "-c", a.config, "--sink", "scale") // needs --id or --all
	out = r.cli(t, 0, "dlq", "purge", "-c", a.config, "--sink", "scale", "--id", entry.ID)
	if !strings.Contains(out, "purged 1") || r.rdb.XLen(t.Context(), dlqKey).Val() != 0 {
		t.Fatalf("purge: %q", out)
	}
}

// testHangingVendor: on the Redis broker too, a vendor that never answers
// fills only its own queue (the sink's stream, bounded by
// queue.max_requests across replicas); intake and the other vendors carry
// on, the overflow is dead-lettered with a clear error, /readyz says
// degraded, and once the vendor answers again the queue drains and a
// replay delivers the rest, each task once.
func testHangingVendor(t *testing.T, bin string) {
	r := newRig(t, bin, rigOptions{scaleInFlight: 1, scaleQueue: "{max_requests: 3}"})
	a := r.start("a")
	r.scale.SetLatency(time.Hour)
	var ids []string
	for i := range 6 {
		req := r.exportBody(fmt.Sprintf("hang-%d", i))
		if status, _, body := r.post(t, a, req); status != http.StatusAccepted {
			t.Fatalf("export %d while scale hangs: %d %s", i, status, body)
		}
		ids = append(ids, issueOf(t, req))
	}
	r.waitSink(t, "labelbox", ids, 15*time.Second)
	r.waitSink(t, "label_studio", ids, 15*time.Second)
	const dlqKey = "labelpipe:dlq.scale"
	pollFor(t, "scale's overflow in its DLQ", func() bool { return r.rdb.XLen(t.Context(), dlqKey).Val() > 0 })
	for _, e := range r.rdb.XRange(t.Context(), dlqKey, "-", "+").Val() {
		if s := fmt.Sprint(e.Values); !strings.Contains(s, "sink queue full") || !strings.Contains(s, "max_requests 3") {
			t.Fatalf("dead letter %s: %s; want the full queue and its limit named", e.ID, s)
		}
	}
	resp, err := r.http.Get("http://" + a.admin + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	ready, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(ready), `"degraded"`) || !strings.Contains(string(ready), "sink scale: queue full") {
		t.Fatalf("/readyz while scale's queue is full: %d %s; want 200 degraded naming scale", resp.StatusCode, ready)
	}

	r.scale.SetLatency(0)
	pollFor(t, "scale's queue to drain", func() bool {
		st := r.rdb.XInfoGroups(t.Context(), "labelpipe:sink.scale").Val()
		return len(st) == 1 && st[0].Pending == 0 && st[0].Lag == 0
	})
	r.cli(t, 0, "dlq", "replay", "-c", a.config, "--sink", "scale", "--all")
	r.waitDelivered(t, ids, 30*time.Second)
	r.checkExactlyOnce(t, ids, noRepeat)
}

// ---- the rig: Redis, fake vendors and replica processes ----

type rigOptions struct {
	aof bool
	// dedupeHold is the dedupe stage's hold ("" for its default).
	dedupeHold string
	// redisUser connects as ACL user "labelpipe" instead of the default.
	redisUser bool
	claimIdle time.Duration
	// latency delays every vendor answer.
	latency       time.Duration
	scaleInFlight int
	scaleRetry    string
	scaleBreaker  string
	// scaleQueue is scale's queue: setting ("" for the default).
	scaleQueue string
	// scaleBreakerOf overrides scaleBreaker for a replica, by name.
	scaleBreakerOf map[string]string
}

// lsInFlight is label_studio's max_in_flight in every rig.
const lsInFlight = 4

type rig struct {
	t        *testing.T
	bin      string
	dir      string
	opts     rigOptions
	redis    *redistest.Server
	rdb      *redis.Client // as the default user; reconnects after Restart
	redisURL string
	scale    *vendortest.Scale
	labelbox *vendortest.Labelbox
	ls       *vendortest.LabelStudio
	payload  map[string]any
	http     *http.Client
}

func newRig(t *testing.T, bin string, opts rigOptions) *rig {
	if opts.claimIdle == 0 {
		opts.claimIdle = time.Second
	}
	if opts.scaleInFlight == 0 {
		opts.scaleInFlight = 4
	}
	if opts.scaleRetry == "" {
		opts.scaleRetry = "{max_attempts: 20, initial_interval: 20ms, max_interval: 200ms}"
	}
	if opts.scaleBreaker == "" {
		opts.scaleBreaker = "{consecutive_failures: 50, open_timeout: 1s}"
	}
	var ropts []redistest.Option
	if opts.aof {
		ropts = append(ropts, redistest.WithAOF())
	}
	r := &rig{
		t: t, bin: bin, dir: t.TempDir(), opts: opts,
		redis:    redistest.Start(t, ropts...),
		scale:    vendortest.NewScale(t, scaleKey),
		labelbox: vendortest.NewLabelbox(t, labelboxKey),
		ls:       vendortest.NewLabelStudio(t, lsToken),
		http:     &http.Client{Timeout: 10 * time.Second},
	}
	r.rdb = r.redis.Client(t)
	r.redisURL = r.redis.URL()
	if opts.redisUser {
		err := r.rdb.Do(t.Context(), "ACL", "SETUSER", "labelpipe", "on", ">pw", "~*", "&*", "+@all").Err()
		if err != nil {
			t.Fatal(err)
		}
		r.redisURL = "unix://labelpipe:pw@" + r.redis.Addr()
	}
	for _, v := range []*vendortest.Server{r.scale.Server, r.labelbox.Server, r.ls.Server} {
		v.SetLatency(opts.latency)
	}
	raw, err := configs.Payloads.ReadFile("payloads/issue-crops.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &r.payload); err != nil {
		t.Fatal(err)
	}
	return r
}

// config is vendors.yaml's pipeline against the fakes, with short
// intervals.
func (r *rig) config(name, webhook, admin string) string {
	breaker := r.opts.scaleBreaker
	if b, ok := r.opts.scaleBreakerOf[name]; ok {
		breaker = b
	}
	return fmt.Sprintf(`
server: {addr: %q, path: /webhook, shutdown_timeout: 5s}
admin: {addr: %q}
broker: {type: redis, claim_idle: %s}
redis: {url: %q}
log: {format: json, level: info}
stages:
  - {type: secret, header: X-Aquarium-Secret, secrets: [%q]}
  - {type: schema, schema: issue-exported}
  - {type: dedupe, store: redis, ttl: 1h, on_store_error: reject%s}
sinks:
  - name: labelbox
    type: graphql
    url: %s
    headers: {Authorization: "Bearer %s"}
    query: |
      mutation QueueIssue($projectId: ID!, $name: String!, $globalKeys: [ID!]) {
        project(where: {id: $projectId}) {
          createBatchV2(input: {name: $name, globalKeys: $globalKeys, priority: 5}) {
            batch { id }
            failedDataRowIds
          }
        }
      }
    variables: |
      [.issue.elements[].frame_id] | unique
      | {projectId: %q, name: "aquarium-\($export.issue_id)-\($export.key)-0", globalKeys: .}
    already_done: "already exists"
    retry: {max_attempts: 20, initial_interval: 20ms, max_interval: 200ms}
    breaker: {consecutive_failures: 50, open_timeout: 1s}
  - name: scale
    type: http
    method: POST
    url: %s
    basic_auth: {username: %q, password: ""}
    conflict_is_success: true
    max_in_flight: %d
    body: |
      .issue.elements[] as $el
      | {
          project: "aquarium-relabel",
          batch: "aquarium-\($export.issue_id)",
          instruction: "Relabel the objects flagged in this issue.",
          attachment: $el.frame_data.sensor_data[0].data_urls.image_url,
          unique_id: "\($export.key)-\($el.element_id)",
          geometries: {box: {objects_to_annotate: ([$el.frame_data.label_data[]?.label] | unique)}},
          metadata: {export_id: $export.id, issue_id: $export.issue_id, element_id: $el.element_id}
        }
    retry: %s
    breaker: %s%s
  - name: label_studio
    type: http
    url: %s
    headers: {Authorization: "Token %s"}
    max_in_flight: %d
    body: |
      [.issue.elements[] | {
          data: {image: .frame_data.sensor_data[0].data_urls.image_url},
          meta: {export_id: $export.id, issue_id: $export.issue_id, element_id: .element_id}
        }]
    retry: {max_attempts: 20, initial_interval: 20ms, max_interval: 200ms}
    breaker: {consecutive_failures: 50, open_timeout: 1s}
`, webhook, admin, r.opts.claimIdle, r.redisURL, e2eSecret, r.dedupeHold(),
		r.labelbox.Endpoint(), labelboxKey, lbProject,
		r.scale.TaskURL(), scaleKey, r.opts.scaleInFlight, r.opts.scaleRetry, breaker, r.scaleQueue(),
		r.ls.ImportURL(lsProject), lsToken, lsInFlight)
}

func (r *rig) scaleQueue() string {
	if r.opts.scaleQueue == "" {
		return ""
	}
	return "\n    queue: " + r.opts.scaleQueue
}

func (r *rig) dedupeHold() string {
	if r.opts.dedupeHold == "" {
		return ""
	}
	return ", hold: " + r.opts.dedupeHold
}

// exportBody is issue-crops.json as a distinct issue, so that dedupe keeps
// it apart from the others.
func (r *rig) exportBody(tag string) []byte {
	p := maps.Clone(r.payload)
	issue := maps.Clone(r.payload["issue"].(map[string]any))
	issue["id"] = "issue_e2e_" + tag
	p["issue"] = issue
	b, err := json.Marshal(p)
	if err != nil {
		panic(err)
	}
	return b
}

func (r *rig) post(t *testing.T, rp *replica, body []byte) (int, http.Header, []byte) {
	t.Helper()
	status, hdr, b, err := r.postErr(rp, body)
	if err != nil {
		t.Fatalf("POST to %s: %v", rp.name, err)
	}
	return status, hdr, b
}

func (r *rig) postErr(rp *replica, body []byte) (int, http.Header, []byte, error) {
	req, err := http.NewRequest(http.MethodPost, "http://"+rp.webhook+"/webhook", bytes.NewReader(body))
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Aquarium-Secret", e2eSecret)
	resp, err := r.http.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b, err
}

// issueOf is the Aquarium issue id of an export body: what the vendors'
// records are counted by, (issue, element, sink), whatever export id or
// idempotency key carried them.
func issueOf(t *testing.T, body []byte) string {
	t.Helper()
	id := issueID(body)
	if id == "" {
		t.Fatalf("no issue id in %s", body)
	}
	return id
}

func (r *rig) issueID(body []byte) string { return issueID(body) }

func issueID(body []byte) string {
	var p struct {
		Issue struct {
			ID string `json:"id"`
		} `json:"issue"`
	}
	_ = json.Unmarshal(body, &p)
	return p.Issue.ID
}

func exportID(t *testing.T, body []byte) string {
	t.Helper()
	var a struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(body, &a); err != nil || a.ID == "" {
		t.Fatalf("no export id in %s (%v)", body, err)
	}
	return a.ID
}

// cli runs the labelpipe binary and checks its exit code.
func (r *rig) cli(t *testing.T, wantCode int, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), r.bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("labelpipe %s: %v", strings.Join(args, " "), err)
	}
	if code != wantCode {
		t.Fatalf("labelpipe %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, wantCode, &stdout, &stderr)
	}
	return stdout.String()
}

// ---- what the vendors got ----

// scaleTasks groups Scale's tasks by issue id.
func (r *rig) scaleTasks() map[string][]vendortest.ScaleTask {
	out := map[string][]vendortest.ScaleTask{}
	for _, tk := range r.scale.Tasks() {
		id, _ := tk.Metadata["issue_id"].(string)
		out[id] = append(out[id], tk)
	}
	return out
}

func (r *rig) labelboxBatches() map[string][]vendortest.LabelboxBatch {
	out := map[string][]vendortest.LabelboxBatch{}
	for _, bt := range r.labelbox.Batches(lbProject) {
		// aquarium-<issue>-<export key>-0
		name := strings.TrimSuffix(strings.TrimPrefix(bt.Name, "aquarium-"), "-0")
		id := name[:max(strings.LastIndex(name, "-"), 0)]
		out[id] = append(out[id], bt)
	}
	return out
}

func (r *rig) lsTasks() map[string][]vendortest.LabelStudioTask {
	out := map[string][]vendortest.LabelStudioTask{}
	for _, tk := range r.ls.Tasks(lsProject) {
		id, _ := tk.Meta["issue_id"].(string)
		out[id] = append(out[id], tk)
	}
	return out
}

// missing says which sinks lack which of ids, or "" when none.
func (r *rig) missing(sink string, ids []string) []string {
	var have func(id string) bool
	switch sink {
	case "scale":
		tasks := r.scaleTasks()
		have = func(id string) bool { return len(tasks[id]) >= elementsPerExport }
	case "labelbox":
		batches := r.labelboxBatches()
		have = func(id string) bool { return len(batches[id]) >= 1 }
	case "label_studio":
		tasks := r.lsTasks()
		have = func(id string) bool { return len(tasks[id]) >= elementsPerExport }
	}
	var out []string
	for _, id := range ids {
		if !have(id) {
			out = append(out, id)
		}
	}
	return out
}

// server is the fake vendor behind a sink: scale, labelbox or label_studio.
func (r *rig) server(sink string) *vendortest.Server {
	switch sink {
	case "scale":
		return r.scale.Server
	case "labelbox":
		return r.labelbox.Server
	default:
		return r.ls.Server
	}
}

func (r *rig) waitSink(t *testing.T, sink string, ids []string, within time.Duration) {
	t.Helper()
	v := r.server(sink)
	ctx, cancel := context.WithTimeout(t.Context(), within)
	defer cancel()
	for {
		miss := r.missing(sink, ids)
		if len(miss) == 0 {
			return
		}
		// Wake on the vendor's next request, or re-check now and then.
		wctx, wcancel := context.WithTimeout(ctx, 200*time.Millisecond)
		_ = v.WaitRequests(wctx, v.RequestCount()+1)
		wcancel()
		if ctx.Err() != nil {
			t.Fatalf("%s lacks %d of %d exports after %s (e.g. %s)", sink, len(miss), len(ids), within, miss[0])
		}
	}
}

// waitDelivered waits until every sink has every export.
func (r *rig) waitDelivered(t *testing.T, ids []string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for _, s := range []string{"labelbox", "scale", "label_studio"} {
		r.waitSink(t, s, ids, time.Until(deadline))
	}
}

// How many times the vendors may have been sent a piece of work again,
// per (issue, element, vendor), for checkExactlyOnce.
const (
	// noRepeat: nothing crashed, so the delivered-record per (export,
	// sink, chunk) skips whatever was already delivered and no vendor
	// sees a repeat (README, Delivery guarantees).
	noRepeat = 0
	// killRepeats: one SIGKILL (of a replica, or of Redis) lets a piece
	// of work go out again once: a request the vendor got before its
	// delivered-record was written is delivered again after the restart,
	// or an export stored but neither confirmed to dedupe nor answered is
	// stored again by the caller's retry, under another export id and
	// trace. Two copies of one request under way at once (a redelivery
	// next to its original after the restart) take turns on the
	// ledger's delivery lease, so the second sees the first's record.
	// Scale and Labelbox must answer every repeat "already done" (their
	// idempotency keys derive from the content); Label Studio imports it
	// again. The failure message lists the requests' traces.
	killRepeats = 1
)

// checkExactlyOnce: Scale and Labelbox hold each export exactly once
// (their idempotency keys make a repeat harmless), Label Studio at least
// once, and nothing but these exports reached them. Each piece of work
// was sent again at most maxRepeats times (see noRepeat, killRepeats).
func (r *rig) checkExactlyOnce(t *testing.T, ids []string, maxRepeats int) {
	t.Helper()
	defer r.checkRepeats(t, ids, maxRepeats)
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	for id, tasks := range r.scaleTasks() {
		if !want[id] {
			t.Errorf("scale has tasks of issue %q nobody got a 2xx for", id)
		} else if len(tasks) != elementsPerExport {
			t.Errorf("scale has %d tasks of issue %s, want %d (one per element)", len(tasks), id, elementsPerExport)
		}
	}
	for id, bs := range r.labelboxBatches() {
		if !want[id] {
			t.Errorf("labelbox has a batch of issue %q nobody got a 2xx for", id)
		} else if len(bs) != 1 {
			t.Errorf("labelbox has %d batches of issue %s, want 1", len(bs), id)
		}
	}
	for id := range r.lsTasks() {
		if !want[id] {
			t.Errorf("label studio has tasks of issue %q nobody got a 2xx for", id)
		}
	}
	if len(r.missing("scale", ids))+len(r.missing("labelbox", ids))+len(r.missing("label_studio", ids)) != 0 {
		t.Error("an export is missing at a vendor")
	}
}

// checkRepeats asserts, per (issue, element, vendor), how often the work
// was sent again, from the fakes' counts of every request per key: Scale
// by unique_id (one per element), Labelbox by batch name (one per issue,
// holding all its elements), Label Studio by issue element. A repeat must
// have been answered as one: Scale and Labelbox did the work once and
// answered the rest "already done"; Label Studio, which has no key, made
// a task for each.
func (r *rig) checkRepeats(t *testing.T, ids []string, maxRepeats int) {
	t.Helper()
	total, most := 0, 0
	// needles are what a request's body holds when it carries the key.
	check := func(vendor, what string, needles []string, c vendortest.KeyCount, wantAccepted int) {
		t.Helper()
		total += c.Duplicates
		most = max(most, c.Duplicates)
		if c.Duplicates > 0 {
			t.Logf("%s got %s %d times again: %s", vendor, what, c.Duplicates, r.tracesOf(vendor, needles))
		}
		if c.Duplicates > maxRepeats {
			t.Errorf("%s got %s %d times again (%+v), want at most %d; %s", vendor, what, c.Duplicates, c, maxRepeats, r.tracesOf(vendor, needles))
		}
		if c.Accepted != wantAccepted {
			t.Errorf("%s acted on %s %d times (%+v), want %d", vendor, what, c.Accepted, c, wantAccepted)
		}
	}
	scale, batches, ls := r.scaleTasks(), r.labelboxBatches(), r.lsTasks()
	for _, id := range ids {
		for _, tk := range scale[id] {
			el, _ := tk.Metadata["element_id"].(string)
			check("scale", fmt.Sprintf("issue %s element %s (unique_id %s)", id, el, tk.UniqueID), []string{tk.UniqueID}, r.scale.CountsFor(tk.UniqueID), 1)
		}
		for _, bt := range batches[id] {
			check("labelbox", fmt.Sprintf("issue %s (batch %s)", id, bt.Name), []string{bt.Name}, r.labelbox.CountsFor(bt.Name), 1)
		}
		perElement := map[string]int{} // tasks per element
		for _, tk := range ls[id] {
			el, _ := tk.Meta["element_id"].(string)
			perElement[el]++
		}
		for el, n := range perElement {
			c := r.ls.CountsFor(vendortest.LabelStudioKey(id, el))
			// Every import of the element, the first and each repeat,
			// made a task.
			check("label studio", fmt.Sprintf("issue %s element %s", id, el), []string{`"` + id + `"`, `"` + el + `"`}, c, 1+c.Duplicates)
			if n != c.Accepted {
				t.Errorf("label studio holds %d tasks of issue %s element %s, but counted %d imports of it", n, id, el, c.Accepted)
			}
		}
	}
	t.Logf("%d repeats over %d exports, at most %d of one piece of work (%d allowed)", total, len(ids), most, maxRepeats)
}

// tracesOf lists the traces of a vendor's requests whose body holds
// every needle, to tell a redelivery (one export's trace) from a caller's
// retry (another export's): for logs and failure messages. A Label Studio
// import holding the element among others is listed too.
func (r *rig) tracesOf(vendor string, needles []string) string {
	srv := r.server(vendor)
	var out []string
	for _, req := range srv.Requests() {
		if !slices.ContainsFunc(needles, func(n string) bool { return !bytes.Contains(req.Body, []byte(n)) }) {
			tp := req.Traceparent()
			if len(tp) > 35 {
				tp = tp[3:35]
			}
			out = append(out, fmt.Sprintf("%s %d %s", req.At.Format("15:04:05.000"), req.Status, tp))
		}
	}
	return "requests (time, status, trace): " + strings.Join(out, "; ")
}

// waitPending waits until a consumer of replica holds a message of
// stream in group.
func (r *rig) waitPending(t *testing.T, topic, group, replica string) {
	t.Helper()
	pollFor(t, replica+" holding "+topic+" messages", func() bool {
		p, err := r.rdb.XPending(t.Context(), "labelpipe:"+topic, group).Result()
		if err != nil {
			return false
		}
		for c, n := range p.Consumers {
			if strings.HasPrefix(c, replica+"-") && n > 0 {
				return true
			}
		}
		return false
	})
}

// ---- replicas ----

type replica struct {
	r       *rig
	name    string
	config  string
	webhook string
	admin   string
	logPath string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	// env is added to the next run's environment only (a failpoint).
	env []string
}

// start runs a replica on fresh loopback ports and waits until it is
// ready; env is added to its first run's environment.
func (r *rig) start(name string, env ...string) *replica {
	rp := r.launch(name, env...)
	rp.waitReady(r.t, 30*time.Second)
	return rp
}

// launch runs a replica on fresh loopback ports without waiting for it;
// env is added to its first run's environment.
func (r *rig) launch(name string, env ...string) *replica {
	t := r.t
	rp := &replica{r: r, name: name, webhook: freeAddr(t), admin: freeAddr(t), env: env}
	rp.config = filepath.Join(r.dir, name+".yaml")
	if err := os.WriteFile(rp.config, []byte(r.config(name, rp.webhook, rp.admin)), 0o600); err != nil {
		t.Fatal(err)
	}
	rp.logPath = filepath.Join(r.dir, name+".log")
	t.Cleanup(func() {
		rp.stop()
		if t.Failed() {
			t.Logf("replica %s log (tail):\n%s", name, tail(rp.logPath, 60))
		}
	})
	rp.run()
	return rp
}

func (rp *replica) run() {
	t := rp.r.t
	logf, err := os.OpenFile(rp.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(rp.r.bin, "run", "-c", rp.config)
	// The same id across restarts: the restarted replica takes over what
	// its previous life left pending.
	cmd.Env = append(os.Environ(), "LABELPIPE_REPLICA_ID="+rp.name)
	rp.mu.Lock()
	cmd.Env, rp.env = append(cmd.Env, rp.env...), nil
	rp.mu.Unlock()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		_ = logf.Close()
		close(done)
	}()
	rp.mu.Lock()
	rp.cmd, rp.done = cmd, done
	rp.mu.Unlock()
}

// kill is kill -9.
func (rp *replica) kill() {
	rp.signal(syscall.SIGKILL)
}

// stop is SIGTERM, then SIGKILL after the drain deadline.
func (rp *replica) stop() {
	rp.signal(syscall.SIGTERM)
}

// signal sends sig and waits for the replica to exit, sending SIGKILL if
// it has not within 10s.
func (rp *replica) signal(sig syscall.Signal) {
	rp.mu.Lock()
	cmd, done := rp.cmd, rp.done
	rp.mu.Unlock()
	if cmd == nil {
		return
	}
	testutil.Stop(cmd.Process, done, sig, 10*time.Second)
}

func (rp *replica) restart() {
	rp.kill()
	rp.run()
	rp.waitReady(rp.r.t, 30*time.Second)
}

func (rp *replica) readyz() int {
	resp, err := rp.r.http.Get("http://" + rp.admin + "/readyz")
	if err != nil {
		return 0
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

// waitReady waits until /readyz answers 200.
func (rp *replica) waitReady(t *testing.T, within time.Duration) {
	t.Helper()
	rp.waitReadyz(t, within, "ready", func(code int) bool { return code == http.StatusOK })
}

// waitReadyz polls /readyz every 50ms until ok holds for its status (0:
// no answer). The test fails if the replica exits first or within passes;
// launch's cleanup then prints the replica's log.
func (rp *replica) waitReadyz(t *testing.T, within time.Duration, what string, ok func(code int) bool) {
	t.Helper()
	poll(t, within, 50*time.Millisecond, "replica "+rp.name+" "+what, func() bool {
		if ok(rp.readyz()) {
			return true
		}
		rp.mu.Lock()
		done := rp.done
		rp.mu.Unlock()
		select {
		case <-done:
			t.Fatalf("replica %s exited while waiting until it is %s", rp.name, what)
		default:
		}
		return false
	})
}

// waitBreaker waits until /api/sinks reports sink's breaker in state.
func (rp *replica) waitBreaker(t *testing.T, sink, state string) {
	t.Helper()
	pollFor(t, fmt.Sprintf("%s breaker %s on %s", sink, state, rp.name), func() bool {
		resp, err := rp.r.http.Get("http://" + rp.admin + "/api/sinks")
		if err != nil {
			return false
		}
		defer func() { _ = resp.Body.Close() }()
		var sinks []struct {
			Name    string `json:"name"`
			Breaker string `json:"breaker"`
		}
		if json.NewDecoder(resp.Body).Decode(&sinks) != nil {
			return false
		}
		for _, s := range sinks {
			if s.Name == sink {
				return s.Breaker == state
			}
		}
		return false
	})
}

// delivered sums labelpipe_sink_deliveries_total{outcome="delivered"} of
// the replica's /metrics.
func (rp *replica) delivered(t *testing.T) float64 {
	t.Helper()
	resp, err := rp.r.http.Get("http://" + rp.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "labelpipe_sink_deliveries_total{") && strings.Contains(line, `outcome="delivered"`) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

// ---- load ----

// load posts distinct exports at a steady pace, round-robin over replicas,
// and remembers every export that got a 202.
type load struct {
	r    *rig
	quit chan struct{}
	done chan struct{}

	mu       sync.Mutex
	accepted []string
	by       map[string]int // replica -> 202s
	codes    map[int]int
	changed  chan struct{}
}

var loadSeq struct {
	sync.Mutex
	n int
}

// startLoad posts a new export every period, to targets in turn, and
// retries each like Aquarium behind a load balancer: on a connection error
// or a 5xx it tries the next target, until it gets a 2xx (202, or 200
// duplicate: both count as accepted) or 30s pass. A stop waits for the
// export under way to be answered, so that every export that may have
// been stored is in the accepted list.
func (r *rig) startLoad(every time.Duration, targets ...*replica) *load {
	l := &load{r: r, quit: make(chan struct{}), done: make(chan struct{}), by: map[string]int{}, codes: map[int]int{}, changed: make(chan struct{})}
	go func() {
		defer close(l.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		next := 0
		for {
			select {
			case <-l.quit:
				return
			case <-tick.C:
			}
			loadSeq.Lock()
			loadSeq.n++
			n := loadSeq.n
			loadSeq.Unlock()
			req := r.exportBody(fmt.Sprintf("load-%d", n))
			for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
				rp := targets[next%len(targets)]
				next++
				status, _, _, err := r.postErr(rp, req)
				l.mu.Lock()
				if err == nil {
					l.codes[status]++
				} else {
					l.codes[0]++ // no answer: connection refused or reset
				}
				answered := err == nil && (status == http.StatusAccepted || status == http.StatusOK)
				if answered {
					l.accepted = append(l.accepted, r.issueID(req))
					if status == http.StatusAccepted {
						l.by[rp.name]++
					}
					close(l.changed)
					l.changed = make(chan struct{})
				}
				l.mu.Unlock()
				if answered || (err == nil && status < 500) {
					break
				}
				time.Sleep(20 * time.Millisecond) // a caller's retry delay, not synchronisation
			}
		}
	}()
	return l
}

func (l *load) acceptedCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.accepted)
}

func (l *load) acceptedBy(rp *replica) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.by[rp.name]
}

func (l *load) statuses() map[int]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.codes)
}

func (l *load) waitAccepted(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		l.mu.Lock()
		got, ch := len(l.accepted), l.changed
		l.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("load: %d exports accepted, waited for %d (answers %v)", got, n, l.statuses())
		}
	}
}

// stop ends the load and returns the accepted export ids.
func (l *load) stop() []string {
	select {
	case <-l.quit:
	default:
		close(l.quit)
	}
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.accepted...)
}

// ---- helpers ----

func buildLabelpipe(t *testing.T, tags ...string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "labelpipe")
	args := []string{"build", "-o", bin}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	cmd := exec.CommandContext(t.Context(), "go", append(args, "github.com/labelpipe/labelpipe/cmd/labelpipe")...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// waitUntil blocks until the given time.
func waitUntil(t *testing.T, at time.Time) {
	select {
	case <-time.After(time.Until(at)):
	case <-t.Context().Done():
	}
}

// tail returns the last lines of the file at path, or why it cannot.
func tail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return testutil.Tail(string(b), lines)
}

// hasLine reports whether out has a line with exactly these fields.
func hasLine(out string, fields ...string) bool {
	for line := range strings.Lines(out) {
		if strings.Join(strings.Fields(line), " ") == strings.Join(fields, " ") {
			return true
		}
	}
	return false
}

// pollFor checks cond every 50ms for up to 30s.
func pollFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll(t, 30*time.Second, 50*time.Millisecond, what, cond)
}
