// Package redact hides the secrets a URL may carry before it is logged,
// stored with a dead letter or put on a span, while keeping enough of it
// (scheme, host, the shape of the path) to tell which endpoint it was.
//
// It hides:
//   - the password of the userinfo, and the user name too when it looks
//     like a key;
//   - the values of query parameters whose names say they are credentials
//     (see Sensitive);
//   - path segments that look like opaque tokens, as in webhook URLs that
//     are their own credential (https://hooks.example/services/T0/B0/<token>):
//     16 characters or more of the base64url alphabet with a digit, or 24 or
//     more with both cases;
//   - the fragment.
//
// It is a heuristic: a token of only lowercase letters in a path, or a
// credential under an innocuous parameter name, is not recognised.
package redact

import (
	"errors"
	"net/url"
	"strings"
)

// Redacted stands in for whatever was hidden.
const Redacted = "REDACTED"

// Unparseable stands in for a URL that does not parse: its parts cannot be
// told apart, so none of it is shown.
const Unparseable = "(unparseable url)"

// sensitiveNames are parameter and header names that are credentials
// whatever else they say; sensitiveParts make any name that contains them
// one. Both are compared in lower case.
var (
	sensitiveNames = []string{"sig", "code", "pwd", "session", "cookie", "jwt"}
	sensitiveParts = []string{"token", "secret", "key", "password", "passwd", "signature", "auth", "credential"}
)

// Sensitive reports whether a query parameter or header of this name
// carries a credential: sig, code (Azure Functions keys), and any name
// containing token, secret, key, password, signature, auth or credential
// (api_key, access_token, X-Amz-Signature, Authorization, …). Case does
// not matter.
func Sensitive(name string) bool {
	n := strings.ToLower(name)
	for _, s := range sensitiveNames {
		if n == s {
			return true
		}
	}
	for _, s := range sensitiveParts {
		if strings.Contains(n, s) {
			return true
		}
	}
	return false
}

// URL returns u as a string with its secrets hidden. u is not changed.
func URL(u *url.URL) string {
	if u == nil {
		return ""
	}
	c := *u
	if c.User != nil {
		name := c.User.Username()
		if opaque(name) {
			name = Redacted
		}
		if _, ok := c.User.Password(); ok {
			c.User = url.UserPassword(name, Redacted)
		} else {
			c.User = url.User(name)
		}
	}
	if c.Opaque != "" {
		c.Opaque = Redacted // mailto:…, urn:…: no structure to keep
	}
	if ep, ok := redactPath(u.EscapedPath()); ok {
		c.RawPath = ep
		if p, err := url.PathUnescape(ep); err == nil {
			c.Path = p
		}
	}
	c.RawQuery = redactQuery(c.RawQuery)
	if c.Fragment != "" || c.RawFragment != "" {
		c.Fragment, c.RawFragment = Redacted, ""
	}
	return c.String()
}

// String is URL for a URL not yet parsed. One that does not parse is
// shown as Unparseable: a parse error would quote it whole.
func String(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return Unparseable
	}
	return URL(u)
}

// Error returns err with the URL of the *url.Error it holds (as
// http.Client.Do and url.Parse return) redacted; other errors come back
// as they are. The result still unwraps to err's causes.
func Error(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	safe := String(ue.URL)
	if err == error(ue) {
		return &url.Error{Op: ue.Op, URL: safe, Err: ue.Err}
	}
	// Deeper in a chain: rewrite the message; the chain stays for errors.Is.
	return &rewritten{msg: strings.ReplaceAll(err.Error(), ue.URL, safe), err: err}
}

type rewritten struct {
	msg string
	err error
}

func (r *rewritten) Error() string { return r.msg }
func (r *rewritten) Unwrap() error { return r.err }

// redactPath replaces opaque segments of an escaped path, and reports
// whether it replaced any.
func redactPath(escaped string) (string, bool) {
	segs := strings.Split(escaped, "/")
	changed := false
	for i, s := range segs {
		raw, err := url.PathUnescape(s)
		if err != nil {
			raw = s
		}
		if opaque(raw) {
			segs[i] = Redacted
			changed = true
		}
	}
	return strings.Join(segs, "/"), changed
}

// redactQuery replaces the values of sensitive parameters, keeping the
// order and encoding of the rest.
func redactQuery(raw string) string {
	if raw == "" {
		return raw
	}
	parts := strings.Split(raw, "&")
	for i, p := range parts {
		k, _, _ := strings.Cut(p, "=")
		name, err := url.QueryUnescape(k)
		if err != nil {
			name = k
		}
		if Sensitive(name) {
			parts[i] = k + "=" + Redacted
		}
	}
	return strings.Join(parts, "&")
}

// opaque says whether s looks like a token rather than a word: long, of
// the base64url alphabet (plus the separators of UUID pairs and the like),
// and with a digit, or long enough and mixing cases. Words and slugs have
// neither.
func opaque(s string) bool {
	if len(s) < 16 {
		return false
	}
	var digit, upper, lower bool
	for _, r := range s {
		switch {
		case r >= '0' && r <= '9':
			digit = true
		case r >= 'A' && r <= 'Z':
			upper = true
		case r >= 'a' && r <= 'z':
			lower = true
		case strings.ContainsRune("-_+=.~@", r):
		default:
			return false
		}
	}
	return digit || (len(s) >= 24 && upper && lower)
}
