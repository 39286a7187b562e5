package stages

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labelpipe/labelpipe/pipeline"
)

// The secret stage checks that a webhook comes from who it claims to.
//
// Aquarium sends its org-wide secret in plain text in X-Aquarium-Secret
// (scheme "header"). Callers that sign their requests are checked with
// scheme "standard_webhooks" (webhook-id, webhook-timestamp and
// webhook-signature, HMAC-SHA256 over "id.timestamp.body") or "github"
// (X-Hub-Signature-256, HMAC-SHA256 over the body). Several secrets may be
// valid at once so that rotating one drops nothing: list the new and the
// old secret while Aquarium switches over. Every comparison is in constant
// time, and no secret is ever logged or echoed. An empty secret is a
// config error, since it almost always means an unset variable. Secrets
// may also come from a file (secrets_file, one a line), such as a mounted
// secret: a reload (SIGHUP) re-reads it when its content changed.
//
//	- type: secret
//	  secrets: ["${AQUARIUM_SECRET}"]

// Secret schemes.
const (
	SchemeHeader           = "header"
	SchemeStandardWebhooks = "standard_webhooks"
	SchemeGitHub           = "github"
)

// SecretConfig configures the secret stage.
type SecretConfig struct {
	// Scheme is how the secret is presented: header (default, the secret
	// itself in a header), standard_webhooks or github (signatures).
	Scheme string `yaml:"scheme"`
	// Header carries the secret or signature. Default X-Aquarium-Secret for
	// scheme header, X-Hub-Signature-256 for github; standard_webhooks uses
	// its own fixed headers and ignores it.
	Header string `yaml:"header"`
	// Secrets are the accepted secrets; any one of them passes. Required
	// unless secrets_file is set. For standard_webhooks each is "whsec_"
	// followed by base64.
	Secrets []string `yaml:"secrets"`
	// SecretsFile names a file of more accepted secrets, one a line
	// (blank lines ignored), relative to the config file. A reload
	// re-reads it when its content changed.
	SecretsFile string `yaml:"secrets_file"`
	// Tolerance is how far webhook-timestamp may be from now
	// (standard_webhooks only); default 5m.
	Tolerance time.Duration `yaml:"tolerance"`
}

// SecretDefaults returns the secret stage's default config.
func SecretDefaults() *SecretConfig {
	return &SecretConfig{Scheme: SchemeHeader, Tolerance: 5 * time.Minute}
}

// Validate checks the config without I/O. Messages never include a secret.
func (c *SecretConfig) Validate() error {
	var errs []error
	switch c.Scheme {
	case SchemeHeader, SchemeStandardWebhooks, SchemeGitHub:
	default:
		errs = append(errs, pipeline.FieldErr("scheme", "unknown scheme %q (want header, standard_webhooks or github)", c.Scheme))
	}
	if c.Scheme == SchemeStandardWebhooks && c.Header != "" {
		errs = append(errs, pipeline.FieldErr("header", "is not used by scheme standard_webhooks (it reads webhook-id, webhook-timestamp and webhook-signature)"))
	}
	if len(c.Secrets) == 0 && c.SecretsFile == "" {
		errs = append(errs, pipeline.FieldErr("secrets", "at least one secret is required (secrets or secrets_file)"))
	}
	for i, s := range c.Secrets {
		field := fmt.Sprintf("secrets[%d]", i)
		if s == "" {
			errs = append(errs, pipeline.FieldErr(field, "is empty (is the environment variable set?)"))
			continue
		}
		if c.Scheme == SchemeStandardWebhooks {
			if _, err := standardWebhooksKey(s); err != nil {
				errs = append(errs, pipeline.FieldErr(field, "%v", err))
			}
		}
	}
	if c.Scheme == SchemeStandardWebhooks && c.Tolerance <= 0 {
		errs = append(errs, pipeline.FieldErr("tolerance", "must be > 0"))
	}
	return errors.Join(errs...)
}

