package stages_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/pipeline"
)

const (
	current  = "s3cr3t-current-aquarium-key"
	previous = "old-key"
)

func TestSecretHeader(t *testing.T) {
	body := samplePayload(t, "issue-frames.json")
	tests := []struct {
		name    string
		opts    string
		header  http.Header
		wantMsg string // "" means the export passes
	}{
		{"current secret", "secrets: [" + current + ", " + previous + "]",
			http.Header{"X-Aquarium-Secret": {current}}, ""},
		{"previous secret during rotation", "secrets: [" + current + ", " + previous + "]",
			http.Header{"X-Aquarium-Secret": {previous}}, ""},
		{"header name is case-insensitive", "secrets: [" + current + "]",
			http.Header{http.CanonicalHeaderKey("x-aquarium-secret"): {current}}, ""},
		{"missing header", "secrets: [" + current + "]",
			http.Header{}, "missing X-Aquarium-Secret header"},
		{"wrong secret", "secrets: [" + current + ", " + previous + "]",
			http.Header{"X-Aquarium-Secret": {"guess"}}, "X-Aquarium-Secret does not match any configured secret"},
		{"prefix of the secret", "secrets: [" + current + "]",
			http.Header{"X-Aquarium-Secret": {current[:5]}}, "X-Aquarium-Secret does not match any configured secret"},
		{"secret with trailing junk", "secrets: [" + current + "]",
			http.Header{"X-Aquarium-Secret": {current + "x"}}, "X-Aquarium-Secret does not match any configured secret"},
		{"custom header", "header: X-Webhook-Token\nsecrets: [" + current + "]",
			http.Header{"X-Webhook-Token": {current}}, ""},
		{"custom header missing", "header: X-Webhook-Token\nsecrets: [" + current + "]",
			http.Header{"X-Aquarium-Secret": {current}}, "missing X-Webhook-Token header"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustBuild(t, "secret", tt.opts, pipeline.Env{})
			e := newExport(t, body, tt.header)
			err := s.Process(t.Context(), e)
			if tt.wantMsg == "" {
				passed(t, e, err)
				return
			}
			checkUnauthorized(t, err, tt.wantMsg)
		})
	}
}

func checkUnauthorized(t *testing.T, err error, wantMsg string) {
	t.Helper()
	se := stageErr(t, err)
	if se.Verdict != pipeline.VerdictReject || se.Status != http.StatusUnauthorized {
		t.Fatalf("verdict %v status %d, want reject 401", se.Verdict, se.Status)
	}
	if se.Msg != wantMsg {
		t.Fatalf("message = %q, want %q", se.Msg, wantMsg)
	}
	for _, secret := range []string{current, previous, "whsec_"} {
		if strings.Contains(err.Error(), secret) {
			t.Fatalf("error %q echoes a secret", err)
		}
	}
}

// whsec makes a Standard Webhooks secret from raw key bytes.
func whsec(key string) string { return "whsec_" + base64.StdEncoding.EncodeToString([]byte(key)) }

