package loadtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Options configure one run.
type Options struct {
	// N is the number of exports to send, not counting the warm-up export.
	N int
	// Concurrency is the number of senders posting exports at the same time.
	Concurrency int
	// Elements is the number of elements in each export, unless ExportMB is set.
	Elements int
	// ExportMB, if positive, sizes each export to about this many MiB
	// instead of Elements.
	ExportMB int
	// Broker is the daemon's broker type: "memory" or "redis".
	Broker string
	// RedisURL is the Redis the daemon uses when Broker is "redis"; Run also
	// reads its per-command call counts.
	RedisURL string
	// MaxInFlight is the daemon's max_in_flight for each of its three sinks.
	MaxInFlight int
	// NoHistory turns the daemon's export history off (history.enabled),
	// to measure what it costs.
	NoHistory bool
	// Timeout bounds the wait, after the last export was answered, for
	// every accepted export to reach every vendor.
	Timeout time.Duration
	// VendorLatency is the time each fake vendor spends on every request
	// before it answers.
	VendorLatency time.Duration
	// Fault is how the first vendor misbehaves once the load starts.
	Fault Fault
	// CPUProfile, if set, is the file to write a 5-second CPU profile of the
	// daemon to, taken from the start of sending. The forwarder is not
	// profiled.
	CPUProfile string
	// MemProfile, if set, is the file to write the daemon's heap profile
	// (with allocations) to after delivery. The forwarder is not profiled.
	MemProfile string
}

// ElementsPerExport is the number of elements in each export Run sends:
// Elements, or as many as make about ExportMB MiB if ExportMB is positive.
func (o Options) ElementsPerExport() int {
	if o.ExportMB > 0 {
		return o.ExportMB * 1024 * 1024 / approxElementBytes
	}
	return o.Elements
}

// Result is what one run measured.
type Result struct {
	// Sent is the number of exports posted (Options.N).
	Sent int
	// Accepted is the number of exports answered with a 2xx status.
	Accepted int
	// Failed is the number of exports answered otherwise or not at all.
	Failed int
	// Lost is, summed over the vendors, the number of sent exports a vendor
	// never received.
	Lost int
	// Duplicates is, summed over the vendors, the number of requests for an
	// export beyond the first one.
	Duplicates int
	// AcceptRate is accepted exports per second, from the first post until
	// the last answer.
	AcceptRate float64
	// EndToEndRate is accepted exports per second, from the first post until
	// every accepted export reached every vendor, or until Options.Timeout
	// ran out.
	EndToEndRate float64
	// AcceptP50 and AcceptP99 are percentiles of the time from posting an
	// export until its answer.
	AcceptP50, AcceptP99 time.Duration
	// DeliveryP50 and DeliveryP99 are percentiles of the time from posting
	// an export until the last vendor received it.
	DeliveryP50, DeliveryP99 time.Duration
	// HealthyP50 and HealthyP99 are the same to every vendor but the
	// faulty one, with Options.Fault set.
	HealthyP50, HealthyP99 time.Duration
	// PeakRSSKiB is the child process's high-water resident set size in KiB
	// (VmHWM), or 0 if it could not be read.
	PeakRSSKiB int64
	// ExportBytes is the size in bytes of one export's body.
	ExportBytes int
	// CPU is the user plus system CPU time the child process spent from the
	// first post until delivery ended, in steps of 10ms.
	CPU time.Duration
	// RedisCommands is the number of calls per Redis command name during the
	// run (lower-case, as INFO commandstats names them); nil unless the
	// broker is "redis".
	RedisCommands map[string]int64
	// RedisReads is the client reads Redis processed during the run
	// (INFO stats total_reads_processed), about one per round trip; 0
	// unless the broker is "redis".
	RedisReads int64
	// VendorConns is the number of connections opened to the fake vendors,
	// the warm-up included.
	VendorConns int64
}

