package catalog

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
)

// KeySize is the length of TENANTPLANE_SECRET_KEY once decoded: AES-256.
const KeySize = 32

// ParseKey decodes a secret key given as 64 hex digits or as base64 (standard or
// URL alphabet, padded or not) of 32 bytes.
func ParseKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("empty key")
	}
	if len(s) == 2*KeySize {
		if key, err := hex.DecodeString(s); err == nil {
			return key, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if key, err := enc.DecodeString(s); err == nil {
			if len(key) != KeySize {
				return nil, errors.New("key must decode to 32 bytes (generate one with: openssl rand -base64 32)")
			}
			return key, nil
		}
	}
	return nil, errors.New("key must be 64 hex digits or base64 of 32 bytes (generate one with: openssl rand -base64 32)")
}

// NewKey returns a fresh random key, base64-encoded, in the form ParseKey reads.
func NewKey() string {
	key := make([]byte, KeySize)
	_, _ = rand.Read(key) // crypto/rand.Read never fails on supported platforms
	return base64.StdEncoding.EncodeToString(key)
}

// Cipher seals secrets (server DSNs, tenant passwords) for storage in the
// catalog with AES-256-GCM. Each value is bound to the row it belongs to by
// its associated data, so a sealed value copied to another row does not open.
type Cipher struct {
	aead cipher.AEAD
}

// NewCipher returns a Cipher for a 32-byte key.
func NewCipher(key []byte) (*Cipher, error) {
	if len(key) != KeySize {
		return nil, errors.New("secret key must be 32 bytes")
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Cipher{aead: aead}, nil
}

// Seal encrypts plaintext; the result is nonce || ciphertext.
func (c *Cipher) Seal(plaintext, associated []byte) []byte {
	nonce := make([]byte, c.aead.NonceSize(), c.aead.NonceSize()+len(plaintext)+c.aead.Overhead())
	_, _ = rand.Read(nonce)
	return c.aead.Seal(nonce, nonce, plaintext, associated)
}

// Open decrypts what Seal produced with the same associated data.
func (c *Cipher) Open(sealed, associated []byte) ([]byte, error) {
	n := c.aead.NonceSize()
	if len(sealed) < n+c.aead.Overhead() {
		return nil, errors.New("sealed value too short")
	}
	plain, err := c.aead.Open(nil, sealed[:n], sealed[n:], associated)
	if err != nil {
		return nil, errors.New("cannot decrypt: wrong TENANTPLANE_SECRET_KEY or tampered value")
	}
	return plain, nil
}
