package main

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// benchCommand measures labelpipe end to end on loopback: it starts three
// fake vendors in this process, the daemon (or, with --baseline, also a
// minimal hand-written forwarder) as a child process, drives N exports at
// concurrency C, and reports throughput, latency, lost and duplicated
// deliveries and the child's peak RSS.
func benchCommand(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "serve-baseline" {
		return serveBaseline(args[1:], stderr)
	}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := benchOptions{}
	fs.IntVar(&o.n, "n", 2000, "exports to send")
	fs.IntVar(&o.c, "c", 32, "concurrent senders")
	fs.IntVar(&o.elements, "elements", 10, "elements per export")
	fs.IntVar(&o.exportMB, "export-mb", 0, "send -n exports of about this many MB each instead (overrides -elements)")
	fs.StringVar(&o.broker, "broker", "memory", "broker for the daemon: memory or redis")
	fs.StringVar(&o.redisURL, "redis-url", "", "Redis URL for --broker redis")
	fs.BoolVar(&o.baseline, "baseline", false, "also run the hand-written forwarder and report ratios")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Minute, "give up waiting for deliveries after this long")
	fs.DurationVar(&o.vendorLatency, "vendor-latency", 0, "latency each fake vendor adds to every request")
	fs.IntVar(&o.maxInFlight, "max-in-flight", 8, "the daemon's max_in_flight for each sink")
	fs.IntVar(&o.rounds, "rounds", 1, "run this many rounds (with --baseline, each pairs labelpipe and the forwarder) and report the median ratios")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write the daemon's CPU profile during the run to this file")
	fs.StringVar(&o.memProfile, "memprofile", "", "write the daemon's heap profile (with allocations) after the run to this file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if o.broker == "redis" && o.redisURL == "" {
		fmt.Fprintln(stderr, "labelpipe bench: --broker redis needs --redis-url")
		return 2
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(stderr, "labelpipe bench:", err)
		return 1
	}
	fmt.Fprintf(stdout, "bench: %d exports × %d elements, %d senders, 3 sinks with max_in_flight %d, broker %s\n",
		o.n, o.elementsPerExport(), o.c, o.maxInFlight, o.broker)
	if o.rounds < 1 {
		o.rounds = 1
	}
	code := 0
	var ratios [][4]float64
	for round := 1; round <= o.rounds; round++ {
		if o.rounds > 1 {
			fmt.Fprintf(stdout, "round %d of %d\n", round, o.rounds)
		}
		lp, err := runBench(exe, o, false, stderr)
		if err != nil {
			fmt.Fprintln(stderr, "labelpipe bench:", err)
			return 1
		}
		lp.print(stdout, "labelpipe")
		lp.printRedis(stdout)
		code = max(code, lp.exitCode())
		if !o.baseline {
			continue
		}
		bl, err := runBench(exe, o, true, stderr)
		if err != nil {
			fmt.Fprintln(stderr, "labelpipe bench: baseline:", err)
			return 1
		}
		bl.print(stdout, "forwarder")
		r := [4]float64{lp.e2eRate / bl.e2eRate, ratio(lp.p99, bl.p99), ratio(lp.e2eP99, bl.e2eP99), float64(lp.rssKB) / float64(bl.rssKB)}
		ratios = append(ratios, r)
		printRatios(stdout, "ratio labelpipe/forwarder", r)
	}
	if len(ratios) > 1 {
		// Each round pairs the two under the same machine conditions; the
		// median pair-ratio is steadier than any one round on a noisy host.
		var med [4]float64
		for i := range med {
			col := make([]float64, len(ratios))
			for j, r := range ratios {
				col[j] = r[i]
			}
			slices.Sort(col)
			med[i] = col[len(col)/2]
		}
		printRatios(stdout, fmt.Sprintf("median of %d rounds", len(ratios)), med)
	}
	return code
}

func printRatios(w io.Writer, label string, r [4]float64) {
	fmt.Fprintf(w, "%s: end-to-end throughput %.2fx, accept p99 %.2fx, e2e p99 %.2fx, peak RSS %.2fx\n", label, r[0], r[1], r[2], r[3])
}