// Run performs one run against three fresh fake vendors and returns what it
// measured. exe is a labelpipe binary: Run starts `exe run -c CONFIG`, or,
// if baseline is set, the forwarder as `exe bench serve-baseline --addr ADDR
// --vendors URLS`, which must call ServeBaseline. Failed exports and the
// daemon's log tail when exports were lost or duplicated are written to
// stderr. Run returns an error only if the run could not be carried out; a
// run that lost exports is a Result, not an error.
func Run(exe string, o Options, baseline bool, stderr io.Writer) (Result, error) {
	var res Result
	vendors := newFakeVendors(3, o.VendorLatency, o.Fault)
	defer vendors.close()
	dir, err := os.MkdirTemp("", "labelpipe-bench-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	addr, admin := freeAddr(), freeAddr()
	// A Redis prefix of its own, so streams and keys left by an earlier
	// run on the same Redis are not redelivered into this one.
	prefix := fmt.Sprintf("bench%d:", time.Now().UnixNano())
	if o.Broker == "redis" && !baseline {
		// Deferred before the daemon starts, so it runs after the daemon
		// stops: each run leaves Redis as it found it. Leftovers would
		// grow Redis's memory run after run, and with it its CPU per
		// command, so that later runs measured slower than earlier ones.
		defer dropKeys(o.RedisURL, prefix)
	}
	var cmd *exec.Cmd
	if baseline {
		cmd = exec.Command(exe, "bench", "serve-baseline", "--addr", addr, "--vendors", strings.Join(vendors.urls(), ","))
	} else {
		cfgPath := filepath.Join(dir, "bench.yaml")
		if err := os.WriteFile(cfgPath, []byte(daemonConfig(addr, admin, prefix, o, vendors.urls())), 0o600); err != nil {
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
	if o.Broker == "redis" {
		opt, err := redis.ParseURL(o.RedisURL)
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
	elements := o.ElementsPerExport()
	bodies := make(chan int, o.N)
	for i := 0; i < o.N; i++ {
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
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: o.Concurrency}, Timeout: 2 * time.Minute}
	start := time.Now()
	vendors.startFault()
	profDone := make(chan struct{})
	if o.CPUProfile != "" && !baseline {
		go func() {
			defer close(profDone)
			if err := fetch("http://"+admin+"/debug/pprof/profile?seconds=5", o.CPUProfile); err != nil {
				fmt.Fprintln(stderr, "cpuprofile:", err)
			}
		}()
	} else {
		close(profDone)
	}
	defer func() { <-profDone }()
	var wg sync.WaitGroup
	for w := 0; w < o.Concurrency; w++ {
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
	deliveredAll := vendors.wait(int(accepted.Load()), o.Timeout)
	e2eDur := time.Since(start)
	if !deliveredAll {
		e2eDur = o.Timeout
	}
	if o.MemProfile != "" && !baseline {
		if err := fetch("http://"+admin+"/debug/pprof/heap", o.MemProfile); err != nil {
			fmt.Fprintln(stderr, "memprofile:", err)
		}
	}
	if rdb != nil {
		res.RedisCommands = redisCommands(rdb)
		res.RedisReads = redisReads(rdb)
	}
	res.PeakRSSKiB = peakRSS(cmd.Process.Pid)
	res.CPU = cpuTime(cmd.Process.Pid) - cpuBefore
	res.Sent, res.Accepted, res.Failed = o.N, int(accepted.Load()), int(failed.Load())
	res.AcceptRate = float64(res.Accepted) / acceptDur.Seconds()
	res.EndToEndRate = float64(res.Accepted) / e2eDur.Seconds()
	slices.Sort(latencies)
	res.AcceptP50, res.AcceptP99 = percentile(latencies, 50), percentile(latencies, 99)
	e2e := vendors.latencies()
	slices.Sort(e2e)
	res.DeliveryP50, res.DeliveryP99 = percentile(e2e, 50), percentile(e2e, 99)
	healthy := vendors.healthyLatencies()
	slices.Sort(healthy)
	res.HealthyP50, res.HealthyP99 = percentile(healthy, 50), percentile(healthy, 99)
	res.Lost, res.Duplicates = vendors.lostAndDuplicated(o.N)
	if res.Lost > 0 || res.Duplicates > 0 {
		// Say why: the daemon's warnings and errors.
		if logs, err := os.ReadFile(logf.Name()); err == nil {
			fmt.Fprintf(stderr, "daemon log (lost %d, duplicated %d):\n%s\n", res.Lost, res.Duplicates, tailLines(logs, 40))
		}
	}
	res.ExportBytes = int(bodySize.Load())
	res.VendorConns = vendors.conns.Load()
	return res, nil
}

// post sends one export the way Aquarium does and returns the status code
// (0 if there was no answer) and the answer's body or the error.
func post(c *http.Client, url string, body []byte) (int, string) {
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Aquarium-Secret", secret)
	resp, err := c.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// fetch saves a URL's body to a file.
func fetch(url, path string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		// Never save an error page as if it were a profile.
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(b))
	}
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
