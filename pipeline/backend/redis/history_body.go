package redis

import (
	"bytes"
	"fmt"

	"github.com/klauspost/compress/zstd"
)

// Export bodies kept for a resend are stored zstd-compressed: JSON shrinks
// several times, so Redis holds, copies and pages in far less per export
// (up to max_exports × max_payload_bytes in all), for a few microseconds
// of the daemon's CPU. A body stored before compression (plain JSON) is
// still read as it is: a zstd frame starts with its magic number, which
// no JSON text does.
var (
	bodyEncoder, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1),
		zstd.WithLowerEncoderMem(true))
	bodyDecoder, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(1<<30))
	zstdMagic      = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// packBody compresses an export body for storage, unless that does not
// make it smaller (a tiny body): then it is stored plain.
func packBody(b []byte) []byte {
	if b == nil {
		return nil
	}
	if c := bodyEncoder.EncodeAll(b, make([]byte, 0, len(b)/4)); len(c) < len(b) {
		return c
	}
	return b
}

// unpackBody returns a stored body as it was received.
func unpackBody(b []byte) ([]byte, error) {
	if !bytes.HasPrefix(b, zstdMagic) {
		return b, nil
	}
	out, err := bodyDecoder.DecodeAll(b, nil)
	if err != nil {
		return nil, fmt.Errorf("stored body: %w", err)
	}
	return out, nil
}
