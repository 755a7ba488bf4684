package remote

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"csbs/blockstore"
)

func TestParseFingerprint(t *testing.T) {
	sum := sha256.Sum256([]byte("certificate"))
	hexs := hex.EncodeToString(sum[:])
	var want Fingerprint
	copy(want[:], sum[:])
	colons := want.String()
	for _, tc := range []struct {
		name, in string
		ok       bool
	}{
		{"lowercase hex", hexs, true},
		{"uppercase hex", strings.ToUpper(hexs), true},
		{"colons as openssl prints them", colons, true},
		{"openssl 3 line", "sha256 Fingerprint=" + colons, true},
		{"openssl 1.1 line", "SHA256 Fingerprint=" + colons, true},
		{"surrounding space", "  " + colons + "\n", true},
		{"sha1 line", "SHA1 Fingerprint=" + colons, false},
		{"too short", hexs[:62], false},
		{"too long", hexs + "00", false},
		{"not hex", strings.Replace(hexs, "a", "g", 1), false},
		{"empty", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseFingerprint(tc.in)
			if tc.ok != (err == nil) || (tc.ok && got != want) {
				t.Fatalf("ParseFingerprint(%q) = %v, %v", tc.in, got, err)
			}
		})
	}
	if !strings.HasPrefix(colons, strings.ToUpper(hexs[:2])+":") || len(colons) != 95 {
		t.Fatalf("String() = %q", colons)
	}
}