// swSign computes a Standard Webhooks v1 signature.
func swSign(key, id string, ts int64, body []byte) string {
	m := hmac.New(sha256.New, []byte(key))
	m.Write([]byte(id + "." + strconv.FormatInt(ts, 10) + "."))
	m.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

func TestSecretStandardWebhooks(t *testing.T) {
	body := samplePayload(t, "issue-frames.json")
	opts := "scheme: standard_webhooks\nsecrets: [" + whsec("key-one") + ", " + whsec("key-two") + "]"
	now := time.Now().Unix()
	headers := func(id string, ts int64, sig string) http.Header {
		h := http.Header{}
		h.Set("webhook-id", id)
		h.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
		h.Set("webhook-signature", sig)
		return h
	}
	tests := []struct {
		name    string
		opts    string
		header  http.Header
		body    []byte
		wantMsg string
	}{
		{"valid", opts, headers("msg_1", now, swSign("key-one", "msg_1", now, body)), body, ""},
		{"second secret (rotation)", opts, headers("msg_2", now, swSign("key-two", "msg_2", now, body)), body, ""},
		{"valid entry among several", opts,
			headers("msg_3", now, "v1a,AAAA v1,"+base64.StdEncoding.EncodeToString([]byte("nope"))+" "+swSign("key-two", "msg_3", now, body)), body, ""},
		{"within tolerance", opts, headers("msg_4", now-240, swSign("key-one", "msg_4", now-240, body)), body, ""},
		{"custom tolerance accepts older", opts + "\ntolerance: 1h", headers("msg_5", now-1800, swSign("key-one", "msg_5", now-1800, body)), body, ""},
		{"too old", opts, headers("msg_6", now-600, swSign("key-one", "msg_6", now-600, body)), body,
			"webhook-timestamp is more than 5m0s away from now"},
		{"too far in the future", opts, headers("msg_7", now+600, swSign("key-one", "msg_7", now+600, body)), body,
			"webhook-timestamp is more than 5m0s away from now"},
		{"body changed after signing", opts, headers("msg_8", now, swSign("key-one", "msg_8", now, body)), append([]byte(" "), body...),
			"webhook-signature does not match any configured secret"},
		{"id changed after signing", opts, headers("msg_other", now, swSign("key-one", "msg_9", now, body)), body,
			"webhook-signature does not match any configured secret"},
		{"unknown key", opts, headers("msg_10", now, swSign("key-three", "msg_10", now, body)), body,
			"webhook-signature does not match any configured secret"},
		{"no v1 entry", opts, headers("msg_11", now, "v1a,AAAA"), body, "webhook-signature has no v1,<base64> entry"},
		{"timestamp not a number", opts, func() http.Header {
			h := headers("msg_12", now, swSign("key-one", "msg_12", now, body))
			h.Set("webhook-timestamp", "yesterday")
			return h
		}(), body, `webhook-timestamp "yesterday" is not a Unix time in seconds`},
		{"missing headers", opts, http.Header{"Webhook-Id": {"msg_13"}}, body,
			"missing webhook-timestamp and webhook-signature headers"},
		{"missing signature", opts, func() http.Header {
			h := headers("msg_14", now, "")
			h.Del("webhook-signature")
			return h
		}(), body, "missing webhook-signature header"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustBuild(t, "secret", tt.opts, pipeline.Env{})
			e := newExport(t, tt.body, tt.header)
			err := s.Process(t.Context(), e)
			if tt.wantMsg == "" {
				passed(t, e, err)
				if got, want := e.Attrs["webhook_id"], tt.header.Get("webhook-id"); got != want {
					t.Fatalf("attr webhook_id = %q, want %q", got, want)
				}
				return
			}
			checkUnauthorized(t, err, tt.wantMsg)
			if _, ok := e.Attrs["webhook_id"]; ok {
				t.Fatal("webhook_id attr set on a rejected export")
			}
		})
	}
}

func TestSecretGitHub(t *testing.T) {
	body := samplePayload(t, "issue-crops.json")
	sign := func(key string, body []byte) string {
		m := hmac.New(sha256.New, []byte(key))
		m.Write(body)
		return "sha256=" + hex.EncodeToString(m.Sum(nil))
	}
	opts := "scheme: github\nsecrets: [" + current + ", " + previous + "]"
	tests := []struct {
		name    string
		header  http.Header
		wantMsg string
	}{
		{"current secret", http.Header{"X-Hub-Signature-256": {sign(current, body)}}, ""},
		{"previous secret", http.Header{"X-Hub-Signature-256": {sign(previous, body)}}, ""},
		{"wrong secret", http.Header{"X-Hub-Signature-256": {sign("other", body)}},
			"X-Hub-Signature-256 does not match any configured secret"},
		{"signature of another body", http.Header{"X-Hub-Signature-256": {sign(current, []byte("{}"))}},
			"X-Hub-Signature-256 does not match any configured secret"},
		{"sha1 signature", http.Header{"X-Hub-Signature-256": {"sha1=0123abcd"}},
			"X-Hub-Signature-256 must be sha256=<hex HMAC-SHA256 of the body>"},
		{"not hex", http.Header{"X-Hub-Signature-256": {"sha256=zz"}},
			"X-Hub-Signature-256 must be sha256=<hex HMAC-SHA256 of the body>"},
		{"missing", http.Header{"X-Aquarium-Secret": {current}}, "missing X-Hub-Signature-256 header"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustBuild(t, "secret", opts, pipeline.Env{})
			e := newExport(t, body, tt.header)
			err := s.Process(t.Context(), e)
			if tt.wantMsg == "" {
				passed(t, e, err)
				return
			}
			checkUnauthorized(t, err, tt.wantMsg)
		})
	}
}

