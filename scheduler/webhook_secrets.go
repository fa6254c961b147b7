package scheduler

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/kiln-build/kiln/internal/durable"
)

// A webhook's secret must be usable in plain to check an HMAC, so it
// cannot be stored hashed like a token. It is sealed instead with
// AES-256-GCM under a key kept in the data directory
// (<data_dir>/webhook-secrets.key, mode 0600), with the hook's name as
// additional data: a reader of the database alone (a dump, a backup, a
// PostgreSQL role that may read kiln's tables) cannot sign a delivery,
// and a sealed secret copied to another hook's row does not open.
// Replicas share the data dir, so they share the key. Whoever reads both
// the data dir and the database can sign; see docs/webhooks.md.

const secretKeyFile = "webhook-secrets.key"

// secretBox seals and opens webhook secrets; the key is read (or made)
// at first use.
type secretBox struct {
	path string
	once sync.Once
	aead cipher.AEAD
	err  error
}

func newSecretBox(dataDir string) *secretBox {
	return &secretBox{path: filepath.Join(dataDir, secretKeyFile)}
}

func (b *secretBox) init() error {
	b.once.Do(func() {
		key, err := loadOrMakeKey(b.path)
		if err != nil {
			b.err = fmt.Errorf("webhook secret key: %w", err)
			return
		}
		c, err := aes.NewCipher(key)
		if err != nil {
			b.err = err
			return
		}
		b.aead, b.err = cipher.NewGCM(c)
	})
	return b.err
}

// loadOrMakeKey reads the 32-byte key at path, making it when there is
// none. Two replicas making it at once both end with the one that was
// linked first: the key is written to a temp file and hard-linked into
// place, which fails if the name exists.
func loadOrMakeKey(path string) ([]byte, error) {
	key, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		fresh := make([]byte, 32)
		if _, err := rand.Read(fresh); err != nil {
			return nil, err
		}
		tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
		if err := durable.WriteFile(tmp, fresh, 0o600); err != nil {
			return nil, err
		}
		lerr := os.Link(tmp, path)
		_ = os.Remove(tmp)
		if lerr != nil && !errors.Is(lerr, fs.ErrExist) {
			return nil, lerr
		}
		if err := durable.SyncDir(filepath.Dir(path)); err != nil {
			return nil, err
		}
		key, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, err
	}
	if len(key) != 32 {
		return nil, fmt.Errorf("%s: want 32 bytes, have %d", path, len(key))
	}
	return key, nil
}

// seal encrypts secret for hook name (base64 of nonce and ciphertext).
func (b *secretBox) seal(name string, secret []byte) (string, error) {
	if err := b.init(); err != nil {
		return "", err
	}
	nonce := make([]byte, b.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(b.aead.Seal(nonce, nonce, secret, []byte(name))), nil
}

// open decrypts what seal made for hook name.
func (b *secretBox) open(name, sealed string) ([]byte, error) {
	if err := b.init(); err != nil {
		return nil, err
	}
	raw, err := base64.StdEncoding.DecodeString(sealed)
	if err != nil || len(raw) < b.aead.NonceSize() {
		return nil, fmt.Errorf("webhook %s: stored secret is malformed", name)
	}
	n := b.aead.NonceSize()
	secret, err := b.aead.Open(nil, raw[:n], raw[n:], []byte(name))
	if err != nil {
		return nil, fmt.Errorf("webhook %s: stored secret does not open with %s (another data dir's key?): %w", name, secretKeyFile, err)
	}
	return secret, nil
}
