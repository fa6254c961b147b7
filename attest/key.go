// Package attest makes and checks kiln's signed provenance: an in-toto
// Statement (v1) with a SLSA Provenance (v1) predicate about one run,
// wrapped in a DSSE envelope signed with the host's ed25519 key, and the
// offline check of files against such envelopes and a set of host keys
// (docs/publishing.md).
package attest

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/secure-systems-lab/go-securesystemslib/dsse"

	"github.com/kiln-build/kiln/internal/durable"
)

// PublicKeySuffix is appended to the private key's path for the public
// key file written next to it.
const PublicKeySuffix = ".pub"

// KeyID is the identifier of pub as signatures carry it: the SHA256
// fingerprint of its SSH encoding ("SHA256:..."), as go-securesystemslib
// computes it.
func KeyID(pub ed25519.PublicKey) (string, error) {
	return dsse.SHA256KeyID(pub)
}

// Signer is a host's signing key. It implements dsse.SignerVerifier.
type Signer struct {
	priv  ed25519.PrivateKey
	keyID string
}

// NewSigner wraps priv.
func NewSigner(priv ed25519.PrivateKey) (*Signer, error) {
	id, err := KeyID(priv.Public().(ed25519.PublicKey))
	if err != nil {
		return nil, err
	}
	return &Signer{priv: priv, keyID: id}, nil
}

// Sign signs the DSSE PAE bytes it is given.
func (s *Signer) Sign(_ context.Context, data []byte) ([]byte, error) {
	return ed25519.Sign(s.priv, data), nil
}

// Verify checks sig over data with the signer's public key.
func (s *Signer) Verify(_ context.Context, data, sig []byte) error {
	return verifier{pub: s.priv.Public().(ed25519.PublicKey), keyID: s.keyID}.Verify(context.Background(), data, sig)
}

// KeyID is the key's fingerprint (see KeyID).
func (s *Signer) KeyID() (string, error) { return s.keyID, nil }

// Public is the ed25519 public key.
func (s *Signer) Public() crypto.PublicKey { return s.priv.Public() }

// PublicPEM is the public key as a PKIX PEM block, the form the server
// stores and `kiln host keys` exports.
func (s *Signer) PublicPEM() string {
	return MarshalPublicKey(s.priv.Public().(ed25519.PublicKey))
}

// verifier checks signatures of one public key (dsse.Verifier).
type verifier struct {
	pub   ed25519.PublicKey
	keyID string
}

func (v verifier) Verify(_ context.Context, data, sig []byte) error {
	if !ed25519.Verify(v.pub, data, sig) {
		return errors.New("ed25519 signature does not verify")
	}
	return nil
}

func (v verifier) KeyID() (string, error)   { return v.keyID, nil }
func (v verifier) Public() crypto.PublicKey { return v.pub }

// MarshalPublicKey encodes pub as a PKIX "PUBLIC KEY" PEM block.
func MarshalPublicKey(pub ed25519.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		panic(err) // an ed25519 key always marshals
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// ParsePublicKey decodes a PKIX "PUBLIC KEY" PEM block holding an ed25519
// key.
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	b, _ := pem.Decode([]byte(s))
	if b == nil || b.Type != "PUBLIC KEY" {
		return nil, errors.New("public key: want a PEM block of type PUBLIC KEY")
	}
	k, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("public key: %T, want ed25519", k)
	}
	return pub, nil
}

// GenerateKey makes a new ed25519 signing key.
func GenerateKey() (*Signer, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return NewSigner(priv)
}

// WriteFile writes the private key to path (PKCS#8 PEM, mode 0600:
// readable by its owner only, root on a worker host) and the public key to
// path+PublicKeySuffix (0644). An existing key at path is replaced
// (re-enrolling makes a new key), each file whole (durable).
func (s *Signer) WriteFile(path string) error {
	der, err := x509.MarshalPKCS8PrivateKey(s.priv)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := durable.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("signing key: %w", err)
	}
	if err := durable.WriteFile(path+PublicKeySuffix, []byte(s.PublicPEM()), 0o644); err != nil {
		return fmt.Errorf("signing key: %w", err)
	}
	return nil
}

// GenerateKeyFile makes a new key and writes it to path (WriteFile).
func GenerateKeyFile(path string) (*Signer, error) {
	s, err := GenerateKey()
	if err != nil {
		return nil, err
	}
	return s, s.WriteFile(path)
}

// LoadKeyFile reads the private key GenerateKeyFile wrote. A key file
// that others than its owner can read or write is refused: anyone who can
// read it can sign provenance in this host's name.
func LoadKeyFile(path string) (*Signer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("signing key %s: mode %04o, want no access for group and others (chmod 600)", path, st.Mode().Perm())
	}
	data, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("signing key %s: want a PEM block of type PRIVATE KEY", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("signing key %s: %T, want ed25519", path, k)
	}
	return NewSigner(priv)
}