type benchOptions struct {
	n, c, elements, exportMB int
	maxInFlight, rounds      int
	broker, redisURL         string
	cpuProfile, memProfile   string
	baseline                 bool
	timeout, vendorLatency   time.Duration
}

func (o benchOptions) elementsPerExport() int {
	if o.exportMB > 0 {
		return o.exportMB * 1024 * 1024 / approxElementBytes
	}
	return o.elements
}

type benchResult struct {
	sent, accepted, failed   int
	lost, duplicates         int
	acceptRate, e2eRate      float64
	p50, p99, e2eP50, e2eP99 time.Duration
	rssKB                    int64
	bodyBytes                int
	cpu                      time.Duration
	redisCmds                map[string]int64
	vendorConns              int64
}

func (r benchResult) print(w io.Writer, name string) {
	fmt.Fprintf(w, "%-10s accepted %d/%d (failed %d), %.0f accepted/s, %.0f exports/s end to end; accept latency p50 %v p99 %v; delivery latency p50 %v p99 %v; lost %d, duplicated %d; peak RSS %.1f MiB (body %.1f MiB); CPU %v (%v per export); %d vendor connections\n",
		name, r.accepted, r.sent, r.failed, r.acceptRate, r.e2eRate, r.p50.Round(time.Microsecond), r.p99.Round(time.Microsecond),
		r.e2eP50.Round(time.Microsecond), r.e2eP99.Round(time.Microsecond), r.lost, r.duplicates, float64(r.rssKB)/1024, float64(r.bodyBytes)/(1<<20),
		r.cpu.Round(time.Millisecond), (r.cpu / time.Duration(max(r.accepted, 1))).Round(time.Microsecond), r.vendorConns)
}

func (r benchResult) printRedis(w io.Writer) {
	if len(r.redisCmds) == 0 {
		return
	}
	var total int64
	names := make([]string, 0, len(r.redisCmds))
	for k, v := range r.redisCmds {
		total += v
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool { return r.redisCmds[names[i]] > r.redisCmds[names[j]] })
	n := float64(max(r.accepted, 1))
	fmt.Fprintf(w, "redis commands per export: %.1f (", float64(total)/n)
	for i, k := range names {
		if i > 0 {
			fmt.Fprint(w, ", ")
		}
		fmt.Fprintf(w, "%s %.1f", k, float64(r.redisCmds[k])/n)
	}
	fmt.Fprintln(w, ")")
}

// redisCommands reads per-command call counts from INFO commandstats.
func redisCommands(c *redis.Client) map[string]int64 {
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		return nil
	}
	out := map[string]int64{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				out[strings.TrimPrefix(name, "cmdstat_")] = n
			}
		}
	}
	// The bench's own INFO and the reset are not the daemon's work.
	delete(out, "info")
	delete(out, "config|resetstat")
	return out
}

