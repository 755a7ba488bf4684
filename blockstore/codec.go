package blockstore

import (
	"fmt"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Codec selects how block values are compressed. The first byte of every
// stored value names its codec, so a store may hold blocks of all codecs.
type Codec byte

// Codecs. CodecRaw is also used for any block that does not shrink.
const (
	CodecS2   Codec = 0 // zero value: fast default at ingest
	CodecRaw  Codec = 1
	CodecZstd Codec = 2 // zstd, fastest level
)

// ParseCodec maps a config name to a Codec.
func ParseCodec(name string) (Codec, error) {
	switch name {
	case "", "s2":
		return CodecS2, nil
	case "zstd":
		return CodecZstd, nil
	case "none", "raw":
		return CodecRaw, nil
	}
	return 0, fmt.Errorf("unknown compression %q (want s2, zstd or none)", name)
}

func (c Codec) String() string {
	switch c {
	case CodecS2:
		return "s2"
	case CodecZstd:
		return "zstd"
	case CodecRaw:
		return "none"
	}
	return fmt.Sprintf("codec(%d)", byte(c))
}

// codecSet holds the zstd encoder and decoder; both are safe for
// concurrent EncodeAll/DecodeAll.
type codecSet struct {
	zenc *zstd.Encoder
	zdec *zstd.Decoder
}

// newCodecSet sizes the zstd encoder and decoder pools for workers
// concurrent calls (the store's Workers, GOMAXPROCS by default). The
// decoder skips zstd's own xxhash64 frame checksum: every decoded block
// is verified against its BLAKE3 hash anyway, and the checksum cost ~3%
// of a read.
func newCodecSet(workers int) (*codecSet, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(workers), zstd.WithLowerEncoderMem(true))
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(workers), zstd.WithDecoderMaxMemory(64<<20), zstd.IgnoreChecksum(true))
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	return &codecSet{zenc: enc, zdec: dec}, nil
}

// encode returns the stored value of block b: a codec byte, then the
// payload. The result may alias scratch, which is grown as needed and
// returned for reuse.
func (c *codecSet) encode(codec Codec, b, scratch []byte) (value, newScratch []byte) {
	switch codec {
	case CodecS2:
		need := 1 + s2.MaxEncodedLen(len(b))
		if cap(scratch) < need {
			scratch = make([]byte, need)
		}
		scratch = scratch[:need]
		enc := s2.Encode(scratch[1:], b)
		if len(enc) < len(b) {
			scratch[0] = byte(CodecS2)
			return scratch[:1+len(enc)], scratch
		}
	case CodecZstd:
		scratch = c.zenc.EncodeAll(b, append(scratch[:0], byte(CodecZstd)))
		if len(scratch) < len(b)+1 {
			return scratch, scratch
		}
	}
	if cap(scratch) < len(b)+1 {
		scratch = make([]byte, len(b)+1)
	}
	scratch = scratch[:len(b)+1]
	scratch[0] = byte(CodecRaw)
	copy(scratch[1:], b)
	return scratch, scratch
}

// decode decompresses a stored value into dst (len(dst) = block size or
// less for none) and returns the block bytes.
func (c *codecSet) decode(v, dst []byte) ([]byte, error) {
	if len(v) == 0 {
		return nil, fmt.Errorf("empty value")
	}
	switch Codec(v[0]) {
	case CodecRaw:
		return append(dst[:0], v[1:]...), nil
	case CodecS2:
		n, err := s2.DecodedLen(v[1:])
		if err != nil {
			return nil, fmt.Errorf("s2 header: %w", err)
		}
		if n > cap(dst) {
			return nil, fmt.Errorf("s2 block decodes to %d bytes, more than a block", n)
		}
		return s2.Decode(dst[:cap(dst)], v[1:])
	case CodecZstd:
		out, err := c.zdec.DecodeAll(v[1:], dst[:0])
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		return out, nil
	}
	return nil, fmt.Errorf("unknown codec byte %d", v[0])
}
