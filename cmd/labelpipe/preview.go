package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"

	"github.com/labelpipe/labelpipe/builtin"
	"github.com/labelpipe/labelpipe/pipeline"
)

// previewCommand shows what the pipeline would do with a payload: each
// stage's verdict, the answer, and every request each sink would send,
// secrets redacted. Nothing is sent.
func previewCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("preview", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("c", defaultConfig, "config file")
	secret := fs.String("secret", "", "X-Aquarium-Secret to check (default: secret stages are skipped)")
	header := fs.String("secret-header", "X-Aquarium-Secret", "header that carries --secret")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: labelpipe preview [-c CONFIG] [--secret S] PAYLOAD.json")
		return 2
	}
	body, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		fmt.Fprintln(stderr, "labelpipe preview:", err)
		return 1
	}
	reg := builtin.Registry()
	cfg, err := pipeline.LoadConfig(*cfgPath, pipeline.AllowUnsetEnv(), pipeline.ResolveWith(reg))
	if err != nil {
		printConfigError(stderr, err)
		return 1
	}
	var h http.Header
	if *secret != "" {
		h = http.Header{}
		h.Set(*header, *secret)
		h.Set("Content-Type", "application/json")
	}
	rep, err := pipeline.Preview(context.Background(), cfg, pipeline.Options{Registry: reg}, body, h)
	if err != nil {
		printConfigError(stderr, err)
		return 1
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	_ = enc.Encode(rep)
	if rep.Answer.Status >= 400 {
		return 1
	}
	return 0
}
