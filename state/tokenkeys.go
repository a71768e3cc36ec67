package state

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// Rotating GESSYNC_TOKEN_KEY: start gessync with the new key as TokenKey and the old one in
// PreviousTokenKeys. Open re-seals every stored token with the new key; from then on the old
// key is no longer needed and can be dropped at the next start. Tokens stored in the clear
// (before any key was set) are sealed the same way.

func newAEAD(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// openAny opens a sealed token with the current key or any previous one.
func (s *Store) openAny(sealed string) (string, error) {
	raw, err := base64.StdEncoding.DecodeString(sealed[3:])
	if err != nil {
		return "", errors.New("stored token is corrupt")
	}
	for _, a := range append([]cipher.AEAD{s.aead}, s.old...) {
		if len(raw) < a.NonceSize() {
			continue
		}
		if plain, err := a.Open(nil, raw[:a.NonceSize()], raw[a.NonceSize():], nil); err == nil {
			return string(plain), nil
		}
	}
	return "", errors.New("stored token does not open with the configured token key nor a previous one (GESSYNC_TOKEN_KEY, GESSYNC_TOKEN_KEY_PREVIOUS)")
}

// sealedWithCurrent reports whether sealed opens with the current key.
func (s *Store) sealedWithCurrent(sealed string) bool {
	if !strings.HasPrefix(sealed, "v1:") {
		return sealed == ""
	}
	raw, err := base64.StdEncoding.DecodeString(sealed[3:])
	if err != nil || len(raw) < s.aead.NonceSize() {
		return false
	}
	_, err = s.aead.Open(nil, raw[:s.aead.NonceSize()], raw[s.aead.NonceSize():], nil)
	return err == nil
}

// ResealTokens seals with the current key every stored token that is in the clear or sealed
// with a previous key, and returns how many connections it rewrote. A token that opens with no
// configured key is an error naming the variables. Without a current key it does nothing.
func (s *Store) ResealTokens(ctx context.Context) (int, error) {
	if s.aead == nil {
		return 0, nil
	}
	rows, err := s.pool.Query(ctx, s.q(`SELECT company_id, access_token, refresh_token FROM @s.connections`))
	if err != nil {
		return 0, fmt.Errorf("re-sealing tokens: %w", err)
	}
	type row struct {
		id               int64
		access, refresh  string
		naccess, nrefres string
	}
	var todo []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.id, &r.access, &r.refresh); err != nil {
			rows.Close()
			return 0, fmt.Errorf("re-sealing tokens: %w", err)
		}
		if s.sealedWithCurrent(r.access) && s.sealedWithCurrent(r.refresh) {
			continue
		}
		todo = append(todo, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("re-sealing tokens: %w", err)
	}
	n := 0
	for _, r := range todo {
		a, err := s.open(r.access)
		if err != nil {
			return n, fmt.Errorf("re-sealing tokens of company %d: %w", r.id, err)
		}
		f, err := s.open(r.refresh)
		if err != nil {
			return n, fmt.Errorf("re-sealing tokens of company %d: %w", r.id, err)
		}
		if r.naccess, err = s.seal(a); err != nil {
			return n, err
		}
		if r.nrefres, err = s.seal(f); err != nil {
			return n, err
		}
		// Only if nobody saved a newer token meanwhile.
		tag, err := s.pool.Exec(ctx, s.q(`UPDATE @s.connections SET access_token = $2, refresh_token = $3
			WHERE company_id = $1 AND access_token = $4 AND refresh_token = $5`), r.id, r.naccess, r.nrefres, r.access, r.refresh)
		if err != nil {
			return n, fmt.Errorf("re-sealing tokens of company %d: %w", r.id, err)
		}
		n += int(tag.RowsAffected())
	}
	return n, nil
}
