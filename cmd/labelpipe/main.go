// Command labelpipe receives Aquarium's webhooks and fans each export out to
// labeling vendors. `labelpipe help` lists the commands.
package main

import (
	"fmt"
	"io"
	"os"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `labelpipe: Aquarium webhook → labeling vendors

usage:
  labelpipe run      [-c CONFIG]                     run the daemon (default config configs/labelpipe.yaml)
  labelpipe validate [-c CONFIG]                     check a config; print every error with file:line:col
  labelpipe preview  [-c CONFIG] [--secret S] PAYLOAD.json
                                                     show each stage's verdict and every request each sink would send
  labelpipe send     [--url URL] [--secret S] PAYLOAD.json
                                                     post a payload like Aquarium's Export button, print the answer
  labelpipe bench    [flags]                         load-test against fake vendors (see labelpipe bench -h)
  labelpipe dlq      list|show|replay|purge -c CONFIG --sink NAME [--id ID|--all]
  labelpipe version
`

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return runCommand(rest, stdout, stderr)
	case "validate":
		return validateCommand(rest, stdout, stderr)
	case "preview":
		return previewCommand(rest, stdout, stderr)
	case "send":
		return sendCommand(rest, stdout, stderr)
	case "bench":
		return benchCommand(rest, stdout, stderr)
	case "dlq":
		return dlqCommand(rest, stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "labelpipe", version)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "labelpipe: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
}
