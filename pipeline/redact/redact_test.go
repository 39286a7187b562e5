package redact_test

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"testing"

	"github.com/labelpipe/labelpipe/pipeline/redact"
)

func TestString(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"plain URL is kept", "https://api.example.com/v1/task?project=7", "https://api.example.com/v1/task?project=7"},
		{"slack-style token segment", "https://hooks.example/services/T0A1B2C3D/B0E4F5G6H/4Ko7ZxB5mPBQl0Vrmu1LbqHk",
			"https://hooks.example/services/T0A1B2C3D/B0E4F5G6H/REDACTED"},
		{"discord-style id and token", "https://discord.example/api/webhooks/112233445566778899/aB3-dE5_fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5zA7bC9dE1fG3hI5jK7lM9nO1pQ3rS5tU7vW9",
			"https://discord.example/api/webhooks/REDACTED/REDACTED"},
		{"hex token segment", "https://in.example/hook/9f86d081884c7d659a2feaa0c55ad015", "https://in.example/hook/REDACTED"},
		{"uuid segment", "https://in.example/hook/123e4567-e89b-12d3-a456-426614174000/x", "https://in.example/hook/REDACTED/x"},
		{"long mixed-case token without digits", "https://in.example/t/AbCdEfGhIjKlMnOpQrStUvWxYz", "https://in.example/t/REDACTED"},
		{"long words are kept", "https://api.example.com/v1/imageannotation/batch_annotations-submit",
			"https://api.example.com/v1/imageannotation/batch_annotations-submit"},
		{"camel case word is kept", "https://api.example.com/IncomingWebhookTasks", "https://api.example.com/IncomingWebhookTasks"},
		{"escaped token segment", "https://in.example/h/abc%2Bdef0123456789xyz", "https://in.example/h/REDACTED"},
		{"sig, token, key, api_key, signature, access_token",
			"https://x.example/p?sig=S1&token=S2&key=S3&api_key=S4&signature=S5&access_token=S6&project=7",
			"https://x.example/p?sig=REDACTED&token=REDACTED&key=REDACTED&api_key=REDACTED&signature=REDACTED&access_token=REDACTED&project=7"},
		{"names are case-insensitive", "https://x.example/p?SIG=S1&Api_Key=S2&X-Amz-Signature=S3",
			"https://x.example/p?SIG=REDACTED&Api_Key=REDACTED&X-Amz-Signature=REDACTED"},
		{"azure functions code", "https://f.example/api/hook?code=S1", "https://f.example/api/hook?code=REDACTED"},
		{"a parameter without value", "https://x.example/p?token&a=1", "https://x.example/p?token=REDACTED&a=1"},
		{"password hidden, user kept", "redis://default:S3CR3T@redis.internal:6379/0", "redis://default:REDACTED@redis.internal:6379/0"},
		{"password only", "redis://:S3CR3T@redis.internal:6379", "redis://:REDACTED@redis.internal:6379"},
		{"user that is a key", "https://live_4Ko7ZxB5mPBQl0Vrmu1L@api.example.com/v1", "https://REDACTED@api.example.com/v1"},
		{"fragment", "https://x.example/cb#access_token=S1", "https://x.example/cb#REDACTED"},
		{"unparseable", "https://x.example/%zz?sig=S1", redact.Unparseable},
		{"empty", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := redact.String(tc.in); got != tc.want {
				t.Errorf("String(%q)\n got %q\nwant %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestURLLeavesItsArgument(t *testing.T) {
	raw := "https://u:pw@x.example/h/4Ko7ZxB5mPBQl0Vrmu1LbqHk?sig=S1"
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	_ = redact.URL(u)
	if u.String() != raw {
		t.Errorf("URL changed its argument to %q", u.String())
	}
}

func TestSensitive(t *testing.T) {
	tests := []struct {
		name string
		want bool
	}{
		{"sig", true}, {"Signature", true}, {"token", true}, {"access_token", true}, {"api_key", true},
		{"apiKey", true}, {"key", true}, {"Authorization", true}, {"X-Amz-Credential", true}, {"password", true},
		{"client_secret", true}, {"code", true},
		{"project", false}, {"page", false}, {"signed", false}, {"design", false}, {"id", false},
	}
	for _, tc := range tests {
		if got := redact.Sensitive(tc.name); got != tc.want {
			t.Errorf("Sensitive(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestError(t *testing.T) {
	const secret = "4Ko7ZxB5mPBQl0Vrmu1LbqHk"
	raw := "https://hooks.example/services/T0/B0/" + secret + "?sig=" + secret
	ue := &url.Error{Op: "Post", URL: raw, Err: io.ErrUnexpectedEOF}
	tests := []struct {
		name string
		err  error
	}{
		{"url.Error", ue},
		{"wrapped url.Error", fmt.Errorf("deliver: %w", ue)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := redact.Error(tc.err)
			if strings.Contains(got.Error(), secret) {
				t.Errorf("Error() = %q, still holds the secret", got)
			}
			if !strings.Contains(got.Error(), "hooks.example/services/T0/B0/REDACTED?sig=REDACTED") {
				t.Errorf("Error() = %q, want the redacted URL in it", got)
			}
			if !errors.Is(got, io.ErrUnexpectedEOF) {
				t.Errorf("Error() = %v no longer unwraps to its cause", got)
			}
		})
	}
	if plain := errors.New("no url here"); redact.Error(plain) != plain {
		t.Error("an error without a URL was changed")
	}
}