func TestSecretValidate(t *testing.T) {
	tests := []struct {
		name string
		opts string
		want []string
	}{
		{"ok", "secrets: [a]", nil},
		{"no secrets", "secrets: []", []string{"secrets: at least one secret is required (secrets or secrets_file)"}},
		{"empty secret", `secrets: ["a", ""]`, []string{"secrets[1]: is empty (is the environment variable set?)"}},
		{"unknown scheme", "scheme: hmac\nsecrets: [a]", []string{`scheme: unknown scheme "hmac" (want header, standard_webhooks or github)`}},
		{"standard webhooks secret not base64", "scheme: standard_webhooks\nsecrets: [\"whsec_not base64!\", " + whsec("k") + "]",
			[]string{`secrets[0]: is not a Standard Webhooks secret (want "whsec_" followed by base64)`}},
		{"standard webhooks ignores header", "scheme: standard_webhooks\nheader: X-Sig\nsecrets: [" + whsec("k") + "]",
			[]string{"header: is not used by scheme standard_webhooks (it reads webhook-id, webhook-timestamp and webhook-signature)"}},
		{"tolerance", "scheme: standard_webhooks\ntolerance: 0s\nsecrets: [" + whsec("k") + "]", []string{"tolerance: must be > 0"}},
		{"all at once", `secrets: ["", ""]`, []string{
			"secrets[0]: is empty (is the environment variable set?)",
			"secrets[1]: is empty (is the environment variable set?)",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decode(t, "secret", tt.opts)
			got := fieldErrors(t, err)
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Fatalf("Validate() = %q, want %q", got, tt.want)
			}
			if err != nil && strings.Contains(err.Error(), "not base64!") {
				t.Fatalf("Validate() echoes a secret: %v", err)
			}
		})
	}
}

// Secrets may come from secrets_file, one a line, next to inline ones.
func TestSecretFile(t *testing.T) {
	body := samplePayload(t, "issue-frames.json")
	dir := t.TempDir()
	for name, text := range map[string]string{
		"two":   "\n" + current + "\r\n\n  " + previous + "  \n",
		"blank": "\n  \n",
		"bad":   "whsec_not base64!\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	env := pipeline.Env{ConfigDir: dir}
	tests := []struct {
		name    string
		opts    string
		pass    []string // secrets that pass
		fail    []string // secrets that do not
		wantErr string   // a build error, "" for none
	}{
		{"file only", "secrets_file: two", []string{current, previous}, []string{"guess", "two"}, ""},
		{"file and inline", "secrets: [inline]\nsecrets_file: two", []string{"inline", current, previous}, []string{"guess"}, ""},
		{"absolute path", "secrets_file: " + filepath.Join(dir, "two"), []string{current}, nil, ""},
		{"blank file", "secrets_file: blank", nil, nil, "secrets_file: " + filepath.Join(dir, "blank") + " holds no secret"},
		{"missing file", "secrets_file: nope", nil, nil, "secrets_file: open " + filepath.Join(dir, "nope") + ": no such file or directory"},
		{"bad standard webhooks line", "scheme: standard_webhooks\nsecrets_file: bad", nil, nil,
			`secrets_file: a line is not a Standard Webhooks secret (want "whsec_" followed by base64)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := build(t, "secret", tt.opts, env)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("build: %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("build: %v", err)
			}
			for _, sec := range tt.pass {
				e := newExport(t, body, http.Header{"X-Aquarium-Secret": {sec}})
				passed(t, e, s.Process(t.Context(), e))
			}
			for _, sec := range tt.fail {
				e := newExport(t, body, http.Header{"X-Aquarium-Secret": {sec}})
				checkUnauthorized(t, s.Process(t.Context(), e), "X-Aquarium-Secret does not match any configured secret")
			}
		})
	}
}
