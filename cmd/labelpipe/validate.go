package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/labelpipe/labelpipe/builtin"
	"github.com/labelpipe/labelpipe/pipeline"
)

// validateCommand decodes and validates a config without running it. It
// exits 1 and prints every error when there are any.
func validateCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("c", defaultConfig, "config file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// ResolveWith: the stage and sink options' errors come with the rest.
	cfg, err := pipeline.LoadConfig(*cfgPath, pipeline.ResolveWith(builtin.Registry()))
	if err != nil {
		printConfigError(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: ok (%d stages, %d sinks, broker %s)\n", *cfgPath, len(cfg.Stages), len(cfg.Sinks), cfg.Broker.Type)
	return 0
}
