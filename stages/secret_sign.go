package stages

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// SecretSchemes are the schemes the secret stage verifies, and Sign signs.
var SecretSchemes = []string{SchemeHeader, SchemeStandardWebhooks, SchemeGitHub}

// Sign sets on h what a caller of scheme sends with body, so that a secret
// stage of that scheme holding secret accepts it: the secret itself in
// header (scheme header; default X-Aquarium-Secret), X-Hub-Signature-256
// (github; header overrides the name), or webhook-id, webhook-timestamp
// (now) and webhook-signature (standard_webhooks; secret is "whsec_…").
// `labelpipe send` uses it; it lives beside the checks it must pass.
func Sign(h http.Header, scheme, header, secret string, body []byte, now time.Time) error {
	switch scheme {
	case SchemeHeader:
		if header == "" {
			header = "X-Aquarium-Secret"
		}
		h.Set(header, secret)
	case SchemeGitHub:
		if header == "" {
			header = "X-Hub-Signature-256"
		}
		m := hmac.New(sha256.New, []byte(secret))
		m.Write(body)
		h.Set(header, "sha256="+hex.EncodeToString(m.Sum(nil)))
	case SchemeStandardWebhooks:
		key, err := standardWebhooksKey(secret)
		if err != nil {
			return fmt.Errorf("secret %s", err)
		}
		id := "msg_" + rand.Text()
		ts := strconv.FormatInt(now.Unix(), 10)
		m := hmac.New(sha256.New, key)
		m.Write([]byte(id + "." + ts + "."))
		m.Write(body)
		h.Set("webhook-id", id)
		h.Set("webhook-timestamp", ts)
		h.Set("webhook-signature", "v1,"+base64.StdEncoding.EncodeToString(m.Sum(nil)))
	default:
		return fmt.Errorf("unknown scheme %q (want header, standard_webhooks or github)", scheme)
	}
	return nil
}