func (r benchResult) exitCode() int {
	if r.lost > 0 || r.failed > 0 {
		return 1
	}
	return 0
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func runBench(exe string, o benchOptions, baseline bool, stderr io.Writer) (benchResult, error) {
	var res benchResult
	vendors := newBenchVendors(3, o.n, o.vendorLatency)
	defer vendors.close()
	dir, err := os.MkdirTemp("", "labelpipe-bench-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	addr, admin := freeAddr(), freeAddr()
	var cmd *exec.Cmd
	if baseline {
		cmd = exec.Command(exe, "bench", "serve-baseline", "--addr", addr, "--vendors", strings.Join(vendors.urls(), ","))
	} else {
		cfgPath := filepath.Join(dir, "bench.yaml")
		if err := os.WriteFile(cfgPath, []byte(benchConfig(addr, admin, o, vendors.urls())), 0o600); err != nil {
			return res, err
		}
		cmd = exec.Command(exe, "run", "-c", cfgPath)
	}
	logf, err := os.Create(filepath.Join(dir, "daemon.log"))
	if err != nil {
		return res, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return res, err
	}
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
		}
	}()
	url := "http://" + addr + "/webhook"
	if err := waitUp(addr, 20*time.Second); err != nil {
		logs, _ := os.ReadFile(logf.Name())
		return res, fmt.Errorf("daemon did not come up: %w\n%s", err, logs)
	}
	// Warm up connections and code paths so the run measures steady state.
	warm := makeExport(-1, 2)
	if code, _ := post(http.DefaultClient, url, warm); code/100 != 2 {
		return res, fmt.Errorf("warm-up export answered %d", code)
	}
	if err := vendors.waitIssue(issueID(-1), 30*time.Second); err != nil {
		return res, fmt.Errorf("warm-up export: %w", err)
	}

	var rdb *redis.Client
	if o.broker == "redis" {
		opt, err := redis.ParseURL(o.redisURL)
		if err != nil {
			return res, fmt.Errorf("--redis-url: %w", err)
		}
		rdb = redis.NewClient(opt)
		defer rdb.Close()
		if err := rdb.ConfigResetStat(context.Background()).Err(); err != nil {
			return res, fmt.Errorf("redis CONFIG RESETSTAT: %w", err)
		}
	}
	cpuBefore := cpuTime(cmd.Process.Pid)
	elements := o.elementsPerExport()
	bodies := make(chan int, o.n)
	for i := 0; i < o.n; i++ {
		bodies <- i
	}
	close(bodies)
	var (
		mu        sync.Mutex
		latencies []time.Duration
		accepted  atomic.Int64
		failed    atomic.Int64
		bodySize  atomic.Int64
	)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: o.c}, Timeout: 2 * time.Minute}
	start := time.Now()
	profDone := make(chan struct{})
	if o.cpuProfile != "" && !baseline {
		go func() {
			defer close(profDone)
			if err := fetch("http://"+admin+"/debug/pprof/profile?seconds=5", o.cpuProfile); err != nil {
				fmt.Fprintln(stderr, "cpuprofile:", err)
			}
		}()
	} else {
		close(profDone)
	}
	defer func() { <-profDone }()
	var wg sync.WaitGroup
	for w := 0; w < o.c; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range bodies {
				b := makeExport(i, elements)
				bodySize.Store(int64(len(b)))
				t0 := time.Now()
				vendors.sent(issueID(i), t0)
				code, answer := post(client, url, b)
				d := time.Since(t0)
				if code/100 == 2 {
					accepted.Add(1)
				} else {
					failed.Add(1)
					fmt.Fprintf(stderr, "export %d answered %d: %s\n", i, code, answer)
				}
				mu.Lock()
				latencies = append(latencies, d)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	acceptDur := time.Since(start)
	deliveredAll := vendors.wait(int(accepted.Load()), o.timeout)
	e2eDur := time.Since(start)
	if !deliveredAll {
		e2eDur = o.timeout
	}
	if o.memProfile != "" && !baseline {
		if err := fetch("http://"+admin+"/debug/pprof/heap", o.memProfile); err != nil {
			fmt.Fprintln(stderr, "memprofile:", err)
		}
	}
	if rdb != nil {
		res.redisCmds = redisCommands(rdb)
	}
	res.rssKB = peakRSS(cmd.Process.Pid)
	res.cpu = cpuTime(cmd.Process.Pid) - cpuBefore
	res.sent, res.accepted, res.failed = o.n, int(accepted.Load()), int(failed.Load())
	res.acceptRate = float64(res.accepted) / acceptDur.Seconds()
	res.e2eRate = float64(res.accepted) / e2eDur.Seconds()
	slices.Sort(latencies)
	res.p50, res.p99 = percentile(latencies, 50), percentile(latencies, 99)
	e2e := vendors.latencies()
	slices.Sort(e2e)
	res.e2eP50, res.e2eP99 = percentile(e2e, 50), percentile(e2e, 99)
	res.lost, res.duplicates = vendors.lostAndDuplicated(o.n)
	if res.lost > 0 || res.duplicates > 0 {
		// Say why: the daemon's warnings and errors.
		if logs, err := os.ReadFile(logf.Name()); err == nil {
			fmt.Fprintf(stderr, "daemon log (lost %d, duplicated %d):\n%s\n", res.lost, res.duplicates, tailLines(logs, 40))
		}
	}
	res.bodyBytes = int(bodySize.Load())
	res.vendorConns = vendors.conns.Load()
	return res, nil
}

