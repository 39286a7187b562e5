package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"
)

type sendOptions struct {
	url, secret string
}

func newSendCmd() *cobra.Command {
	var o sendOptions
	cmd := &cobra.Command{
		Use:   "send PAYLOAD.json",
		Short: "Post a payload like Aquarium's Export button and print the answer",
		Long: `Post a payload to a running labelpipe the way Aquarium's Export button
does, and print the answer's status line and body. The exit code is 1
unless the answer is 2xx.`,
		Example: `  labelpipe send configs/payloads/issue-frames.json
  labelpipe send --url https://labelpipe.example/webhook --secret "$AQ_WEBHOOK_SECRET" configs/payloads/issue-crops.json`,
		Args:              onePayload,
		ValidArgsFunction: jsonFiles,
		RunE: func(cmd *cobra.Command, args []string) error {
			return code(sendPayload(o, args[0], cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.url, "url", envOr("LABELPIPE_URL", "http://127.0.0.1:8080/webhook"), "webhook URL (env LABELPIPE_URL)")
	fs.StringVar(&o.secret, "secret", envOr("AQ_WEBHOOK_SECRET", "dev-secret"), "the webhook secret (env AQ_WEBHOOK_SECRET)")
	return cmd
}

// sendPayload posts a payload the way Aquarium's Export button does and
// prints the answer. It returns 1 unless the answer is 2xx.
func sendPayload(o sendOptions, payload string, stdout, stderr io.Writer) int {
	body, err := os.ReadFile(payload)
	if err != nil {
		fmt.Fprintln(stderr, "labelpipe send:", err)
		return exitFailed
	}
	req, err := http.NewRequest(http.MethodPost, o.url, bytes.NewReader(body))
	if err != nil {
		fmt.Fprintln(stderr, "labelpipe send:", err)
		return exitFailed
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Aquarium-Secret", o.secret)
	resp, err := (&http.Client{Timeout: 60 * time.Second}).Do(req)
	if err != nil {
		fmt.Fprintln(stderr, "labelpipe send:", err)
		return exitFailed
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	fmt.Fprintf(stdout, "%s\n%s", resp.Status, answer)
	if resp.StatusCode/100 != 2 {
		return exitFailed
	}
	return 0
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
