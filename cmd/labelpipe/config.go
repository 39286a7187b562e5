package main

import "github.com/spf13/cobra"

func newConfigCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "The config's JSON Schema and reference",
		Example: `  labelpipe config schema > labelpipe.schema.json
  labelpipe config docs`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usageErrorf("config needs a subcommand: schema or docs")
		},
	}
	return cmd
}
