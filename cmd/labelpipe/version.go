package main

import (
	"fmt"
	"io"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
)

// version may be set at build time with -ldflags "-X main.version=v1.2.3";
// otherwise it comes from the build info, which carries the module version
// and the commit when the binary was built with VCS stamping
// (-buildvcs=true, the default in a git checkout unless GOFLAGS turns it
// off).
var version = ""

// buildInfo is what `labelpipe version` prints.
type buildInfo struct {
	Version    string // the module version, "dev" when unknown
	Commit     string // the VCS revision, "" when not stamped
	CommitTime string // RFC 3339
	Modified   bool   // built from a tree with uncommitted changes
	GoVersion  string
}

// readBuildInfo reads the binary's build info.
func readBuildInfo() buildInfo {
	b := buildInfo{Version: version}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		if b.Version == "" {
			b.Version = "dev"
		}
		return b
	}
	b.GoVersion = bi.GoVersion
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Commit = s.Value
		case "vcs.time":
			b.CommitTime = s.Value
		case "vcs.modified":
			b.Modified = s.Value == "true"
		}
	}
	if b.Version == "" {
		b.Version = bi.Main.Version
	}
	if b.Version == "" || b.Version == "(devel)" {
		b.Version = "dev"
	}
	return b
}

// versionString is the one-line version, e.g. "labelpipe v0.0.0-2026…-2cfb574a (commit 2cfb574a…, 2026-12-02T13:50:00Z)".
func versionString() string {
	b := readBuildInfo()
	s := "labelpipe " + b.Version
	if b.Commit != "" {
		s += fmt.Sprintf(" (commit %s, %s", b.Commit, b.CommitTime)
		if b.Modified {
			s += ", modified"
		}
		s += ")"
	}
	return s
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, the commit and the commit time",
		Long: `Print the module version, the VCS commit and its time, as the Go build
info records them. A binary built without VCS stamping (GOFLAGS=-buildvcs=false,
or go run outside a git checkout) says "dev" and how to build a stamped one.`,
		Example: `  labelpipe version
  go install -buildvcs=true ./cmd/labelpipe && labelpipe version`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			printVersion(cmd.OutOrStdout())
			return nil
		},
	}
}

func printVersion(w io.Writer) {
	b := readBuildInfo()
	fmt.Fprintln(w, "labelpipe", b.Version)
	if b.Commit == "" {
		fmt.Fprintln(w, "commit:   unknown (built without VCS stamping; build with go build -buildvcs=true in a git checkout)")
	} else {
		mod := ""
		if b.Modified {
			mod = " (with uncommitted changes)"
		}
		fmt.Fprintf(w, "commit:   %s%s\n", b.Commit, mod)
		fmt.Fprintf(w, "time:     %s\n", b.CommitTime)
	}
	if b.GoVersion != "" {
		fmt.Fprintln(w, "go:      ", strings.TrimSpace(b.GoVersion))
	}
}
