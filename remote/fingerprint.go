package remote

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// Fingerprint is the SHA-256 of a certificate's DER bytes.
type Fingerprint [sha256.Size]byte

// CertFingerprint returns the fingerprint of a DER-encoded certificate.
func CertFingerprint(der []byte) Fingerprint { return sha256.Sum256(der) }

// String is the form `openssl x509 -noout -fingerprint -sha256` prints:
// uppercase hex pairs joined by colons.
func (f Fingerprint) String() string {
	h := strings.ToUpper(hex.EncodeToString(f[:]))
	var b strings.Builder
	for i := 0; i < len(h); i += 2 {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(h[i : i+2])
	}
	return b.String()
}

// ParseFingerprint reads a SHA-256 fingerprint written as 64 hex digits,
// with or without colons, in either case, also with the
// "sha256 Fingerprint=" prefix openssl prints before it.
func ParseFingerprint(s string) (Fingerprint, error) {
	var f Fingerprint
	t := strings.TrimSpace(s)
	if i := strings.LastIndexByte(t, '='); i >= 0 {
		prefix := strings.ToLower(strings.TrimSpace(t[:i]))
		if prefix != "sha256 fingerprint" && prefix != "sha2-256 fingerprint" {
			return f, fmt.Errorf("fingerprint %q: want the SHA-256 of the certificate (openssl x509 -noout -fingerprint -sha256 -in CERT)", s)
		}
		t = strings.TrimSpace(t[i+1:])
	}
	t = strings.ReplaceAll(t, ":", "")
	b, err := hex.DecodeString(t)
	if err != nil || len(b) != len(f) {
		return f, fmt.Errorf("fingerprint %q: want 64 hex digits (with or without colons), the SHA-256 of the remote's certificate as `openssl x509 -noout -fingerprint -sha256 -in CERT` prints it", s)
	}
	copy(f[:], b)
	return f, nil
}
