package jsondec

import (
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"
)

// Decode must yield exactly what encoding/json does for an any, since
// jq, the schema and the sinks were written against those values.
func TestDecodeJSONMatchesEncodingJSON(t *testing.T) {
	sample, err := os.ReadFile("../../../configs/payloads/issue-10-elements.json")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, in string
	}{
		{"sample export", string(sample)},
		{"scalars", `{"s":"x","n":-1.5e3,"i":42,"t":true,"f":false,"z":null}`},
		{"escapes", `{"a\"b":"line\nbreak \u00e9 \ud83d\ude00 \\ \/"}`},
		{"nested arrays", `[[],[[1,[2]]],{"k":[{}]}]`},
		{"repeated keys and values", `[{"k":"v","k2":"v"},{"k":"v","k2":"w"}]`},
		{"duplicate key, last wins", `{"k":1,"k":2}`},
		{"long strings", `{"` + strings.Repeat("k", 100) + `":"` + strings.Repeat("v", 100) + `"}`},
		{"top-level string", `"just a string"`},
		// encoding/json turns invalid UTF-8 and lone surrogates into
		// U+FFFD rather than refusing the document; so must Decode.
		{"lone high surrogate", `"\ud800"`},
		{"lone low surrogate", `{"s":"\udc00"}`},
		{"lone surrogate in a key", `{"a\ud800b":1}`},
		{"two high surrogates", `["\ud800\ud800"]`},
		{"high surrogate then a non-surrogate escape", `"\ud800\u0041\n"`},
		{"high surrogate at the end of a string", `"x\ud83d"`},
		{"invalid byte", "{\"s\":\"\xff\"}"},
		{"invalid bytes in a key", "{\"k\xfe\":\"v\"}"},
		{"overlong encoding", "\"\xc0\x80\""},
		{"truncated sequence", "\"a\xe2\x82\""},
		{"encoded surrogate", "\"\xed\xa0\x80\""},
		{"invalid byte beside an escape", "\"\xff\\n\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var want any
			if err := json.Unmarshal([]byte(tt.in), &want); err != nil {
				t.Fatalf("encoding/json: %v", err)
			}
			got, err := Decode([]byte(tt.in))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Decode = %#v\nwant %#v", got, want)
			}
		})
	}
}

// Lone surrogates and invalid bytes become U+FFFD, spelled out here so
// the comparison with encoding/json above is not the only witness.
func TestDecodeReplacesInvalidUTF8(t *testing.T) {
	for in, want := range map[string]string{
		`"\ud800"`:             "\ufffd",
		`"a\udfffb"`:           "a\ufffdb",
		`"\ud800\ud800"`:       "\ufffd\ufffd",
		`"\ud83d\ude00\ud800"`: "\U0001F600\ufffd",
		"\"\xff\"":             "\ufffd",
		"\"x\xffy\"":           "x\ufffdy",
	} {
		got, err := Decode([]byte(in))
		if err != nil {
			t.Errorf("Decode(%q): %v", in, err)
			continue
		}
		if got != want {
			t.Errorf("Decode(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDecodeJSONRejects(t *testing.T) {
	for _, in := range []string{
		`{"a":}`, `{"a":1,}`, `[1 2]`, `{"a":1} {"b":2}`, `{"a":1} x`, `{"a"`, `{'a':1}`,
		`{"n":1e400}`, `{"s":"\x"}`,
		// allowing invalid UTF-8 lets no invalid syntax through
		`"\ud800`, `"\ud80"`, `"\ud800\x"`, `"\u12"`, "\"a\nb\"", "\"\xff", "\xff", `{"a\ud800":}`,
		strings.Repeat("[", 20000) + strings.Repeat("]", 20000), // deeper than any export
	} {
		if v, err := Decode([]byte(in)); err == nil {
			t.Errorf("Decode(%q) = %#v, want an error", in, v)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	raw, err := os.ReadFile("../../../configs/payloads/issue-10-elements.json")
	if err != nil {
		b.Fatal(err)
	}
	b.Run("encoding-json", func(b *testing.B) {
		b.SetBytes(int64(len(raw)))
		b.ReportAllocs()
		for b.Loop() {
			var v any
			if err := json.Unmarshal(raw, &v); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Decode", func(b *testing.B) {
		b.SetBytes(int64(len(raw)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := Decode(raw); err != nil {
				b.Fatal(err)
			}
		}
	})
}
