package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/labelpipe/labelpipe/stages"
)

type sendOptions struct {
	url     string
	signing signing
}

// signing is how send and preview present the secret: the secret stage's
// scheme, the header that carries it, and the secret.
type signing struct {
	scheme, header, secret string
}

func (s *signing) flags(cmd *cobra.Command, secretDefault, secretUsage string) {
	fs := cmd.Flags()
	fs.StringVar(&s.secret, "secret", secretDefault, secretUsage)
	fs.StringVar(&s.scheme, "scheme", stages.SchemeHeader, "how the secret is presented, as the secret stage's scheme: "+strings.Join(stages.SecretSchemes, ", "))
	fs.StringVar(&s.header, "secret-header", "", "the header of scheme header or github (default X-Aquarium-Secret, X-Hub-Signature-256)")
	_ = cmd.RegisterFlagCompletionFunc("scheme", cobra.FixedCompletions(stages.SecretSchemes, cobra.ShellCompDirectiveNoFileComp))
}

func (s *signing) check() error {
	if !slices.Contains(stages.SecretSchemes, s.scheme) {
		return usageErrorf("--scheme %q: unknown scheme (want %s)", s.scheme, strings.Join(stages.SecretSchemes, ", "))
	}
	if s.scheme == stages.SchemeStandardWebhooks && s.header != "" {
		return usageErrorf("--secret-header is not used by --scheme standard_webhooks (it sends webhook-id, webhook-timestamp and webhook-signature)")
	}
	return nil
}

// sign sets on h what the secret stage of the scheme checks, for body.
func (s *signing) sign(h http.Header, body []byte) error {
	return stages.Sign(h, s.scheme, s.header, s.secret, body, time.Now())
}

func newSendCmd() *cobra.Command {
	var o sendOptions
	cmd := &cobra.Command{
		Use:   "send PAYLOAD.json",
		Short: "Post a payload like Aquarium's Export button and print the answer",
		Long: `Post a payload to a running labelpipe the way Aquarium's Export button
does, and print the answer's status line and body. The exit code is 1
unless the answer is 2xx.

--scheme signs the request for every scheme the secret stage checks:
header (the secret in X-Aquarium-Secret, Aquarium's way), github
(X-Hub-Signature-256) and standard_webhooks (webhook-id, webhook-timestamp,
webhook-signature; the secret is whsec_...).`,
		Example: `  labelpipe send configs/payloads/issue-frames.json
  labelpipe send --url https://labelpipe.example/webhook --secret "$AQ_WEBHOOK_SECRET" configs/payloads/issue-crops.json
  labelpipe send --scheme standard_webhooks --secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw configs/payloads/issue-frames.json
  labelpipe send --scheme github --secret "$GITHUB_WEBHOOK_SECRET" configs/payloads/issue-frames.json`,
		Args:              onePayload,
		ValidArgsFunction: jsonFiles,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.signing.check(); err != nil {
				return err
			}
			if o.url == "" {
				o.url = envOr("LABELPIPE_URL", "http://127.0.0.1:8080/webhook")
			}
			if o.signing.secret == "" {
				o.signing.secret = envOr("AQ_WEBHOOK_SECRET", "dev-secret")
			}
			return code(sendPayload(o, args[0], cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	// The defaults from the environment are read when send runs, so that
	// help never shows a secret.
	cmd.Flags().StringVar(&o.url, "url", "", "webhook URL (default $LABELPIPE_URL, else http://127.0.0.1:8080/webhook)")
	o.signing.flags(cmd, "", "the webhook secret (default $AQ_WEBHOOK_SECRET, else dev-secret, the quickstart's)")
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
	if err := o.signing.sign(req.Header, body); err != nil {
		fmt.Fprintln(stderr, "labelpipe send: --secret:", err)
		return exitFailed
	}
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
