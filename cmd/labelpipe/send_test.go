package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/builtin"
	"github.com/labelpipe/labelpipe/pipeline"
	"github.com/labelpipe/labelpipe/stages"
)

// secretStage builds the real secret stage of scheme with one secret.
func secretStage(t *testing.T, scheme, secret string) pipeline.Stage {
	t.Helper()
	st, ok := builtin.Registry().Stage("secret")
	if !ok {
		t.Fatal("no secret stage registered")
	}
	c := st.Config().(*stages.SecretConfig)
	c.Scheme, c.Secrets = scheme, []string{secret}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	s, err := st.Build(c, pipeline.Env{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Issue 12, observation 12: send signs for every scheme the secret stage
// verifies. Each is sent to a loopback server that checks it with the real
// stage; a wrong secret is refused by the same check.
func TestSendSignsForEverySecretScheme(t *testing.T) {
	secrets := map[string]string{
		stages.SchemeHeader:           "dev-secret-for-send",
		stages.SchemeGitHub:           "github-secret-for-send",
		stages.SchemeStandardWebhooks: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
	}
	if len(secrets) != len(stages.SecretSchemes) {
		t.Fatalf("schemes %v, test covers %d", stages.SecretSchemes, len(secrets))
	}
	payload, err := os.ReadFile(payloads + "issue-frames.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, scheme := range stages.SecretSchemes {
		t.Run(scheme, func(t *testing.T) {
			stage := secretStage(t, scheme, secrets[scheme])
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body)
				if string(body) != string(payload) {
					http.Error(w, "body changed", http.StatusBadRequest)
					return
				}
				e := &pipeline.Export{ID: "send-test", ReceivedAt: time.Now(), Header: r.Header, Body: body}
				if err := stage.Process(r.Context(), e); err != nil {
					http.Error(w, err.Error(), http.StatusUnauthorized)
					return
				}
				w.WriteHeader(http.StatusAccepted)
				fmt.Fprint(w, `{"status":"accepted"}`)
			}))
			defer srv.Close()

			cliCase{args: []string{"send", "--url", srv.URL, "--scheme", scheme, "--secret", secrets[scheme], payloads + "issue-frames.json"},
				wantStdout: []string{"202 Accepted\n"}}.check(t)
			wrong := "not-" + secrets[scheme]
			if scheme == stages.SchemeStandardWebhooks {
				wrong = "whsec_QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB"
			}
			cliCase{args: []string{"send", "--url", srv.URL, "--scheme", scheme, "--secret", wrong, payloads + "issue-frames.json"},
				wantCode: 1, wantStdout: []string{"401 Unauthorized\n"}}.check(t)
		})
	}
	cliCase{args: []string{"send", "--scheme", "hmac", "x.json"}, wantCode: 2, emptyStdout: true,
		wantStderr: []string{`--scheme "hmac": unknown scheme (want header, standard_webhooks, github)`}}.check(t)
	cliCase{args: []string{"send", "--scheme", "standard_webhooks", "--secret", "plain", "--url", "http://127.0.0.1:1/", payloads + "issue-frames.json"},
		wantCode: 1, wantStderr: []string{"is not a Standard Webhooks secret"}}.check(t)
}

// preview signs the same way, so a signed config can be previewed.
func TestPreviewSignsForTheScheme(t *testing.T) {
	cfg := writeConfig(t, `server: {addr: ""}
admin: {addr: ""}
stages:
  - {type: secret, scheme: standard_webhooks, secrets: ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]}
sinks:
  - {name: archive, type: file, path: out/archive.jsonl}
`)
	cliCase{args: []string{"preview", "-c", cfg, "--scheme", "standard_webhooks", "--secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", payloads + "issue-frames.json"},
		wantStdout: []string{`"verdict": "passed"`, `"status": 202`}}.check(t)
	code, stdout, _ := labelpipe(t, "preview", "-c", cfg, "--secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", payloads+"issue-frames.json")
	if code != 1 || !strings.Contains(stdout, `"status": 401`) {
		t.Errorf("preview with the header scheme against a signed config: exit %d\n%s", code, stdout)
	}
}