// standardWebhooksKey decodes a "whsec_<base64>" secret into its HMAC key.
func standardWebhooksKey(s string) ([]byte, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(s, "whsec_"))
	if err != nil || len(key) == 0 {
		return nil, errors.New(`is not a Standard Webhooks secret (want "whsec_" followed by base64)`)
	}
	return key, nil
}

func buildSecret(c *SecretConfig, env pipeline.Env) (pipeline.Stage, error) {
	s := &Secret{scheme: c.Scheme, header: c.Header, tolerance: c.Tolerance, now: time.Now}
	if s.header == "" {
		s.header = "X-Aquarium-Secret"
		if c.Scheme == SchemeGitHub {
			s.header = "X-Hub-Signature-256"
		}
	}
	secrets := c.Secrets
	if c.SecretsFile != "" {
		b, err := env.ReadFile(c.SecretsFile)
		if err != nil {
			return nil, fmt.Errorf("secrets_file: %w", err)
		}
		n := len(secrets)
		for line := range strings.Lines(string(b)) {
			if line = strings.TrimSpace(line); line != "" {
				secrets = append(secrets, line)
			}
		}
		if len(secrets) == n {
			return nil, fmt.Errorf("secrets_file: %s holds no secret", env.Path(c.SecretsFile))
		}
	}
	for i, sec := range secrets {
		switch c.Scheme {
		case SchemeHeader:
			// Comparing digests keeps the comparison constant-time even
			// when the lengths differ.
			sum := sha256.Sum256([]byte(sec))
			s.keys = append(s.keys, sum[:])
		case SchemeGitHub:
			s.keys = append(s.keys, []byte(sec))
		case SchemeStandardWebhooks:
			key, err := standardWebhooksKey(sec)
			if err != nil {
				if i >= len(c.Secrets) {
					return nil, fmt.Errorf("secrets_file: a line %w", err)
				}
				return nil, err
			}
			s.keys = append(s.keys, key)
		}
	}
	return s, nil
}

// Secret is the secret stage.
type Secret struct {
	scheme    string
	header    string
	keys      [][]byte // sha256 of each secret (header) or HMAC keys
	tolerance time.Duration
	now       func() time.Time
}

// Process passes the export on if its secret or signature is valid, and
// answers 401 otherwise.
func (s *Secret) Process(_ context.Context, e *pipeline.Export) error {
	switch s.scheme {
	case SchemeStandardWebhooks:
		return s.checkStandardWebhooks(e)
	case SchemeGitHub:
		return s.checkGitHub(e)
	default:
		return s.checkHeader(e.Header)
	}
}

// CheckHeaders checks what the headers alone can tell, before the body is
// read: the whole secret for scheme header; the presence, format and (for
// Standard Webhooks) timestamp window of a signature, which only the body
// can then prove.
func (s *Secret) CheckHeaders(h http.Header) (proven bool, err error) {
	switch s.scheme {
	case SchemeStandardWebhooks:
		_, err = s.standardWebhooksHeaders(h)
		return false, err
	case SchemeGitHub:
		_, err = s.gitHubHeader(h)
		return false, err
	default:
		return true, s.checkHeader(h)
	}
}

// RawOnly marks the stage as reading only headers and the raw body, so it
// runs before the body is parsed: a bad secret costs no parse.
func (s *Secret) RawOnly() {}

func unauthorized(format string, args ...any) error {
	return pipeline.Reject(http.StatusUnauthorized, format, args...)
}

func (s *Secret) checkHeader(h http.Header) error {
	got := h.Get(s.header)
	if got == "" {
		return unauthorized("missing %s header", s.header)
	}
	sum := sha256.Sum256([]byte(got))
	if !anyEqual(s.keys, func(key []byte) []byte { return key }, sum[:]) {
		return unauthorized("%s does not match any configured secret", s.header)
	}
	return nil
}

