package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/labelpipe/labelpipe/builtin"
	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/pipeline/telemetry"
)

const defaultConfig = "configs/labelpipe.yaml"

func newRunCmd() *cobra.Command {
	var cfgPath string
	var watch bool
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the daemon",
		Long: `Run the daemon: the webhook listener (server.addr), the admin API
(admin.addr) and every sink's delivery. SIGTERM or SIGINT drains: stop
accepting, finish what is in flight, then exit 0.

SIGHUP reloads: it re-reads the TLS certificates and admin.token_file, and
the config file. The new config is checked as validate checks it; if it is
invalid, every error is logged and the running config stays. If it is
valid, the stages are swapped (a request under way finishes with the old
ones) and a sink whose config changed continues on the same queue with the
new config once its requests under way finish. A stage or sink whose
files changed (a schema file, secrets_file, api_key_file) is rebuilt too.
A new sink is started and takes the exports fanned out after the reload.
A removed sink takes no new exports; on Redis it stops and its queue
waits there until the sink is back, on memory it still delivers what its
queue holds. Keys that cannot
change live (server, admin, broker, redis, tracing, log, jq,
custom_events, a sink's type, max_in_flight and queue) are logged as
needing a restart and left as they were. With --watch a
change of the config file reloads it too.

Run it as a built binary in production (see go install in the README): 'go
run' does not pass SIGTERM on to the program it started.`,
		Example: `  labelpipe run                           # configs/labelpipe.yaml, the quickstart
  labelpipe run -c configs/vendors.yaml   # Redis and the real vendors
  labelpipe run --watch                   # reload when the config file changes`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return code(runDaemon(cfgPath, watch, cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	addConfigFlag(cmd.Flags(), cmd, &cfgPath)
	cmd.Flags().BoolVar(&watch, "watch", false, "reload the config when its file changes, as SIGHUP does")
	return cmd
}

// runDaemon runs the pipeline of cfgPath until SIGTERM or SIGINT.
func runDaemon(cfgPath string, watch bool, stdout, stderr io.Writer) int {
	reg := builtin.Registry()
	cfg, err := loadConfig(cfgPath, stderr, pipeline.ResolveWith(reg))
	if err != nil {
		return exitFailed
	}
	logger := newLogger(stderr, cfg.Log)
	for _, w := range cfg.Warnings() {
		logger.Warn(w)
	}
	// go-redis logs dial failures itself; send them to the same logger.
	redis.SetLogger(redisLogger{logger.With("component", "redis")})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	replica := replicaID()
	tel, err := telemetry.New(ctx, cfg.Tracing, telemetry.Info{Version: readBuildInfo().Version, ReplicaID: replica})
	if err != nil {
		logger.Error("telemetry", "err", err)
		return 1
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := tel.Shutdown(sctx); err != nil {
			logger.Warn("telemetry shutdown", "err", err)
		}
	}()
	p, err := pipeline.New(cfg, pipeline.Options{
		Registry:       reg,
		Logger:         logger,
		TracerProvider: tel.TracerProvider,
		MeterProvider:  tel.MeterProvider,
		Metrics:        tel.Metrics,
		Profiles:       telemetry.Profiles(),
		ReplicaID:      replica,
		Version:        readBuildInfo().Version,
	})
	if err != nil {
		printConfigError(stderr, err)
		return 1
	}
	defer p.Close()
	// Registered before Run: a SIGHUP that came first would otherwise
	// kill the process, SIGHUP's default.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	changed := make(chan struct{}, 1)
	if watch {
		stopWatch, err := watchFile(cfgPath, changed, logger)
		if err != nil {
			logger.Error("--watch", "err", err)
			return 1
		}
		defer stopWatch()
	}
	go reloadOn(ctx, hup, changed, p, cfgPath, logger)
	if err := p.Run(ctx); err != nil {
		logger.Error("labelpipe stopped", "err", err)
		return 1
	}
	return 0
}

// reloadOn reloads on SIGHUP: the TLS certificates, so a renewed
// certificate is served without a restart, and the config file. It
// reloads the config file alone when the watcher says it changed. A
// failed reload is logged and what was running stays.
func reloadOn(ctx context.Context, hup <-chan os.Signal, changed <-chan struct{}, p *pipeline.Pipeline, cfgPath string, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			log.Info("SIGHUP: reloading")
			_ = p.Reload() // Reload logs the outcome
		case <-changed:
			log.Info("config file changed: reloading", "file", cfgPath)
		}
		_, _ = p.ReloadFile(cfgPath) // logs the outcome
	}
}

// redisLogger adapts slog to go-redis's internal logger.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, strings.TrimSpace(fmt.Sprintf(format, v...)))
}

func replicaID() string {
	if id := os.Getenv("LABELPIPE_REPLICA_ID"); id != "" {
		return id
	}
	host, _ := os.Hostname()
	return fmt.Sprintf("%s-%d", host, os.Getpid())
}

func newLogger(w io.Writer, c pipeline.LogConfig) *slog.Logger {
	var level slog.Level
	// The loader has refused any other level than debug, info, warn, error.
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if strings.EqualFold(c.Format, "json") {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// loadConfig loads path, printing any error to w. The default config is
// relative to the current directory; outside a clone of the repository the
// error says to name one with -c.
func loadConfig(path string, w io.Writer, opts ...pipeline.LoadOption) (*pipeline.Config, error) {
	cfg, err := pipeline.LoadConfig(path, opts...)
	if err == nil {
		return cfg, nil
	}
	if errors.Is(err, fs.ErrNotExist) && path == defaultConfig {
		fmt.Fprintf(w, "labelpipe: %v\n(the default config, %s, is the quickstart in a clone of the repository; elsewhere name yours with -c FILE)\n", err, defaultConfig)
		return nil, err
	}
	printConfigError(w, err)
	return nil, err
}

// printConfigError prints every config error on its own line.
// An unset variable gets a hint: validate can check the config without
// its secrets.
func printConfigError(w io.Writer, err error) {
	var ce pipeline.ConfigErrors
	if errors.As(err, &ce) {
		hint := ""
		for _, e := range ce {
			fmt.Fprintln(w, e)
			if strings.HasPrefix(e.Msg, "environment variable ") {
				hint = "; to check it without its secrets: labelpipe validate --no-env, or --env-file FILE"
			}
		}
		fmt.Fprintf(w, "%d error(s) in the config%s\n", len(ce), hint)
		return
	}
	fmt.Fprintln(w, "labelpipe:", err)
}
