package jsondec

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/go-json-experiment/json/jsontext"
)

// newDecoder gives a decoder of its own, outside the pool, so a test can
// look at its table of shared strings after decoding.
func newDecoder(doc string) *decoder {
	d := &decoder{strs: make(map[string]any)}
	d.dec = jsontext.NewDecoder(bytes.NewBufferString(doc), jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))
	return d
}

// A string up to maxInternLen bytes long is shared; a longer one is not.
func TestInternsOnlyShortStrings(t *testing.T) {
	short := strings.Repeat("s", maxInternLen)
	long := strings.Repeat("l", maxInternLen+1)
	d := newDecoder(`["` + short + `","` + long + `"]`)
	v, err := d.value()
	if err != nil {
		t.Fatal(err)
	}
	if got := v.([]any); len(got) != 2 || got[0] != short || got[1] != long {
		t.Fatalf("decoded %v", v)
	}
	if _, ok := d.strs[short]; !ok {
		t.Errorf("a %d-byte string was not shared", len(short))
	}
	if _, ok := d.strs[long]; ok {
		t.Errorf("a %d-byte string was shared; only up to %d bytes are", len(long), maxInternLen)
	}
}

// The table takes new strings until it holds maxInterned of them, and
// then no more.
func TestInternTableStopsAtItsBound(t *testing.T) {
	d := newDecoder(`["last-fits","one-too-many"]`)
	for i := range maxInterned - 1 {
		k := fmt.Sprint(i)
		d.strs[k] = k
	}
	if _, err := d.value(); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.strs["last-fits"]; !ok {
		t.Errorf("the table refused its %dth string", maxInterned)
	}
	if _, ok := d.strs["one-too-many"]; ok {
		t.Errorf("the table grew past %d strings", maxInterned)
	}
	if len(d.strs) != maxInterned {
		t.Errorf("the table holds %d strings, want %d", len(d.strs), maxInterned)
	}
}

// release empties the table once it is full, so the next document starts
// sharing afresh, and keeps a table that still has room.
func TestReleaseClearsOnlyAFullTable(t *testing.T) {
	for _, n := range []int{1, maxInterned - 1, maxInterned} {
		d := newDecoder(`null`)
		for i := range n {
			k := fmt.Sprint(i)
			d.strs[k] = k
		}
		d.release()
		want := n
		if n >= maxInterned {
			want = 0
		}
		if len(d.strs) != want {
			t.Errorf("release with %d shared strings left %d, want %d", n, len(d.strs), want)
		}
	}
}
