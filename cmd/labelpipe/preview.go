package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"

	"github.com/spf13/cobra"

	"github.com/labelpipe/labelpipe/builtin"
	"github.com/labelpipe/labelpipe/pipeline"
)

type previewOptions struct {
	config  string
	signing signing
}

func newPreviewCmd() *cobra.Command {
	var o previewOptions
	cmd := &cobra.Command{
		Use:   "preview PAYLOAD.json",
		Short: "Show each stage's verdict and every request each sink would send",
		Long: `Run a payload through the config's stages and sink renderers offline and
print, as JSON, each stage's verdict, the answer the webhook would give and
every request each sink would send, secrets redacted. Nothing is sent and
no variable needs to be set: an unset ${VAR} is shown as written. The exit
code is 1 if the webhook would refuse the payload.`,
		Example: `  labelpipe preview configs/payloads/issue-frames.json
  labelpipe preview -c configs/vendors.yaml --secret "$AQ_WEBHOOK_SECRET" configs/payloads/issue-crops.json`,
		Args:              onePayload,
		ValidArgsFunction: jsonFiles,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.signing.check(); err != nil {
				return err
			}
			return code(previewPayload(o, args[0], cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	addConfigFlag(cmd.Flags(), cmd, &o.config)
	o.signing.flags(cmd, "", "the webhook secret to present, signed as --scheme says (default: secret stages are skipped)")
	return cmd
}

// previewPayload shows what the pipeline would do with a payload: each
// stage's verdict, the answer, and every request each sink would send,
// secrets redacted. Nothing is sent.
func previewPayload(o previewOptions, payload string, stdout, stderr io.Writer) int {
	body, err := os.ReadFile(payload)
	if err != nil {
		fmt.Fprintln(stderr, "labelpipe preview:", err)
		return exitFailed
	}
	reg := builtin.Registry()
	cfg, err := loadConfig(o.config, stderr, pipeline.AllowUnsetEnv(), pipeline.ResolveWith(reg))
	if err != nil {
		return exitFailed
	}
	var h http.Header
	if o.signing.secret != "" {
		h = http.Header{}
		h.Set("Content-Type", "application/json")
		if err := o.signing.sign(h, body); err != nil {
			fmt.Fprintln(stderr, "labelpipe preview: --secret:", err)
			return exitFailed
		}
	}
	rep, err := pipeline.Preview(context.Background(), cfg, pipeline.Options{Registry: reg}, body, h)
	if err != nil {
		printConfigError(stderr, err)
		return exitFailed
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	_ = enc.Encode(rep)
	if rep.Answer.Status >= 400 {
		return exitFailed
	}
	return 0
}
