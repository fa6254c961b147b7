package aptrepo

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/clearsign"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// ErrBadKey is wrapped by the errors of a key that cannot sign a
// repository: not OpenPGP, no private key, a passphrase on it.
var ErrBadKey = errors.New("bad repository signing key")

// MaxKeyFile bounds an imported key file.
const MaxKeyFile = 1 << 20

// Key is a repository's OpenPGP signing key.
type Key struct {
	e *openpgp.Entity
}

// config is what kiln signs with: SHA-512 digests, v4 keys and legacy
// EdDSA (algorithm 22), which gpgv of GnuPG 2.2 (Debian bookworm's apt)
// verifies; the newer Ed25519 packets (RFC 9580) it does not.
func config(now time.Time) *packet.Config {
	return &packet.Config{
		DefaultHash: crypto.SHA512,
		Algorithm:   packet.PubKeyAlgoEdDSA,
		Curve:       packet.Curve25519,
		Time:        func() time.Time { return now },
	}
}

// NewKey makes a signing key whose user id names the repository.
func NewKey(repo string, now time.Time) (*Key, error) {
	e, err := openpgp.NewEntity("kiln repository "+repo, "", "", config(now))
	if err != nil {
		return nil, fmt.Errorf("new key: %w", err)
	}
	return &Key{e: e}, nil
}

// ParseKey reads an armored or binary OpenPGP private key: the first key
// of the file, which must be able to sign and carry no passphrase (the
// server signs without anyone at hand).
func ParseKey(data []byte) (*Key, error) {
	if len(data) > MaxKeyFile {
		return nil, fmt.Errorf("%w: %d bytes; at most %d are allowed", ErrBadKey, len(data), MaxKeyFile)
	}
	var el openpgp.EntityList
	var err error
	if bytes.Contains(data, []byte("-----BEGIN PGP")) {
		el, err = openpgp.ReadArmoredKeyRing(bytes.NewReader(data))
	} else {
		el, err = openpgp.ReadKeyRing(bytes.NewReader(data))
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKey, err)
	}
	if len(el) == 0 {
		return nil, fmt.Errorf("%w: no key in the file", ErrBadKey)
	}
	e := el[0]
	if e.PrivateKey == nil {
		return nil, fmt.Errorf("%w: %s is a public key; give the private key (gpg --export-secret-keys)", ErrBadKey, e.PrimaryKey.KeyIdString())
	}
	if e.PrivateKey.Encrypted {
		return nil, fmt.Errorf("%w: the private key has a passphrase; remove it for the import (the server signs unattended)", ErrBadKey)
	}
	k := &Key{e: e}
	if _, ok := e.SigningKey(time.Now()); !ok {
		return nil, fmt.Errorf("%w: %s has no usable signing key", ErrBadKey, k.Fingerprint())
	}
	return k, nil
}

// Fingerprint is the primary key's fingerprint, upper-case hex.
func (k *Key) Fingerprint() string {
	return strings.ToUpper(fmt.Sprintf("%x", k.e.PrimaryKey.Fingerprint))
}

// Private returns the armored private key, for storing.
func (k *Key) Private() ([]byte, error) {
	var b bytes.Buffer
	w, err := armor.Encode(&b, openpgp.PrivateKeyType, nil)
	if err != nil {
		return nil, err
	}
	if err := k.e.SerializePrivateWithoutSigning(w, nil); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// Public returns the armored public key: what apt's signed-by names
// (saved as a .asc file).
func (k *Key) Public() ([]byte, error) {
	var b bytes.Buffer
	w, err := armor.Encode(&b, openpgp.PublicKeyType, nil)
	if err != nil {
		return nil, err
	}
	if err := k.e.Serialize(w); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	b.WriteByte('\n')
	return b.Bytes(), nil
}

// Sign returns InRelease (release clear-signed) and Release.gpg (an
// armored detached signature of release).
func (k *Key) Sign(release []byte, now time.Time) (inRelease, releaseGPG []byte, err error) {
	cfg := config(now)
	sk, ok := k.e.SigningKey(now)
	if !ok {
		return nil, nil, fmt.Errorf("%w: no usable signing key", ErrBadKey)
	}
	var in bytes.Buffer
	w, err := clearsign.Encode(&in, sk.PrivateKey, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("clearsign: %w", err)
	}
	if _, err := w.Write(release); err != nil {
		return nil, nil, err
	}
	if err := w.Close(); err != nil {
		return nil, nil, fmt.Errorf("clearsign: %w", err)
	}
	inRelease, err = withCRC(in.Bytes())
	if err != nil {
		return nil, nil, err
	}
	var det bytes.Buffer
	if err := openpgp.ArmoredDetachSign(&det, k.e, bytes.NewReader(release), cfg); err != nil {
		return nil, nil, fmt.Errorf("detached signature: %w", err)
	}
	det.WriteByte('\n')
	return inRelease, det.Bytes(), nil
}

// withCRC re-armors the signature block of a clear-signed message with
// the CRC24 line: go-crypto leaves it out (RFC 9580 says it SHOULD NOT be
// written), and GnuPG 2.2's gpgv, which apt runs on bookworm, then reads
// the END line as base64 and fails.
func withCRC(msg []byte) ([]byte, error) {
	const begin = "-----BEGIN PGP SIGNATURE-----"
	i := bytes.Index(msg, []byte(begin))
	if i < 0 {
		return nil, errors.New("clearsign: no signature block")
	}
	blk, err := armor.Decode(bytes.NewReader(msg[i:]))
	if err != nil {
		return nil, fmt.Errorf("clearsign: %w", err)
	}
	sig, err := io.ReadAll(blk.Body)
	if err != nil {
		return nil, fmt.Errorf("clearsign: %w", err)
	}
	out := bytes.NewBuffer(slices.Clone(msg[:i]))
	w, err := armor.EncodeWithChecksumOption(out, "PGP SIGNATURE", nil, true)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(sig); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// Verify checks InRelease against the armored public key pub and returns
// the signed text (tests and `kiln repo` checks; apt uses gpgv).
func Verify(pub, inRelease []byte) ([]byte, error) {
	el, err := openpgp.ReadArmoredKeyRing(bytes.NewReader(pub))
	if err != nil {
		return nil, err
	}
	b, _ := clearsign.Decode(inRelease)
	if b == nil {
		return nil, errors.New("not a clear-signed message")
	}
	if _, err := b.VerifySignature(el, nil); err != nil {
		return nil, err
	}
	return b.Plaintext, nil
}
