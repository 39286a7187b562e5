package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/backend"
	redisbackend "github.com/labelpipe/labelpipe/pipeline/backend/redis"
)

const dlqLong = `Inspect and replay the dead letters a running daemon keeps in the Redis of
its config (broker.type redis). replay puts each request back on its sink's
queue, where the daemon delivers it again; purge deletes entries for good.
Without --sink, list shows how many entries each sink has.

Dead letters of the memory broker live inside the daemon: use its admin API
(GET /api/dlq, POST /api/dlq/{sink}/replay, DELETE /api/dlq/{sink}).`

// progressMin is the smallest replay that gets a progress bar.
const progressMin = 20

// dlqOptions are the flags of the dlq subcommands.
type dlqOptions struct {
	config, sink string
	ids          []string
	all          bool
	limit        int
	json         bool
}

func newDLQCmd() *cobra.Command {
	var o dlqOptions
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "Inspect and replay dead letters in Redis",
		Long:  dlqLong,
		Example: `  labelpipe dlq list -c configs/vendors.yaml
  labelpipe dlq list -c configs/vendors.yaml --sink scale --json
  labelpipe dlq show -c configs/vendors.yaml --sink scale --id 1733140000000-0
  labelpipe dlq replay -c configs/vendors.yaml --sink scale --all
  labelpipe dlq purge -c configs/vendors.yaml --sink scale --id 1733140000000-0`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usageErrorf("dlq needs a subcommand: list, show, replay or purge")
		},
	}
	pf := cmd.PersistentFlags()
	addConfigFlag(pf, cmd, &o.config)
	pf.StringVar(&o.sink, "sink", "", "sink name")
	sub := func(name, short, example string, extra func(*cobra.Command)) *cobra.Command {
		c := &cobra.Command{
			Use:     name,
			Short:   short,
			Example: example,
			Args:    noArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				if err := o.check(name); err != nil {
					return err
				}
				return code(dlqCommand(name, o, cmd.OutOrStdout(), cmd.ErrOrStderr()))
			},
		}
		if extra != nil {
			extra(c)
		}
		return c
	}
	ids := func(c *cobra.Command) {
		c.Flags().StringArrayVar(&o.ids, "id", nil, "entry id (repeatable)")
	}
	all := func(c *cobra.Command) {
		ids(c)
		c.Flags().BoolVar(&o.all, "all", false, "every entry of the sink")
	}
	cmd.AddCommand(
		sub("list", "List each sink's dead-letter count, or one sink's entries", "  labelpipe dlq list -c configs/vendors.yaml --sink scale --limit 10", func(c *cobra.Command) {
			c.Flags().IntVar(&o.limit, "limit", 100, "list at most this many entries (0: all)")
			c.Flags().BoolVar(&o.json, "json", false, "list as JSON lines")
		}),
		sub("show", "Show one entry with the request it holds and the vendor's answer", "  labelpipe dlq show -c configs/vendors.yaml --sink scale --id ID", ids),
		sub("replay", "Put entries back on their sink's queue", "  labelpipe dlq replay -c configs/vendors.yaml --sink scale --all", all),
		sub("purge", "Delete entries for good", "  labelpipe dlq purge -c configs/vendors.yaml --sink scale --id ID", all),
	)
	return cmd
}

// check checks the flags of subcommand sub; a wrong combination is a
// usage error.
func (o *dlqOptions) check(sub string) error {
	for _, id := range o.ids {
		if id == "" {
			return usageErrorf("dlq %s: empty --id", sub)
		}
	}
	if o.limit < 0 {
		return usageErrorf("dlq list --limit %d: must be ≥ 0 (0: all)", o.limit)
	}
	switch sub {
	case "show":
		if o.sink == "" || len(o.ids) != 1 {
			return usageErrorf("dlq show needs --sink and one --id")
		}
	case "replay", "purge":
		if o.sink == "" || (len(o.ids) == 0) == !o.all {
			return usageErrorf("dlq %s needs --sink and either --id (repeatable) or --all", sub)
		}
	}
	return nil
}

