package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/labelpipe/labelpipe/builtin"
	"github.com/labelpipe/labelpipe/pipeline"
)

type validateOptions struct {
	config  string
	envFile string
	noEnv   bool
}

func newValidateCmd() *cobra.Command {
	var o validateOptions
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Check a config; print every error with file:line:col",
		Long: `Check a config the way run would, without touching the network: it
decodes it, checks every value, and builds every stage and sink offline
(schema files, jq programs, certificates). Every error is printed with
file:line:col and the path in the document, all at once, and the exit code
is 1 if there is any. Warnings (events no sink subscribes to) are printed
too but do not fail.

A config's ${VAR}s are read from the environment. To check a config's shape
without its secrets, read them from a file with --env-file, or ignore the
environment with --no-env: every ${VAR} without a default then becomes a
placeholder.`,
		Example: `  labelpipe validate                            # configs/labelpipe.yaml
  labelpipe validate -c configs/vendors.yaml --env-file configs/vendors.env.example
  labelpipe validate -c configs/vendors.yaml --no-env`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return code(validateConfig(o, cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	fs := cmd.Flags()
	addConfigFlag(fs, cmd, &o.config)
	fs.StringVar(&o.envFile, "env-file", "", "read ${VAR}s from this file of NAME=value lines, before the environment")
	fs.BoolVar(&o.noEnv, "no-env", false, "ignore the environment: a ${VAR} takes its default, or a placeholder")
	_ = cmd.MarkFlagFilename("env-file")
	return cmd
}

// validateConfig decodes, validates and builds a config offline. It
// returns 1 and prints every error when there are any.
func validateConfig(o validateOptions, stdout, stderr io.Writer) int {
	opts := []pipeline.LoadOption{pipeline.ResolveWith(builtin.Registry())}
	var file map[string]string
	if o.envFile != "" {
		var err error
		if file, err = readEnvFile(o.envFile); err != nil {
			fmt.Fprintln(stderr, "labelpipe validate:", err)
			return exitFailed
		}
	}
	if o.envFile != "" || o.noEnv {
		opts = append(opts, pipeline.LookupEnv(func(name string) (string, bool) {
			if v, ok := file[name]; ok {
				return v, true
			}
			if o.noEnv {
				return "", false
			}
			return os.LookupEnv(name)
		}))
	}
	if o.noEnv {
		opts = append(opts, pipeline.EnvPlaceholders())
	}
	cfg, err := loadConfig(o.config, stderr, opts...)
	if err == nil {
		// What only building finds: schema files, certificates.
		if err = pipeline.Check(cfg, pipeline.Options{Registry: builtin.Registry()}); err != nil {
			printConfigError(stderr, err)
		}
	}
	if err != nil {
		return exitFailed
	}
	for _, w := range cfg.Warnings() {
		fmt.Fprintf(stderr, "%s: warning: %s\n", o.config, w)
	}
	fmt.Fprintf(stdout, "%s: ok (%d stages, %d sinks, broker %s)\n", o.config, len(cfg.Stages), len(cfg.Sinks), cfg.Broker.Type)
	return 0
}

// readEnvFile reads NAME=value lines, as docker and systemd env files have
// them: blank lines and # comments are skipped, an "export " prefix and
// quotes around the value are dropped.
func readEnvFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--env-file: %w", err)
	}
	defer f.Close()
	vars := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		name = strings.TrimSpace(name)
		if !ok || name == "" || strings.ContainsAny(name, " \t") {
			return nil, fmt.Errorf("%s:%d: want NAME=value", path, n)
		}
		value = strings.TrimSpace(value)
		if len(value) >= 2 && (value[0] == '"' || value[0] == '\'') && value[len(value)-1] == value[0] {
			value = value[1 : len(value)-1]
		}
		vars[name] = value
	}
	return vars, sc.Err()
}