// gitHubHeader returns the signature the header carries.
func (s *Secret) gitHubHeader(h http.Header) ([]byte, error) {
	got := h.Get(s.header)
	if got == "" {
		return nil, unauthorized("missing %s header", s.header)
	}
	hexSig, ok := strings.CutPrefix(got, "sha256=")
	sig, err := hex.DecodeString(hexSig)
	if !ok || err != nil || len(sig) != sha256.Size {
		return nil, unauthorized("%s must be sha256=<hex HMAC-SHA256 of the body>", s.header)
	}
	return sig, nil
}

func (s *Secret) checkGitHub(e *pipeline.Export) error {
	sig, err := s.gitHubHeader(e.Header)
	if err != nil {
		return err
	}
	match := anyEqual(s.keys, func(key []byte) []byte {
		m := hmac.New(sha256.New, key)
		m.Write(e.Body)
		return m.Sum(nil)
	}, sig)
	if !match {
		return unauthorized("%s does not match any configured secret", s.header)
	}
	return nil
}

// signed is what Standard Webhooks headers carry.
type signed struct {
	id, ts     string
	candidates [][]byte // the v1 signatures
}

func (s *Secret) standardWebhooksHeaders(h http.Header) (signed, error) {
	id, ts, sigs := h.Get("webhook-id"), h.Get("webhook-timestamp"), h.Get("webhook-signature")
	var missing []string
	for _, h := range []struct{ name, v string }{{"webhook-id", id}, {"webhook-timestamp", ts}, {"webhook-signature", sigs}} {
		if h.v == "" {
			missing = append(missing, h.name)
		}
	}
	switch len(missing) {
	case 0:
	case 1:
		return signed{}, unauthorized("missing %s header", missing[0])
	default:
		return signed{}, unauthorized("missing %s and %s headers", strings.Join(missing[:len(missing)-1], ", "), missing[len(missing)-1])
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return signed{}, unauthorized("webhook-timestamp %q is not a Unix time in seconds", ts)
	}
	if d := s.now().Sub(time.Unix(sec, 0)); d > s.tolerance || d < -s.tolerance {
		return signed{}, unauthorized("webhook-timestamp is more than %s away from now", s.tolerance)
	}
	out := signed{id: id, ts: ts}
	for _, entry := range strings.Fields(sigs) {
		version, b64, ok := strings.Cut(entry, ",")
		if !ok || version != "v1" {
			continue // other versions (v1a: asymmetric) are not ours to check
		}
		if sig, err := base64.StdEncoding.DecodeString(b64); err == nil {
			out.candidates = append(out.candidates, sig)
		}
	}
	if len(out.candidates) == 0 {
		return signed{}, unauthorized("webhook-signature has no v1,<base64> entry")
	}
	return out, nil
}

func (s *Secret) checkStandardWebhooks(e *pipeline.Export) error {
	sw, err := s.standardWebhooksHeaders(e.Header)
	if err != nil {
		return err
	}
	prefix := []byte(sw.id + "." + sw.ts + ".")
	match := anyEqual(s.keys, func(key []byte) []byte {
		m := hmac.New(sha256.New, key)
		m.Write(prefix)
		m.Write(e.Body) // not copied: a body may be 32 MiB
		return m.Sum(nil)
	}, sw.candidates...)
	if !match {
		return unauthorized("webhook-signature does not match any configured secret")
	}
	e.SetAttr(pipeline.AttrWebhookID, sw.id)
	return nil
}

// anyEqual reports whether want(key) equals any candidate for any key. It
// does every comparison, so the time taken says nothing about which
// secret or entry matched.
func anyEqual(keys [][]byte, want func(key []byte) []byte, candidates ...[]byte) bool {
	match := 0
	for _, key := range keys {
		w := want(key)
		for _, c := range candidates {
			match |= subtle.ConstantTimeCompare(w, c)
		}
	}
	return match == 1
}

var (
	_ pipeline.Stage         = (*Secret)(nil)
	_ pipeline.RawStage      = (*Secret)(nil)
	_ pipeline.HeaderChecker = (*Secret)(nil)
)