// The client trusts a server only by the pin: the right certificate
// (self-signed, no CA) is accepted, every other refused before a request
// is sent, on new and on reused connections alike.
func TestPinnedTLS(t *testing.T) {
	var requests int
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests++
		if r.Header.Get("Authorization") != "Bearer tok" {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"error":{"code":"unauthorized","message":"missing, unknown or revoked token"}}`)
			return
		}
		fmt.Fprint(w, `{"region":"r1","project":"p","block_size":65536,"hash":"blake3-256"}`)
	}))
	defer srv.Close()
	pin := CertFingerprint(srv.Certificate().Raw)
	ctx := context.Background()

	c := New(srv.URL, pin, "tok", Options{})
	for range 2 {
		id, err := c.Identity(ctx)
		if err != nil || id.Region != "r1" || id.BlockSize != 65536 {
			t.Fatalf("pinned server: %+v %v", id, err)
		}
	}
	c.Close()
	if c.WireBytes() == 0 {
		t.Fatal("wire bytes not counted")
	}

	wrong := pin
	wrong[0] ^= 1
	before := requests
	c = New(srv.URL, wrong, "tok", Options{})
	_, err := c.Identity(ctx)
	c.Close()
	var fe *FingerprintError
	if !errors.As(err, &fe) || fe.Got != pin || fe.Want != wrong || Transient(err) {
		t.Fatalf("wrong pin: %v", err)
	}
	if requests != before {
		t.Fatal("a request reached a server with the wrong certificate")
	}

	c = New(srv.URL, pin, "other", Options{})
	_, err = c.Identity(ctx)
	c.Close()
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 401 || !strings.Contains(err.Error(), "refused the token") || Transient(err) {
		t.Fatalf("bad token: %v", err)
	}

	c = New("https://127.0.0.1:1", pin, "tok", Options{})
	_, err = c.Identity(ctx)
	c.Close()
	var ue *UnreachableError
	if !errors.As(err, &ue) || !Transient(err) {
		t.Fatalf("unreachable: %v", err)
	}
}

func hashes(n int, seed byte) []blockstore.Hash {
	hs := make([]blockstore.Hash, n)
	for i := range hs {
		hs[i] = blockstore.HashBlock([]byte{seed, byte(i), byte(i >> 8)})
	}
	return hs
}

// A map survives the stream whole, as differences to a base, or as
// "same as the base", and a base that differs is detected.
func TestMapStream(t *testing.T) {
	const bs = 64 << 10
	size := int64(2*blockstore.SegmentEntries+101)*bs - 123 // three segments, the last short
	h := MapHeader{Size: size, BlockSize: bs}
	segs := [][]blockstore.Hash{hashes(blockstore.SegmentEntries, 1), nil, hashes(101, 3)} // segment 1 is all zero
	base := [][]blockstore.Hash{hashes(blockstore.SegmentEntries, 1), hashes(blockstore.SegmentEntries, 2), hashes(101, 3)}
	base[2][7] = blockstore.HashBlock([]byte("changed"))
	baseOf := func(seg int64, n int) ([]blockstore.Hash, error) { return base[seg][:n], nil }

	for _, tc := range []struct {
		name     string
		withBase bool
		maxBytes int
	}{
		{"whole", false, 21 + 2*25 + (blockstore.SegmentEntries+101)*32 + 25},
		{"delta", true, 21 + 25 + 25 + 13 + 32 + 25},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.Base = tc.withBase
			var buf bytes.Buffer
			w, err := NewMapWriter(&buf, h)
			if err != nil {
				t.Fatal(err)
			}
			for seg, hs := range segs {
				if hs == nil {
					continue
				}
				var b []blockstore.Hash
				if tc.withBase {
					b = base[seg]
				}
				if err := w.Segment(int64(seg), hs, b); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.End(); err != nil {
				t.Fatal(err)
			}
			if buf.Len() > tc.maxBytes {
				t.Fatalf("stream of %d bytes, want at most %d", buf.Len(), tc.maxBytes)
			}
			got := map[int64][]blockstore.Hash{}
			hdr, err := ReadMap(bytes.NewReader(buf.Bytes()), baseOf, func(_ MapHeader, seg int64, hs []blockstore.Hash) error {
				got[seg] = hs
				return nil
			})
			if err != nil || hdr.Size != size || len(got) != 2 || !slicesEqual(got[0], segs[0]) || !slicesEqual(got[2], segs[2]) {
				t.Fatalf("read back: %v %+v %d segments", err, hdr, len(got))
			}
			// Truncated anywhere: an error, never a short map.
			for cut := 0; cut < buf.Len(); cut += 97 {
				_, err := ReadMap(bytes.NewReader(buf.Bytes()[:cut]), baseOf, func(MapHeader, int64, []blockstore.Hash) error { return nil })
				if err == nil {
					t.Fatalf("a stream cut at %d of %d bytes reads without error", cut, buf.Len())
				}
			}
			if tc.withBase {
				wrong := func(seg int64, n int) ([]blockstore.Hash, error) { return hashes(n, 9), nil }
				_, err := ReadMap(bytes.NewReader(buf.Bytes()), wrong, func(MapHeader, int64, []blockstore.Hash) error { return nil })
				if !errors.Is(err, ErrBaseMismatch) {
					t.Fatalf("a different base: %v", err)
				}
			}
		})
	}
}

func slicesEqual(a, b []blockstore.Hash) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestBlockRequestAndResponse(t *testing.T) {
	refs := []BlockRef{{Disk: 0, Index: 5, Hash: hashes(1, 1)[0]}, {Disk: 1, Index: 1 << 40, Hash: hashes(1, 2)[0]}}
	got, err := DecodeBlockRequest(EncodeBlockRequest(refs))
	if err != nil || len(got) != 2 || got[1] != refs[1] {
		t.Fatalf("round trip: %v %+v", err, got)
	}
	for name, b := range map[string][]byte{
		"empty":        nil,
		"zero blocks":  EncodeBlockRequest(nil),
		"too many":     EncodeBlockRequest(make([]BlockRef, MaxBatch+1)),
		"short":        EncodeBlockRequest(refs)[:50],
		"trailing":     append(EncodeBlockRequest(refs), 0),
		"huge count":   {0xff, 0xff, 0xff, 0xff},
		"negative idx": EncodeBlockRequest([]BlockRef{{Index: -1}}),
	} {
		if _, err := DecodeBlockRequest(b); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
	var buf bytes.Buffer
	WriteBlock(&buf, BlockOK, []byte("value-1"))
	WriteBlock(&buf, BlockDamaged, []byte("bad block"))
	var vals []string
	err = ReadBlocks(&buf, refs, 100, func(i int, v []byte) error { vals = append(vals, string(v)); return nil })
	var be *RemoteBlockError
	if !errors.As(err, &be) || !be.Damaged || be.Ref != refs[1] || len(vals) != 1 || vals[0] != "value-1" || Transient(err) {
		t.Fatalf("response: %v %v", err, vals)
	}
	buf.Reset()
	WriteBlock(&buf, BlockOK, make([]byte, 101))
	if err := ReadBlocks(&buf, refs, 100, func(int, []byte) error { return nil }); !errors.Is(err, ErrBadStream) {
		t.Fatalf("oversized value: %v", err)
	}
	buf.Reset()
	WriteBlock(&buf, BlockOK, []byte("x"))
	if err := ReadBlocks(&buf, refs, 100, func(int, []byte) error { return nil }); !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		t.Fatalf("a response cut after one of two blocks: %v", err)
	} else if !Transient(err) {
		t.Fatalf("a cut response is not transient: %v", err)
	}
}

func TestQualifies(t *testing.T) {
	ok := BackupInfo{Name: "b", Status: "available", Disks: []DiskInfo{{Name: "vda"}}}
	for _, tc := range []struct {
		name string
		mod  func(*BackupInfo)
		want string // "" = qualifies
	}{
		{"available", func(*BackupInfo) {}, ""},
		{"being made", func(b *BackupInfo) { b.Status = "creating" }, "is creating on the remote"},
		{"failed", func(b *BackupInfo) { b.Status = "error" }, "only available backups"},
		{"damaged", func(b *BackupInfo) { b.Damaged = true }, "is damaged on the remote"},
		{"a replica", func(b *BackupInfo) { b.Replica = true }, "replicas are not replicated again"},
		{"no disks", func(b *BackupInfo) { b.Disks = nil }, "has no disks"},
	} {
		b := ok
		tc.mod(&b)
		err := b.Qualifies()
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}
