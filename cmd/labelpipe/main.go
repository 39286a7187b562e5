// Command labelpipe receives Aquarium's webhooks and fans each export out to
// labeling vendors. `labelpipe help` lists the commands.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// Exit codes: 0 success, 1 the command failed (it says why), 2 the command
// line is wrong (a usage error: unknown command or flag, a flag's value out
// of range, missing or extra arguments).
const (
	exitFailed = 1
	exitUsage  = 2
)

// exitCode is what a command's RunE returns to end with a code, once it has
// printed what went wrong.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// code turns a command's exit code into RunE's error.
func code(n int) error {
	if n == 0 {
		return nil
	}
	return exitCode(n)
}

// usageErrorf is a usage error: run prints it with a pointer to the
// command's help and exits 2.
func usageErrorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

// run runs the command line args and returns the exit code. Help goes to
// stdout; errors to stderr.
func run(args []string, stdout, stderr io.Writer) int {
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	cmd, err := root.ExecuteC()
	if err == nil {
		return 0
	}
	var ec exitCode
	if errors.As(err, &ec) {
		return int(ec)
	}
	// Anything else is cobra's or an Args check's: the command line is wrong.
	if cmd == nil {
		cmd = root
	}
	fmt.Fprintf(stderr, "labelpipe: %v\nRun '%s --help' for usage.\n", err, cmd.CommandPath())
	return exitUsage
}

// newRootCmd builds the whole command tree, writing to stdout and stderr.
// Each call builds a fresh one, so that tests can run commands in process
// without sharing flag values.
func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "labelpipe",
		Short: "Aquarium's issue-exported webhook → labeling vendors",
		Long: `labelpipe receives the issue-exported webhook that Aquarium sends when
someone clicks Export Issue, checks it, and delivers it to labeling vendors
(Labelbox, Scale, Label Studio, or any HTTP/GraphQL API), each with its own
queue, circuit breaker, retries and dead-letter queue.

-c/--config always names the config file; the default is
configs/labelpipe.yaml, the quickstart, relative to the current directory.
Exit codes: 0 success, 1 failure, 2 a usage error.`,
		Example: `  labelpipe run                                   # the daemon, on configs/labelpipe.yaml
  labelpipe send configs/payloads/issue-frames.json
  labelpipe validate -c configs/vendors.yaml --env-file configs/vendors.env.example
  labelpipe preview -c configs/vendors.yaml configs/payloads/issue-crops.json
  labelpipe help run`,
		Version:       versionString(),
		SilenceErrors: true,
		SilenceUsage:  true,
		RunE: func(cmd *cobra.Command, args []string) error {
			// No command: the usage, on stderr, is a usage error.
			fmt.Fprint(cmd.ErrOrStderr(), cmd.UsageString())
			return exitCode(exitUsage)
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return err })
	root.AddCommand(
		newRunCmd(),
		newValidateCmd(),
		newPreviewCmd(),
		newSendCmd(),
		newDLQCmd(),
		newBenchCmd(),
		newConfigCmd(),
		newTestCmd(),
		newVersionCmd(),
	)
	// completion bash|zsh|fish|powershell is cobra's; an unknown shell or
	// none is a usage error like any other.
	root.InitDefaultCompletionCmd()
	if c, _, err := root.Find([]string{"completion"}); err == nil && c != root {
		c.Args = cobra.NoArgs
		c.RunE = func(cmd *cobra.Command, _ []string) error {
			return usageErrorf("completion needs a shell: bash, zsh, fish or powershell")
		}
	}
	root.AddCommand(newTraceCmd())
	return root
}

// addConfigFlag adds -c/--config, the one flag every command that reads a
// config has, with the same meaning everywhere.
func addConfigFlag(fs *pflag.FlagSet, cmd *cobra.Command, dst *string) {
	fs.StringVarP(dst, "config", "c", defaultConfig, "config file")
	_ = cmd.MarkFlagFilename("config", "yaml", "yml")
}

// noArgs refuses positional arguments; a config given as one gets a hint
// to use -c, instead of the default config being used silently.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	if strings.HasSuffix(args[0], ".yaml") || strings.HasSuffix(args[0], ".yml") {
		return usageErrorf("unexpected argument %q: name the config with -c (%s -c %s)", args[0], cmd.CommandPath(), args[0])
	}
	return usageErrorf("unexpected argument %q (%s takes none)", args[0], cmd.CommandPath())
}

// onePayload wants exactly one payload file.
func onePayload(cmd *cobra.Command, args []string) error {
	switch len(args) {
	case 1:
		return nil
	case 0:
		return usageErrorf("%s needs a payload file, e.g. configs/payloads/issue-frames.json", cmd.Name())
	default:
		return usageErrorf("%s takes one payload file, got %d arguments (%s)", cmd.Name(), len(args), strings.Join(args, " "))
	}
}

// jsonFiles completes a payload argument with .json files.
func jsonFiles(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return []string{"json"}, cobra.ShellCompDirectiveFilterFileExt
}
