// Package jsondec decodes webhook bodies into the values jq works on, sharing
// repeated keys and short strings to keep a large export small in memory.
package jsondec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"
)

// Decode decodes a JSON document into the values jq works on
// (map[string]any, []any, string, float64, bool and nil), as
// encoding/json would into an any, but sharing one copy of each object
// key and of each short string value that repeats. An export repeats the
// same field names and enum values in every element: sharing them makes
// the decoded tree about 40% smaller and saves a quarter of the
// allocations, which the garbage collector would otherwise pay for again.
//
// Like encoding/json, it replaces invalid UTF-8 and lone UTF-16 surrogate
// escapes ("\ud800") in strings with U+FFFD rather than refusing the
// document: a caller that sent such a string gets it accepted, mangled
// the same way encoding/json would mangle it.
func Decode(b []byte) (any, error) {
	d := decoders.Get().(*decoder)
	defer d.release()
	d.dec.Reset(bytes.NewBuffer(b), jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))
	v, err := d.value()
	if err == nil {
		if _, err = d.dec.ReadToken(); err == nil {
			err = errors.New("unexpected data after the top-level value")
		} else if errors.Is(err, io.EOF) {
			err = nil
		}
	}
	return v, err
}

// maxInterned bounds the table of shared strings per document; a string
// longer than maxInternLen is taken to be unique (an id, a URL).
const (
	maxInterned  = 4096
	maxInternLen = 32
)

var decoders = sync.Pool{New: func() any {
	d := &decoder{strs: make(map[string]any, 256)}
	d.dec = jsontext.NewDecoder(&d.empty)
	return d
}}

type decoder struct {
	dec   *jsontext.Decoder
	empty bytes.Buffer   // read from when idle, so the pool keeps no body
	strs  map[string]any // shared strings, already boxed
	kvs   []kv           // scratch for the object being read, to size its map once
	vals  []any          // scratch for the array being read
}

type kv struct {
	k string
	v any
}

func (d *decoder) release() {
	d.dec.Reset(&d.empty)
	if len(d.strs) >= maxInterned {
		clear(d.strs)
	}
	// object and array zero what they pop; an error leaves the rest below
	// len. Clearing up to cap would cost a large export's size every time.
	clear(d.kvs)
	clear(d.vals)
	d.kvs, d.vals = d.kvs[:0], d.vals[:0]
	decoders.Put(d)
}

func (d *decoder) value() (any, error) {
	switch d.dec.PeekKind() {
	case '{':
		return d.object()
	case '[':
		return d.array()
	}
	raw, err := d.dec.ReadValue()
	if err != nil {
		return nil, err
	}
	switch raw.Kind() {
	case '"':
		return d.str(raw)
	case '0':
		f, err := strconv.ParseFloat(string(raw), 64)
		if err != nil {
			return nil, fmt.Errorf("number %s does not fit in a 64-bit float", raw)
		}
		return f, nil
	case 't':
		return true, nil
	case 'f':
		return false, nil
	default:
		return nil, nil
	}
}

func (d *decoder) object() (any, error) {
	if _, err := d.dec.ReadToken(); err != nil {
		return nil, err
	}
	base := len(d.kvs)
	for d.dec.PeekKind() != '}' {
		raw, err := d.dec.ReadValue()
		if err != nil {
			return nil, err
		}
		kv0, err := d.str(raw)
		if err != nil {
			return nil, err
		}
		k := kv0.(string)
		v, err := d.value()
		if err != nil {
			return nil, err
		}
		d.kvs = append(d.kvs, kv{k, v})
	}
	if _, err := d.dec.ReadToken(); err != nil {
		return nil, err
	}
	m := make(map[string]any, len(d.kvs)-base)
	for _, e := range d.kvs[base:] {
		m[e.k] = e.v
	}
	clear(d.kvs[base:])
	d.kvs = d.kvs[:base]
	return m, nil
}

func (d *decoder) array() (any, error) {
	if _, err := d.dec.ReadToken(); err != nil {
		return nil, err
	}
	base := len(d.vals)
	for d.dec.PeekKind() != ']' {
		v, err := d.value()
		if err != nil {
			return nil, err
		}
		d.vals = append(d.vals, v)
	}
	if _, err := d.dec.ReadToken(); err != nil {
		return nil, err
	}
	a := make([]any, len(d.vals)-base)
	copy(a, d.vals[base:])
	clear(d.vals[base:])
	d.vals = d.vals[:base]
	return a, nil
}

// str unquotes a JSON string, sharing short ones already seen. It
// returns the string already boxed in an any: a shared value then costs
// no allocation at all where it is stored in the tree.
//
// raw has already been read by the decoder, which checked its syntax
// (with invalid UTF-8 allowed). So AppendUnquote can only complain about
// invalid UTF-8 or a lone surrogate, which it has already replaced with
// U+FFFD, exactly as encoding/json does: that complaint is dropped.
func (d *decoder) str(raw jsontext.Value) (any, error) {
	inner := raw[1 : len(raw)-1]
	if bytes.IndexByte(inner, '\\') >= 0 || !utf8.Valid(inner) {
		u, _ := jsontext.AppendUnquote(nil, raw)
		return string(u), nil
	}
	if len(inner) > maxInternLen {
		return string(inner), nil
	}
	if v, ok := d.strs[string(inner)]; ok {
		return v, nil
	}
	var v any = string(inner)
	if len(d.strs) < maxInterned {
		d.strs[v.(string)] = v
	}
	return v, nil
}
