package stages_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/labelpipe/labelpipe/configs"
	"github.com/labelpipe/labelpipe/pipeline"
)

// The keys FuzzSecret's stages accept, two of each for rotation.
var (
	fuzzHeaderSecrets = []string{current, previous}
	fuzzGitHubKeys    = []string{"gh-key-one", "gh-key-two"}
	fuzzSWKeys        = []string{"sw-key-one", "sw-key-two"}
)

// FuzzSecret drives the secret stage of each scheme with arbitrary headers
// and bodies. Neither CheckHeaders nor Process may panic, and:
//
//   - CheckHeaders never calls a signature proven (github,
//     standard_webhooks: only the body can prove one); for scheme header it
//     says proven, without error, only for a configured secret;
//   - Process accepts only what carries a right secret or signature,
//     checked here independently of the stage;
//   - when the input asks for it (sign), the request is signed properly:
//     it must then be accepted, and refused once one byte of the body, or
//     one bit of the signature or secret, is changed.
//
// Standard Webhooks timestamps are checked against the clock; a signed
// request uses now, and the invariants above hold at any time.
func FuzzSecret(f *testing.F) {
	header := buildFuzzSecret(f, "secrets: ["+strings.Join(fuzzHeaderSecrets, ", ")+"]")
	github := buildFuzzSecret(f, "scheme: github\nsecrets: ["+strings.Join(fuzzGitHubKeys, ", ")+"]")
	sw := buildFuzzSecret(f, "scheme: standard_webhooks\nsecrets: ["+whsec(fuzzSWKeys[0])+", "+whsec(fuzzSWKeys[1])+"]")
	schemes := []*fuzzScheme{
		{"header", header, fuzzHeaderSecrets},
		{"github", github, fuzzGitHubKeys},
		{"standard_webhooks", sw, fuzzSWKeys},
	}

	body, err := configs.Payloads.ReadFile("payloads/issue-frames.json")
	if err != nil {
		f.Fatal(err)
	}
	now := time.Now().Unix()
	for scheme := range uint8(3) {
		// signed properly, then with each key
		f.Add(scheme, true, uint8(0), uint16(0), "", "", "msg_1", strconv.FormatInt(now, 10), body)
		f.Add(scheme, true, uint8(1), uint16(17), "", "", "msg_2", "", []byte(`{"event":"issue-exported"}`))
		f.Add(scheme, true, uint8(0), uint16(3), "", "", "", "", []byte{})
		// unsigned, with plausible and junk headers
		f.Add(scheme, false, uint8(0), uint16(0), current, "sha256="+strings.Repeat("0", 64), "msg_3", strconv.FormatInt(now, 10), body)
		f.Add(scheme, false, uint8(0), uint16(0), "", "v1,"+base64.StdEncoding.EncodeToString(make([]byte, 32)), "msg_4", "-1", []byte("x"))
		f.Add(scheme, false, uint8(0), uint16(0), "\x00", "v1a,AAAA v1,!!", "\xff", "99999999999999999999", []byte(nil))
	}

	f.Fuzz(func(t *testing.T, scheme uint8, sign bool, key uint8, flip uint16, secret, sig, id, ts string, body []byte) {
		s := schemes[int(scheme)%len(schemes)]

		// Arbitrary headers: whatever the fuzzer sends, in every header
		// any scheme reads.
		h := http.Header{}
		h.Set("X-Aquarium-Secret", secret)
		h.Set("X-Hub-Signature-256", sig)
		h.Set("Webhook-Signature", sig)
		h.Set("Webhook-Id", id)
		h.Set("Webhook-Timestamp", ts)
		s.check(t, h, body)

		if !sign {
			return
		}
		// A properly signed request, with the key the input picks.
		k := s.keys[int(key)%len(s.keys)]
		ts = strconv.FormatInt(time.Now().Unix(), 10)
		h = s.sign(k, id, ts, body)
		if proven, err := s.stage.(pipeline.HeaderChecker).CheckHeaders(h); err != nil || proven != (s.name == "header") {
			t.Fatalf("%s: CheckHeaders of a properly signed request = %v, %v", s.name, proven, err)
		}
		if err := s.process(h, body); err != nil {
			t.Fatalf("%s: properly signed request refused: %v", s.name, err)
		}

		if s.name != "header" {
			// One byte of the body changed: refused.
			changed := append([]byte(nil), body...)
			if len(changed) == 0 {
				changed = []byte{byte(flip)}
			} else {
				changed[int(flip)%len(changed)] ^= byte(flip>>8) | 1
			}
			if err := s.process(h, changed); err == nil {
				t.Fatalf("%s: accepted a body changed after signing", s.name)
			}
		}
		// One bit of the signature (or of the secret) changed: refused.
		if err := s.process(s.signFlipped(k, id, ts, body, int(flip)), body); err == nil {
			t.Fatalf("%s: accepted a signature or secret with a bit flipped", s.name)
		}
	})
}

type fuzzScheme struct {
	name  string
	stage pipeline.Stage
	keys  []string
}

func (s *fuzzScheme) process(h http.Header, body []byte) error {
	return s.stage.Process(context.Background(), &pipeline.Export{ID: "fuzz", Header: h, Body: body})
}

