package jsondec

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"unicode/utf8"

	"github.com/labelpipe/labelpipe/internal/testutil"
)

// FuzzDecode checks Decode against encoding/json, whose values jq, the
// schema and the sinks were written against:
//
//   - it never panics;
//   - it accepts exactly what encoding/json accepts, and then yields the
//     same value (duplicate keys: the last wins in both; a number beyond
//     float64 is refused by both; invalid UTF-8 and lone surrogates become
//     U+FFFD in both);
//   - every string it yields is valid UTF-8;
//   - what it yields re-encodes to JSON that decodes to the same value.
//
// One case is left out of the comparison: documents nested about as deep
// as the two decoders' depth limits (10000 each), where one may give up a
// level before the other. Decode must still not panic on them.
func FuzzDecode(f *testing.F) {
	for _, b := range testutil.SamplePayloads(f) {
		f.Add(b)
	}
	for _, s := range []string{
		`{"s":"x","n":-1.5e3,"i":42,"t":true,"f":false,"z":null}`,
		`{"a\"b":"line\nbreak \u00e9 \ud83d\ude00 \\ \/"}`,
		`[[],[[1,[2]]],{"k":[{}]}]`,
		`{"k":1,"k":2}`,
		`"\ud800"`, `"\udc00\ud800x"`, "\"\xff\"", "{\"k\xfe\":\"\xc0\x80\"}",
		`{"n":1e400}`, `-0`, `1E-400`, `{"a":}`, `[1,]`, ` 1 `, `1 2`, "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := Decode(in)

		if !nearDepthLimit(in) {
			var want any
			wantErr := json.Unmarshal(in, &want)
			switch {
			case (err == nil) != (wantErr == nil):
				t.Fatalf("Decode error %v, encoding/json error %v", err, wantErr)
			case err == nil && !reflect.DeepEqual(got, want):
				t.Fatalf("Decode = %#v\nencoding/json = %#v", got, want)
			}
		}
		if err != nil {
			return
		}
		if s, ok := invalidString(got); ok {
			t.Fatalf("Decode yielded a string that is not UTF-8: %q", s)
		}
		re, err := json.Marshal(got)
		if err != nil {
			t.Fatalf("re-encode %#v: %v", got, err)
		}
		again, err := Decode(re)
		if err != nil {
			t.Fatalf("Decode of the re-encoded %s: %v", re, err)
		}
		if !reflect.DeepEqual(got, again) {
			t.Fatalf("round trip changed the value:\n%#v\n%#v", got, again)
		}
	})
}

// nearDepthLimit reports whether in may open enough arrays and objects to
// reach a decoder's depth limit (it counts brackets inside strings too,
// erring on the side of skipping).
func nearDepthLimit(in []byte) bool {
	return bytes.Count(in, []byte("["))+bytes.Count(in, []byte("{")) >= 9000
}

// invalidString finds a string (a value or a key) in v that is not valid
// UTF-8.
func invalidString(v any) (string, bool) {
	switch v := v.(type) {
	case string:
		return v, !utf8.ValidString(v)
	case []any:
		for _, e := range v {
			if s, ok := invalidString(e); ok {
				return s, true
			}
		}
	case map[string]any:
		for k, e := range v {
			if !utf8.ValidString(k) {
				return k, true
			}
			if s, ok := invalidString(e); ok {
				return s, true
			}
		}
	}
	return "", false
}
