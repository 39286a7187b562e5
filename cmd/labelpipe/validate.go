package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/labelpipe/labelpipe/builtin"
	"github.com/labelpipe/labelpipe/pipeline"
)

func newValidateCmd() *cobra.Command {
	var cfgPath string
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Check a config; print every error with file:line:col",
		Long: `Check a config the way run would, without touching the network: every
error is printed with file:line:col and the path in the document, all at
once, and the exit code is 1 if there is any.`,
		Example: `  labelpipe validate                            # configs/labelpipe.yaml
  labelpipe validate -c configs/vendors.yaml`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return code(validateConfig(cfgPath, cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	addConfigFlag(cmd.Flags(), cmd, &cfgPath)
	return cmd
}

// validateConfig decodes and validates a config without running it. It
// returns 1 and prints every error when there are any.
func validateConfig(cfgPath string, stdout, stderr io.Writer) int {
	// ResolveWith: the stage and sink options' errors come with the rest.
	cfg, err := loadConfig(cfgPath, stderr, pipeline.ResolveWith(builtin.Registry()))
	if err != nil {
		return exitFailed
	}
	fmt.Fprintf(stdout, "%s: ok (%d stages, %d sinks, broker %s)\n", cfgPath, len(cfg.Stages), len(cfg.Sinks), cfg.Broker.Type)
	return 0
}