// dlqCommand runs `labelpipe dlq SUBCOMMAND`.
func dlqCommand(sub string, o dlqOptions, stdout, stderr io.Writer) int {
	cfgPath, sink, ids, limit, asJSON := &o.config, &o.sink, o.ids, &o.limit, &o.json
	// Vendor keys are not needed to reach the DLQ.
	cfg, err := loadConfig(*cfgPath, stderr, pipeline.AllowUnsetEnv())
	if err != nil {
		return exitFailed
	}
	if cfg.Broker.Type != redisbackend.Kind || cfg.Redis.URL == "" {
		fmt.Fprintf(stderr, "labelpipe dlq: %s uses broker %q; dead letters of the memory broker live inside the daemon, use its admin API (GET /api/dlq, POST /api/dlq/{sink}/replay, DELETE /api/dlq/{sink}; with Authorization: Bearer <admin.token> when one is set)\n",
			*cfgPath, cfg.Broker.Type)
		return 1
	}
	names := make([]string, len(cfg.Sinks))
	for i, s := range cfg.Sinks {
		names[i] = s.Name
	}
	if *sink != "" && !slices.Contains(names, *sink) {
		// A removed sink can still be listed and purged, but a replay
		// would queue requests nobody consumes.
		if sub == "replay" {
			fmt.Fprintf(stderr, "labelpipe dlq replay: %s has no sink %q (sinks: %s)\n", *cfgPath, *sink, strings.Join(names, ", "))
			return 1
		}
		fmt.Fprintf(stderr, "labelpipe dlq: note: %s has no sink %q\n", *cfgPath, *sink)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	client, err := redisbackend.NewClient(ctx, cfg.Redis, nil, nil, nil)
	if err != nil {
		fmt.Fprintln(stderr, "labelpipe dlq:", err)
		return 1
	}
	defer func() { _ = client.Close() }()
	// The same key prefix the daemon's DLQ uses (redisbackend.Type).
	dlq := redisbackend.NewDLQ(client, cfg.Redis.KeyPrefix)

	switch sub {
	case "list":
		err = dlqList(ctx, dlq, *sink, names, *limit, *asJSON, stdout)
	case "show":
		err = dlqShow(ctx, dlq, *sink, ids[0], stdout)
	case "purge":
		var taken []*backend.DeadLetter
		taken, err = dlq.Take(ctx, *sink, ids)
		if err == nil {
			fmt.Fprintf(stdout, "purged %d entries from %s\n", len(taken), *sink)
			err = missing(ids, taken)
		}
	case "replay":
		err = dlqReplay(ctx, cfg, client, dlq, *sink, ids, stdout, stderr)
	}
	if err != nil {
		fmt.Fprintln(stderr, "labelpipe dlq:", err)
		return 1
	}
	return 0
}

func dlqList(ctx context.Context, dlq backend.DLQ, sink string, names []string, limit int, asJSON bool, stdout io.Writer) error {
	if sink == "" {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SINK\tENTRIES")
		for _, n := range names {
			l, err := dlq.Len(ctx, n)
			if err != nil {
				return err
			}
			fmt.Fprintf(tw, "%s\t%d\n", n, l)
		}
		return tw.Flush()
	}
	entries, err := dlq.List(ctx, sink, limit)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		for _, d := range entries {
			if err := enc.Encode(d); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tEXPORT\tCHUNK\tSTATUS\tATTEMPTS\tFAILED AT\tERROR")
	for _, d := range entries {
		status := "-"
		if d.Status != 0 {
			status = fmt.Sprint(d.Status)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%s\t%s\n", d.ID, d.ExportID, d.Chunk, status, d.Attempts, d.FailedAt, clip(d.Error, 80))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if total, err := dlq.Len(ctx, sink); err == nil && total > int64(len(entries)) {
		fmt.Fprintf(stdout, "(%d of %d entries; --limit 0 for all)\n", len(entries), total)
	}
	return nil
}

// dlqShow prints one entry with the request it holds.
func dlqShow(ctx context.Context, dlq backend.DLQ, sink, id string, stdout io.Writer) error {
	entries, err := dlq.List(ctx, sink, 0)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(entries, func(d *backend.DeadLetter) bool { return d.ID == id })
	if i < 0 {
		return fmt.Errorf("%s has no dead letter %s", sink, id)
	}
	d := entries[i]
	out := struct {
		*backend.DeadLetter
		Message any `json:"message,omitempty"`
	}{DeadLetter: d}
	if m := d.Message; m != nil {
		msg := map[string]any{"uuid": m.UUID, "metadata": m.Metadata}
		// The payload is shown as JSON when it is JSON.
		switch {
		case json.Valid(m.Payload):
			msg["payload"] = json.RawMessage(m.Payload)
		case utf8.Valid(m.Payload):
			msg["payload"] = string(m.Payload)
		default:
			msg["payload_base64"] = base64.StdEncoding.EncodeToString(m.Payload)
		}
		out.Message = msg
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// dlqReplay moves entries back to their sink's queue through the redis
// broker, as the daemon's own replay does.
func dlqReplay(ctx context.Context, cfg *pipeline.Config, client redis.UniversalClient, dlq backend.DLQ, sink string, ids []string, stdout, stderr io.Writer) error {
	total := int64(len(ids))
	if total == 0 {
		n, err := dlq.Len(ctx, sink)
		if err != nil {
			return err
		}
		total = n
	}
	host, _ := os.Hostname()
	broker, err := redisbackend.NewBroker(client, cfg.Broker, fmt.Sprintf("dlq-cli-%s-%d", host, os.Getpid()), nil)
	if err != nil {
		return err
	}
	defer func() { _ = broker.Close() }()

	var bar *progressBar
	if total >= progressMin {
		bar = newProgressBar(stderr, total, "replaying "+sink)
	}
	n, err := pipeline.ReplayDeadLetters(ctx, dlq, broker, sink, ids, func(done int) {
		if bar != nil {
			bar.set(int64(done))
		}
	})
	if bar != nil {
		bar.finish()
	}
	fmt.Fprintf(stdout, "replayed %d entries to %s\n", n, backend.TopicSink(sink))
	if err != nil {
		return err
	}
	if len(ids) > 0 && n < len(ids) {
		return fmt.Errorf("%d of the %d ids were not in the %s DLQ (already replayed or purged?)", len(ids)-n, len(ids), sink)
	}
	return nil
}

// missing reports ids the DLQ did not have.
func missing(ids []string, taken []*backend.DeadLetter) error {
	var gone []string
	for _, id := range ids {
		if !slices.ContainsFunc(taken, func(d *backend.DeadLetter) bool { return d.ID == id }) {
			gone = append(gone, id)
		}
	}
	if len(gone) > 0 {
		return fmt.Errorf("not found: %s", strings.Join(gone, ", "))
	}
	return nil
}

func clip(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}

// progressBar draws "label [#####     ] done/total" on a terminal,
// redrawn in place at most every 100ms; elsewhere (a log file) it writes a
// line at every 10%.
type progressBar struct {
	w      io.Writer
	total  int64
	label  string
	tty    bool
	done   int64
	drawn  time.Time
	decile int64
}

func newProgressBar(w io.Writer, total int64, label string) *progressBar {
	b := &progressBar{w: w, total: max(total, 1), label: label}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			b.tty = true
		}
	}
	b.draw()
	return b
}

func (b *progressBar) set(done int64) {
	b.done = done
	if done > b.total { // entries added while replaying
		b.total = done
	}
	if b.tty {
		if time.Since(b.drawn) >= 100*time.Millisecond || done == b.total {
			b.draw()
		}
		return
	}
	if d := done * 10 / b.total; d > b.decile {
		b.decile = d
		b.draw()
	}
}

func (b *progressBar) draw() {
	const width = 30
	filled := int(b.done * width / b.total)
	line := fmt.Sprintf("%s [%s%s] %d/%d", b.label, strings.Repeat("#", filled), strings.Repeat(" ", width-filled), b.done, b.total)
	if b.tty {
		fmt.Fprint(b.w, "\r"+line)
	} else {
		fmt.Fprintln(b.w, line)
	}
	b.drawn = time.Now()
}

func (b *progressBar) finish() {
	if b.tty {
		b.draw()
		fmt.Fprintln(b.w)
	}
}
