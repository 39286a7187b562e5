package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// commandsHelp is the README's commands block: a table of the commands and
// each one's help, as `labelpipe help COMMAND` prints it.
func commandsHelp(t *testing.T) string {
	t.Helper()
	var cmds []*cobra.Command
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Hidden || sub.Name() == "help" || (c.Name() == "completion") {
				continue
			}
			cmds = append(cmds, sub)
			walk(sub)
		}
	}
	root := newRootCmd(io.Discard, io.Discard)
	root.InitDefaultHelpCmd()
	walk(root)

	var b strings.Builder
	b.WriteString("| command | what it does |\n|---|---|\n")
	for _, c := range cmds {
		fmt.Fprintf(&b, "| [`%s`](#%s) | %s |\n", c.CommandPath(), strings.ReplaceAll(c.CommandPath(), " ", "-"), c.Short)
	}
	for _, c := range append([]*cobra.Command{root}, cmds...) {
		args := append([]string{"help"}, strings.Fields(c.CommandPath())[1:]...)
		code, stdout, stderr := labelpipe(t, args...)
		if code != 0 || stderr != "" {
			t.Fatalf("labelpipe %s: exit %d, stderr %q", strings.Join(args, " "), code, stderr)
		}
		fmt.Fprintf(&b, "\n#### %s\n\n```text\n%s```\n", c.CommandPath(), stdout)
	}
	return b.String()
}

// Issue 12, "every subcommand's help is shown in the README, generated
// rather than hand-copied": the README's commands block is the commands'
// own help (-update rewrites it).
func TestREADMEHelp(t *testing.T) {
	// Help must not depend on the environment (nor ever show a secret).
	t.Setenv("AQ_WEBHOOK_SECRET", "secret-in-the-environment")
	t.Setenv("LABELPIPE_URL", "http://127.0.0.1:1/elsewhere")
	help := commandsHelp(t)
	if strings.Contains(help, "secret-in-the-environment") || strings.Contains(help, "elsewhere") {
		t.Error("help shows a value from the environment")
	}
	for _, w := range []string{"#### labelpipe run\n", "#### labelpipe dlq replay\n", "#### labelpipe config schema\n", "#### labelpipe completion\n", "#### labelpipe bench\n"} {
		if !strings.Contains(help, w) {
			t.Errorf("the help block lacks %q", w)
		}
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	checkGenerated(t, "../../README.md", []byte(replaceBlock(t, string(readme), "commands help", help)))
}