func post(c *http.Client, url string, body []byte) (int, string) {
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Aquarium-Secret", benchSecret)
	resp, err := c.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

const benchSecret = "bench-secret"

// The three sinks' bodies, the same in the daemon's config (as jq) and in
// the forwarder (as Go), so both do the same work.
var benchBodies = []string{
	`{query: "mutation Batch($p: ID!, $name: String!, $keys: [String!]) { project(where:{id:$p}) { createBatchV2(input:{name:$name, globalKeys:$keys}) { batch { id } } } }", variables: {p: .project, name: ("aq-" + .issue.id), keys: [.issue.elements[].frame_id]}}`,
	`{issue: .issue.id, tasks: [.issue.elements[] | {unique_id: (.element_id), attachment: .frame_data.sensor_data[0].data_urls.image_url, project: .dataset}]}`,
	`{issue: .issue.id, tasks: [.issue.elements[] | {data: {image: .frame_data.sensor_data[0].data_urls.image_url}, meta: {frame_id: .frame_id, element_id: .element_id}}]}`,
}

func benchConfig(addr, admin string, o benchOptions, vendorURLs []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "server: {addr: %q, path: /webhook, max_body_bytes: %d}\nadmin: {addr: %q}\nlog: {level: warn}\n", addr, 256<<20, admin)
	if o.broker == "redis" {
		// A prefix of its own, so streams and keys left by an earlier run
		// on the same Redis are not redelivered into this one.
		prefix := fmt.Sprintf("bench%d:", time.Now().UnixNano())
		fmt.Fprintf(&b, "broker: {type: redis, prefix: %q}\nredis: {url: %q, key_prefix: %q}\n", prefix, o.redisURL, prefix)
	} else {
		b.WriteString("broker: {type: memory}\n")
	}
	b.WriteString("stages:\n  - {type: secret, secrets: [" + benchSecret + "]}\n  - {type: schema, schema: issue-exported}\n  - {type: dedupe, store: memory, ttl: 1h}\nsinks:\n")
	for i, u := range vendorURLs {
		body, _ := json.Marshal(benchBodies[i])
		fmt.Fprintf(&b, "  - {name: vendor%d, type: http, url: %q, max_in_flight: %d, body: %s}\n", i, u, o.maxInFlight, body)
	}
	return b.String()
}

const approxElementBytes = 1100

func issueID(i int) string { return "bench-issue-" + strconv.Itoa(i) }

