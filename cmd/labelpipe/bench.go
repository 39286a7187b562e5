package main

import (
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/labelpipe/labelpipe/internal/loadtest"
)

// benchOptions are bench's flags.
type benchOptions struct {
	o        loadtest.Options
	baseline bool
	rounds   int
	fault    string
}

// benchBrokers are the brokers bench can run the daemon on.
var benchBrokers = []string{"memory", "redis"}

func newBenchCmd() *cobra.Command {
	var b benchOptions
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load-test labelpipe on loopback against fake vendors",
		Long: `Measure labelpipe end to end on loopback: start three fake vendors in
this process and the daemon (with --baseline, also a minimal hand-written
forwarder) as a child process, drive -n exports from --concurrency senders,
and report throughput, latency percentiles, lost and duplicated deliveries
and the child's peak RSS. The exit code is 1 if any export was lost or
failed.`,
		Example: `  labelpipe bench -n 2000 --concurrency 32
  labelpipe bench -n 2000 -C 32 --baseline --rounds 3
  labelpipe bench --broker redis --redis-url redis://127.0.0.1:6379/15
  labelpipe bench -C 4 --fault down=5s`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := b.check(); err != nil {
				return err
			}
			return code(benchCommand(b, cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	o := &b.o
	fs := cmd.Flags()
	fs.IntVarP(&o.N, "exports", "n", 2000, "exports to send (≥ 1)")
	fs.IntVarP(&o.Concurrency, "concurrency", "C", 32, "concurrent senders (≥ 1)")
	fs.IntVar(&o.Elements, "elements", 10, "elements per export (≥ 1)")
	fs.IntVar(&o.ExportMB, "export-mb", 0, "send -n exports of about this many MB each instead (overrides --elements; ≥ 0)")
	fs.StringVar(&o.Broker, "broker", "memory", "broker for the daemon: memory or redis")
	fs.StringVar(&o.RedisURL, "redis-url", "", "Redis URL for --broker redis")
	fs.BoolVar(&b.baseline, "baseline", false, "also run the hand-written forwarder and report ratios")
	fs.DurationVar(&o.Timeout, "timeout", 5*time.Minute, "give up waiting for deliveries after this long (> 0)")
	fs.DurationVar(&o.VendorLatency, "vendor-latency", 0, "latency each fake vendor adds to every request (≥ 0)")
	fs.IntVar(&o.MaxInFlight, "max-in-flight", 8, "the daemon's max_in_flight for each sink (≥ 1)")
	fs.BoolVar(&o.NoHistory, "no-history", false, "turn the daemon's export history off (history.enabled: false), to measure its cost")
	fs.StringVar(&b.fault, "fault", "", "the first vendor misbehaves once the load starts: down=DURATION (503s), hang, or slow=DURATION (per request)")
	fs.IntVar(&b.rounds, "rounds", 1, "run this many rounds (with --baseline, each pairs labelpipe and the forwarder) and report the median ratios (≥ 1)")
	fs.StringVar(&o.CPUProfile, "cpuprofile", "", "write the daemon's CPU profile during the run to this file")
	fs.StringVar(&o.MemProfile, "memprofile", "", "write the daemon's heap profile (with allocations) after the run to this file")
	_ = cmd.RegisterFlagCompletionFunc("broker", cobra.FixedCompletions(benchBrokers, cobra.ShellCompDirectiveNoFileComp))

	// The forwarder is this binary too: loadtest.Run starts it as
	// `labelpipe bench serve-baseline ...`, with flags of its own.
	cmd.AddCommand(&cobra.Command{
		Use:                "serve-baseline",
		Short:              "the hand-written forwarder bench compares against (started by bench)",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return code(loadtest.ServeBaseline(args, cmd.ErrOrStderr()))
		},
	})
	return cmd
}

// check range-checks every flag: a value out of range is a usage error.
func (b *benchOptions) check() error {
	o := &b.o
	for _, c := range []struct {
		name string
		v    int
		min  int
	}{{"-n/--exports", o.N, 1}, {"--concurrency", o.Concurrency, 1}, {"--elements", o.Elements, 1},
		{"--export-mb", o.ExportMB, 0}, {"--max-in-flight", o.MaxInFlight, 1}, {"--rounds", b.rounds, 1}} {
		if c.v < c.min {
			return usageErrorf("bench %s %d: must be ≥ %d", c.name, c.v, c.min)
		}
	}
	if o.Timeout <= 0 {
		return usageErrorf("bench --timeout %s: must be > 0", o.Timeout)
	}
	if o.VendorLatency < 0 {
		return usageErrorf("bench --vendor-latency %s: must be ≥ 0", o.VendorLatency)
	}
	if !slices.Contains(benchBrokers, o.Broker) {
		return usageErrorf("bench --broker %q: unknown broker (want %s)", o.Broker, strings.Join(benchBrokers, " or "))
	}
	if o.Broker == "redis" && o.RedisURL == "" {
		return usageErrorf("bench --broker redis needs --redis-url")
	}
	if o.Broker != "redis" && o.RedisURL != "" {
		return usageErrorf("bench --redis-url is for --broker redis")
	}
	var err error
	if o.Fault, err = loadtest.ParseFault(b.fault); err != nil {
		return usageErrorf("bench --fault: %v", err)
	}
	return nil
}

// benchCommand measures labelpipe end to end on loopback: it starts three
// fake vendors in this process, the daemon (or, with --baseline, also a
// minimal hand-written forwarder) as a child process, drives N exports at
// concurrency C, and reports throughput, latency, lost and duplicated
// deliveries and the child's peak RSS.
func benchCommand(b benchOptions, stdout, stderr io.Writer) int {
	o, baseline, rounds := b.o, b.baseline, b.rounds
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(stderr, "labelpipe bench:", err)
		return 1
	}
	fmt.Fprintf(stdout, "bench: %d exports × %d elements, %d senders, 3 sinks with max_in_flight %d, broker %s\n",
		o.N, o.ElementsPerExport(), o.Concurrency, o.MaxInFlight, o.Broker)
	code := 0
	var ratios [][4]float64
	for round := 1; round <= rounds; round++ {
		if rounds > 1 {
			fmt.Fprintf(stdout, "round %d of %d\n", round, rounds)
		}
		lp, err := loadtest.Run(exe, o, false, stderr)
		if err != nil {
			fmt.Fprintln(stderr, "labelpipe bench:", err)
			return 1
		}
		printResult(stdout, "labelpipe", lp)
		printRedisCommands(stdout, lp)
		code = max(code, benchExitCode(lp))
		if !baseline {
			continue
		}
		bl, err := loadtest.Run(exe, o, true, stderr)
		if err != nil {
			fmt.Fprintln(stderr, "labelpipe bench: baseline:", err)
			return 1
		}
		printResult(stdout, "forwarder", bl)
		r := [4]float64{lp.EndToEndRate / bl.EndToEndRate, ratio(lp.AcceptP99, bl.AcceptP99), ratio(lp.DeliveryP99, bl.DeliveryP99), float64(lp.PeakRSSKiB) / float64(bl.PeakRSSKiB)}
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

// printRatios prints one line of labelpipe/forwarder ratios: end-to-end
// throughput, accept p99, delivery p99 and peak RSS, in that order in r.
func printRatios(w io.Writer, label string, r [4]float64) {
	fmt.Fprintf(w, "%s: end-to-end throughput %.2fx, accept p99 %.2fx, e2e p99 %.2fx, peak RSS %.2fx\n", label, r[0], r[1], r[2], r[3])
}

// printResult prints one run's measurements on one line headed by name.
func printResult(w io.Writer, name string, r loadtest.Result) {
	defer func() {
		if r.HealthyP99 > 0 {
			fmt.Fprintf(w, "%-10s healthy vendors (all but the faulty one): delivery latency p50 %v p99 %v\n",
				name, r.HealthyP50.Round(time.Microsecond), r.HealthyP99.Round(time.Microsecond))
		}
	}()
	fmt.Fprintf(w, "%-10s accepted %d/%d (failed %d), %.0f accepted/s, %.0f exports/s end to end; accept latency p50 %v p99 %v; delivery latency p50 %v p99 %v; lost %d, duplicated %d; peak RSS %.1f MiB (body %.1f MiB); CPU %v (%v per export); %d vendor connections\n",
		name, r.Accepted, r.Sent, r.Failed, r.AcceptRate, r.EndToEndRate, r.AcceptP50.Round(time.Microsecond), r.AcceptP99.Round(time.Microsecond),
		r.DeliveryP50.Round(time.Microsecond), r.DeliveryP99.Round(time.Microsecond), r.Lost, r.Duplicates, float64(r.PeakRSSKiB)/1024, float64(r.ExportBytes)/(1<<20),
		r.CPU.Round(time.Millisecond), (r.CPU / time.Duration(max(r.Accepted, 1))).Round(time.Microsecond), r.VendorConns)
}

// printRedisCommands prints the Redis commands per accepted export, most
// frequent first; nothing if the run did not use Redis.
func printRedisCommands(w io.Writer, r loadtest.Result) {
	if len(r.RedisCommands) == 0 {
		return
	}
	var total int64
	names := make([]string, 0, len(r.RedisCommands))
	for k, v := range r.RedisCommands {
		total += v
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool { return r.RedisCommands[names[i]] > r.RedisCommands[names[j]] })
	n := float64(max(r.Accepted, 1))
	fmt.Fprintf(w, "redis commands per export: %.1f (", float64(total)/n)
	for i, k := range names {
		if i > 0 {
			fmt.Fprint(w, ", ")
		}
		fmt.Fprintf(w, "%s %.1f", k, float64(r.RedisCommands[k])/n)
	}
	fmt.Fprintln(w, ")")
	if r.RedisReads > 0 {
		// Round trips, not commands, are most of Redis's CPU per export.
		fmt.Fprintf(w, "redis round trips per export: %.1f (client reads Redis processed)\n", float64(r.RedisReads)/n)
	}
}

// benchExitCode is 1 if the run lost or failed any export, else 0.
func benchExitCode(r loadtest.Result) int {
	if r.Lost > 0 || r.Failed > 0 {
		return 1
	}
	return 0
}

// ratio is a/b, or 0 if b is 0.
func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}
