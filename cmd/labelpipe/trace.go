package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/labelpipe/labelpipe/pipeline/telemetry/waterfall"
)

// jaegerEnv names the Jaeger query API when --jaeger is not given.
const jaegerEnv = "LABELPIPE_JAEGER_URL"

func newTraceCmd() *cobra.Command {
	var (
		jaeger, color, service string
		all                    bool
		width                  int
		timeout, wait          time.Duration
	)
	cmd := &cobra.Command{
		Use:   "trace ID",
		Short: "Print an export's trace from Jaeger as a waterfall in the terminal",
		Long: `trace fetches one trace from Jaeger's query API (/api/v3/traces/{id}) and
prints it as a waterfall: the webhook and each stage, each broker hop, and
per sink every delivery attempt with its status and duration, errors
highlighted, bars placed by time. No Jaeger UI is needed.

ID is the trace id (the 202 answer's "trace_id", 32 hex digits, also on
every log line about the export) or the export id (the 202 answer's "id"),
whose trace is searched for by its labelpipe.export.id tag.

Redis commands are counted on their parent's line (shown when they failed);
--all shows each. Colour is on when stdout is a terminal (and NO_COLOR is
unset); --color always|never overrides.`,
		Example: `  labelpipe trace 4bf92f3577b34da6a3ce929d0e0e4736
  labelpipe trace 01JF3W7K8Q2Y5V9N6M4T1R0SBX              # an export id
  labelpipe trace --jaeger http://jaeger.internal:16686 --all 4bf92f3577b34da6a3ce929d0e0e4736`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageErrorf("trace takes one trace id or export id, got %d arguments", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			var useColor bool
			switch color {
			case "auto":
				useColor = isTerminal(cmd.OutOrStdout()) && os.Getenv("NO_COLOR") == ""
			case "always":
				useColor = true
			case "never":
			default:
				return usageErrorf("--color %q: want auto, always or never", color)
			}
			if wait < 0 {
				return usageErrorf("--wait %s: must be ≥ 0", wait)
			}
			if width < 10 || width > 400 {
				return usageErrorf("--width %d: want 10 to 400", width)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			err := waterfall.Print(ctx, cmd.OutOrStdout(), jaeger, args[0], waterfall.Options{
				Color: useColor, BarWidth: width, All: all, Wait: wait,
				Client: &waterfall.Client{Service: service},
			})
			if err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "labelpipe trace: %v\n", err)
				if !errors.Is(err, waterfall.ErrNotFound) {
					fmt.Fprintf(cmd.ErrOrStderr(), "Is Jaeger running at %s? `go tool task jaeger` starts one; --jaeger or %s points elsewhere.\n", jaeger, jaegerEnv)
				}
				return exitCode(exitFailed)
			}
			return nil
		},
	}
	def := os.Getenv(jaegerEnv)
	if def == "" {
		def = waterfall.DefaultQueryURL
	}
	fs := cmd.Flags()
	fs.StringVar(&jaeger, "jaeger", def, "Jaeger query API base URL (env "+jaegerEnv+")")
	fs.StringVar(&color, "color", "auto", "ANSI colour: auto (on a terminal), always or never")
	fs.StringVar(&service, "service", "labelpipe", "service.name an export id is searched under")
	fs.BoolVar(&all, "all", false, "show every Redis command span")
	fs.IntVar(&width, "width", 40, "width of the time axis in characters")
	fs.DurationVar(&wait, "wait", 10*time.Second, "keep asking this long while Jaeger does not have the trace yet (spans arrive in batches, seconds after the 202)")
	fs.DurationVar(&timeout, "timeout", 30*time.Second, "give up on Jaeger after this long")
	_ = cmd.RegisterFlagCompletionFunc("color", cobra.FixedCompletions([]string{"auto", "always", "never"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