// makeExport builds a schema-valid issue-exported payload.
func makeExport(i, elements int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, `{"event":"issue-exported","project":"bench","issue":{"id":%q,"elements":[`, issueID(i))
	for e := 0; e < elements; e++ {
		if e > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"dataset":"ds-1","inference_set":"inf-1","issue_name":"bench","element_id":"el-%d-%d","element_type":"frame","frame_id":"fr-%d-%d",`+
			`"frame_data":{"coordinate_frames":[{"coordinate_frame_id":"cam","coordinate_frame_type":"IMAGE"}],"custom_metrics":{},`+
			`"date_captured":"2026-11-27T12:00:00Z","device_id":"dev-1","geo_data":{"lat":37.77,"lon":-122.41},`+
			`"label_data":[{"attributes":{"confidence":0.9},"label":"car","label_coordinate_frame":"cam","label_type":"BBOX_2D","linked_labels":[],"uuid":"lb-%d-%d-a"},`+
			`{"attributes":{"confidence":0.7},"label":"person","label_coorindate_frame":"cam","label_type":"BBOX_2D","linked_labels":[],"uuid":"lb-%d-%d-b"}],`+
			`"sensor_data":[{"coordinate_frame":"cam","data_urls":{"image_url":"https://images.example.com/%d/%d.jpg"},"date_captured":"2026-11-27T12:00:00Z","sensor_id":"cam","sensor_metadata":{},"sensor_type":"IMAGE"}],`+
			`"task_id":"t-%d","weather":"sunny"}}`, i, e, i, e, i, e, i, e, i, e, i)
	}
	b.WriteString("]}}")
	return b.Bytes()
}

// percentile is the p-th percentile (nearest rank) of sorted.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	idx := (len(sorted)*p + 99) / 100
	if idx < 1 {
		idx = 1
	}
	return sorted[idx-1]
}

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitUp(addr string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond) // polling a child process's port
	}
	return errors.New("timed out waiting for " + addr)
}

// peakRSS reads the child's high-water resident set (VmHWM) in KiB.
func peakRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				return n
			}
		}
	}
	return 0
}

// tailLines returns the last n lines of b.
func tailLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// fetch saves a URL's body to a file.
func fetch(url, path string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// cpuTime reads the process's user+system CPU time from /proc.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) start at ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
}

// benchVendors are fake vendors that count, per issue, how many requests
// each one received.
type benchVendors struct {
	servers []*http.Server
	lns     []net.Listener
	latency time.Duration

	mu       sync.Mutex
	counts   []map[string]int
	complete map[string]int // issue → vendors that have it
	done     int
	sentAt   map[string]time.Time
	lat      []time.Duration
	changed  chan struct{}
	conns    atomic.Int64 // connections opened to the vendors
}

func newBenchVendors(n, expected int, latency time.Duration) *benchVendors {
	v := &benchVendors{latency: latency, complete: map[string]int{}, sentAt: map[string]time.Time{}, changed: make(chan struct{}, 1)}
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		idx := i
		v.counts = append(v.counts, map[string]int{})
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { v.serve(idx, w, r) }),
			ConnState: func(_ net.Conn, s http.ConnState) {
				if s == http.StateNew {
					v.conns.Add(1)
				}
			}}
		v.servers, v.lns = append(v.servers, srv), append(v.lns, ln)
		go srv.Serve(ln)
	}
	return v
}

func (v *benchVendors) urls() []string {
	out := make([]string, len(v.lns))
	for i, ln := range v.lns {
		out[i] = "http://" + ln.Addr().String() + "/"
	}
	return out
}

func (v *benchVendors) sent(issue string, t time.Time) {
	v.mu.Lock()
	v.sentAt[issue] = t
	v.mu.Unlock()
}

func (v *benchVendors) serve(idx int, w http.ResponseWriter, r *http.Request) {
	var body struct {
		Issue     string `json:"issue"`
		Variables struct {
			Name string `json:"name"`
		} `json:"variables"`
	}
	raw, err := io.ReadAll(r.Body)
	if err == nil {
		err = json.Unmarshal(raw, &body)
	}
	if err != nil {
		http.Error(w, `{"error":"bad json"}`, http.StatusBadRequest)
		return
	}
	issue := body.Issue
	if issue == "" {
		issue = strings.TrimPrefix(body.Variables.Name, "aq-")
	}
	if v.latency > 0 {
		time.Sleep(v.latency) // the simulated vendor's own processing time
	}
	v.mu.Lock()
	v.counts[idx][issue]++
	if v.counts[idx][issue] == 1 {
		v.complete[issue]++
		if v.complete[issue] == len(v.counts) {
			v.done++
			if t, ok := v.sentAt[issue]; ok {
				v.lat = append(v.lat, time.Since(t))
			}
		}
	}
	v.mu.Unlock()
	select {
	case v.changed <- struct{}{}:
	default:
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte(`{"data":{}}`))
}

// wait blocks until n issues reached every vendor, or timeout.
func (v *benchVendors) wait(n int, timeout time.Duration) bool {
	deadline := time.After(timeout)
	for {
		v.mu.Lock()
		done := v.done
		v.mu.Unlock()
		if done-1 >= n { // -1: the warm-up export
			return true
		}
		select {
		case <-v.changed:
		case <-deadline:
			return false
		}
	}
}

func (v *benchVendors) waitIssue(issue string, timeout time.Duration) error {
	deadline := time.After(timeout)
	for {
		v.mu.Lock()
		c := v.complete[issue]
		v.mu.Unlock()
		if c == len(v.counts) {
			return nil
		}
		select {
		case <-v.changed:
		case <-deadline:
			return fmt.Errorf("%s reached %d of %d vendors", issue, c, len(v.counts))
		}
	}
}

// latencies are, per export, the time from sending the webhook until the
// last vendor received its request.
func (v *benchVendors) latencies() []time.Duration {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]time.Duration(nil), v.lat...)
}

func (v *benchVendors) lostAndDuplicated(n int) (lost, dup int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, c := range v.counts {
		for i := 0; i < n; i++ {
			switch k := c[issueID(i)]; {
			case k == 0:
				lost++
			case k > 1:
				dup += k - 1
			}
		}
	}
	return lost, dup
}

func (v *benchVendors) close() {
	for _, s := range v.servers {
		_ = s.Close()
	}
}

// serveBaseline is the minimal hand-written forwarder labelpipe is compared
// with: check the secret, decode, build the three bodies, POST them
// concurrently, answer. No durability, no retries, no tracing.
func serveBaseline(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve-baseline", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8081", "listen address")
	vendorList := fs.String("vendors", "", "comma-separated vendor URLs")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	urls := strings.Split(*vendorList, ",")
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 30 * time.Second}
	h := func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("X-Aquarium-Secret")), []byte(benchSecret)) != 1 {
			http.Error(w, `{"error":"bad secret"}`, http.StatusUnauthorized)
			return
		}
		var p baselinePayload
		if err := json.NewDecoder(r.Body).Decode(&p); err != nil {
			http.Error(w, `{"error":"bad json"}`, http.StatusBadRequest)
			return
		}
		bodies := p.bodies()
		var wg sync.WaitGroup
		var failed atomic.Bool
		for i, u := range urls {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := client.Post(u, "application/json", bytes.NewReader(bodies[i]))
				if err != nil {
					failed.Store(true)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode/100 != 2 {
					failed.Store(true)
				}
			}()
		}
		wg.Wait()
		if failed.Load() {
			http.Error(w, `{"error":"vendor failed"}`, http.StatusBadGateway)
			return
		}
		w.WriteHeader(http.StatusOK)
	}
	srv := &http.Server{Addr: *addr, Handler: http.HandlerFunc(h)}
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}

type baselinePayload struct {
	Project string `json:"project"`
	Issue   struct {
		ID       string `json:"id"`
		Elements []struct {
			Dataset   string `json:"dataset"`
			ElementID string `json:"element_id"`
			FrameID   string `json:"frame_id"`
			FrameData struct {
				SensorData []struct {
					DataURLs struct {
						ImageURL string `json:"image_url"`
					} `json:"data_urls"`
				} `json:"sensor_data"`
			} `json:"frame_data"`
		} `json:"elements"`
	} `json:"issue"`
}

func (p *baselinePayload) bodies() [][]byte {
	image := func(i int) string {
		if sd := p.Issue.Elements[i].FrameData.SensorData; len(sd) > 0 {
			return sd[0].DataURLs.ImageURL
		}
		return ""
	}
	var keys []string
	var scale, ls []map[string]any
	for i, e := range p.Issue.Elements {
		keys = append(keys, e.FrameID)
		scale = append(scale, map[string]any{"unique_id": e.ElementID, "attachment": image(i), "project": e.Dataset})
		ls = append(ls, map[string]any{"data": map[string]any{"image": image(i)}, "meta": map[string]any{"frame_id": e.FrameID, "element_id": e.ElementID}})
	}
	lb, _ := json.Marshal(map[string]any{"query": "mutation Batch", "variables": map[string]any{"p": p.Project, "name": "aq-" + p.Issue.ID, "keys": keys}})
	sc, _ := json.Marshal(map[string]any{"issue": p.Issue.ID, "tasks": scale})
	lsb, _ := json.Marshal(map[string]any{"issue": p.Issue.ID, "tasks": ls})
	return [][]byte{lb, sc, lsb}
}