// check runs CheckHeaders and Process on arbitrary input and holds them
// to the invariants.
func (s *fuzzScheme) check(t *testing.T, h http.Header, body []byte) {
	proven, herr := s.stage.(pipeline.HeaderChecker).CheckHeaders(h.Clone())
	perr := s.process(h.Clone(), body)
	for _, err := range []error{herr, perr} {
		if err == nil {
			continue
		}
		if se, ok := pipeline.AsStageError(err); !ok || se.Status != http.StatusUnauthorized {
			t.Fatalf("%s: error %v is not a 401", s.name, err)
		}
		for _, k := range s.keys {
			// An answer may quote what the caller sent; a secret it
			// did not send must never appear.
			if strings.Contains(err.Error(), k) && !sent(h, k) {
				t.Fatalf("%s: error %q echoes a secret", s.name, err)
			}
		}
	}
	right := s.rightlySigned(h, body)
	switch {
	case s.name == "header" && proven && herr == nil && !right:
		t.Fatalf("header: CheckHeaders proved %q, which is no configured secret", h.Get("X-Aquarium-Secret"))
	case s.name == "header" && (proven && herr == nil) != (perr == nil):
		t.Fatalf("header: CheckHeaders (%v, %v) and Process (%v) disagree", proven, herr, perr)
	case s.name != "header" && proven:
		t.Fatalf("%s: CheckHeaders said proven, but only the body can prove a signature", s.name)
	case s.name != "header" && perr != nil && herr == nil && right:
		t.Fatalf("%s: refused a right signature: %v", s.name, perr)
	case s.name != "header" && herr != nil && perr == nil:
		t.Fatalf("%s: Process accepted what CheckHeaders refused (%v)", s.name, herr)
	case perr == nil && !right:
		t.Fatalf("%s: accepted headers %v without a right secret or signature", s.name, h)
	}
}

// sent reports whether any header value contains s.
func sent(h http.Header, s string) bool {
	for _, vs := range h {
		for _, v := range vs {
			if strings.Contains(v, s) {
				return true
			}
		}
	}
	return false
}

// rightlySigned reports, independently of the stage, whether h carries a
// right secret or signature for body. For standard_webhooks it ignores
// the timestamp window, which only makes the stage refuse more.
func (s *fuzzScheme) rightlySigned(h http.Header, body []byte) bool {
	switch s.name {
	case "header":
		got := h.Get("X-Aquarium-Secret")
		for _, k := range s.keys {
			if got == k {
				return true
			}
		}
	case "github":
		hexSig, ok := strings.CutPrefix(h.Get("X-Hub-Signature-256"), "sha256=")
		sig, err := hex.DecodeString(hexSig)
		if !ok || err != nil {
			return false
		}
		for _, k := range s.keys {
			if hmac.Equal(sig, mac(k, body)) {
				return true
			}
		}
	case "standard_webhooks":
		signedContent := []byte(h.Get("Webhook-Id") + "." + h.Get("Webhook-Timestamp") + ".")
		signedContent = append(signedContent, body...)
		for _, entry := range strings.Fields(h.Get("Webhook-Signature")) {
			b64, ok := strings.CutPrefix(entry, "v1,")
			sig, err := base64.StdEncoding.DecodeString(b64)
			if !ok || err != nil {
				continue
			}
			for _, k := range s.keys {
				if hmac.Equal(sig, mac(k, signedContent)) {
					return true
				}
			}
		}
	}
	return false
}

// sign returns the headers of a request properly signed with key k.
func (s *fuzzScheme) sign(k, id, ts string, body []byte) http.Header {
	return s.signFlipped(k, id, ts, body, -1)
}

// signFlipped is sign with bit (bit mod the signature's bits) of the
// signature or secret flipped; bit < 0 flips none.
func (s *fuzzScheme) signFlipped(k, id, ts string, body []byte, bit int) http.Header {
	var sig []byte
	switch s.name {
	case "header":
		sig = []byte(k)
	case "github":
		sig = mac(k, body)
	default:
		if id == "" {
			id = "msg_fuzz"
		}
		sig = mac(k, append([]byte(id+"."+ts+"."), body...))
	}
	if bit >= 0 {
		sig = bytes.Clone(sig)
		sig[bit/8%len(sig)] ^= 1 << (bit % 8)
	}
	h := http.Header{}
	switch s.name {
	case "header":
		h.Set("X-Aquarium-Secret", string(sig))
	case "github":
		h.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(sig))
	default:
		h.Set("Webhook-Id", id)
		h.Set("Webhook-Timestamp", ts)
		h.Set("Webhook-Signature", "v1,"+base64.StdEncoding.EncodeToString(sig))
	}
	return h
}

func mac(key string, b []byte) []byte {
	m := hmac.New(sha256.New, []byte(key))
	m.Write(b)
	return m.Sum(nil)
}

// buildFuzzSecret builds a secret stage from YAML options, as build does
// for a *testing.T.
func buildFuzzSecret(f *testing.F, opts string) pipeline.Stage {
	f.Helper()
	st, _ := registry().Stage("secret")
	cfg := st.Config()
	if err := yaml.UnmarshalWithOptions([]byte(opts), cfg, yaml.Strict()); err != nil {
		f.Fatal(err)
	}
	if err := cfg.(pipeline.Validator).Validate(); err != nil {
		f.Fatal(err)
	}
	s, err := st.Build(cfg, pipeline.Env{Name: "secret", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	return s
}
