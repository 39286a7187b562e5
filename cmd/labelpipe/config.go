package main

import (
	"github.com/spf13/cobra"

	"github.com/labelpipe/labelpipe/configs"
)

func newConfigCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "The config's JSON Schema",
		Long: `Print the config's JSON Schema, generated from the config structs and
their docs, every stage and sink type's own keys included. The README's
configuration reference is generated from the same source.`,
		Example: `  labelpipe config schema > labelpipe.schema.json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usageErrorf("config needs a subcommand: schema")
		},
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "schema",
		Short: "Print the config's JSON Schema (for yaml-language-server and validators)",
		Long: `Print the config's JSON Schema (draft 2020-12). With the YAML extension of
an editor (yaml-language-server), a first line

  # yaml-language-server: $schema=labelpipe.schema.json

in a config gives completion, hover docs and checks as you type; the
shipped configs have it. The schema checks shape only: validate checks
everything run would.`,
		Example: `  labelpipe config schema > labelpipe.schema.json`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := cmd.OutOrStdout().Write(configs.ConfigSchema)
			return err
		},
	})
	return cmd
}
