package catalog

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"time"

	"github.com/jackc/pgx/v5"
)

// KeyPrefix starts every tenant API key, so a leaked one is recognisable
// (and findable by secret scanners).
const KeyPrefix = "tp_"

// APIKey is a tenant API key as stored: never the key itself.
type APIKey struct {
	ID         string     `json:"id"`
	TenantID   string     `json:"-"`
	Prefix     string     `json:"prefix"`
	CreatedAt  time.Time  `json:"created_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
	RevokedAt  *time.Time `json:"revoked_at"`
	// Scopes are what the key may do (see Scopes); ["*"] is everything.
	Scopes []string `json:"scopes"`
	// ExpiresAt is when the key stops working; nil is never.
	ExpiresAt *time.Time `json:"expires_at"`
}

// KeySpec is what an issued key may do, and for how long.
type KeySpec struct {
	// Scopes of the key; none is [ScopeAll].
	Scopes []string `json:"scopes"`
	// ExpiresAt is when the key stops working, in the future and within
	// MaxKeyLifetime; nil is never.
	ExpiresAt *time.Time `json:"expires_at"`
}

// Validate normalizes the scopes (NormalizeScopes) and checks the expiry
// against now.
func (ks *KeySpec) Validate(now time.Time) error {
	scopes, err := NormalizeScopes(ks.Scopes)
	if err != nil {
		return err
	}
	ks.Scopes = scopes
	if ks.ExpiresAt != nil {
		switch at := *ks.ExpiresAt; {
		case !at.After(now):
			return Errorf(CodeInvalid, "expires_at %s is not in the future", at.UTC().Format(time.RFC3339))
		case at.Sub(now) > MaxKeyLifetime:
			return Errorf(CodeInvalid, "expires_at %s is more than 10 years away: leave it out for a key that does not expire", at.UTC().Format(time.RFC3339))
		}
		utc := ks.ExpiresAt.UTC()
		ks.ExpiresAt = &utc
	}
	return nil
}

// HashKey is how a key is stored and looked up. Keys carry 256 bits of
// entropy, so a fast hash is enough: there is nothing to brute-force.
func HashKey(key string) []byte {
	h := sha256.Sum256([]byte(key))
	return h[:]
}

// newKey returns a fresh key: the prefix and 32 random bytes in base64url.
func newKey() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return KeyPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// CreateAPIKey issues a key with every scope that never expires. The
// returned plaintext key is shown once and never stored.
func (s *Store) CreateAPIKey(ctx context.Context, tenantID, actor string) (APIKey, string, error) {
	return s.IssueAPIKey(ctx, tenantID, actor, KeySpec{})
}

// IssueAPIKey issues a key for a tenant, limited to spec's scopes and
// expiry (validated here: a bad spec is CodeInvalid). The returned
// plaintext key is shown once and never stored. Rotation is issuing a new
// key while the old one lives until its own expiry or revocation.
func (s *Store) IssueAPIKey(ctx context.Context, tenantID, actor string, spec KeySpec) (APIKey, string, error) {
	if err := spec.Validate(time.Now()); err != nil {
		return APIKey{}, "", err
	}
	key := newKey()
	k := APIKey{TenantID: tenantID, Prefix: key[:len(KeyPrefix)+8], Scopes: spec.Scopes, ExpiresAt: spec.ExpiresAt}
	err := s.InTx(ctx, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `INSERT INTO api_keys (tenant_id, prefix, hash, scopes, expires_at) VALUES ($1, $2, $3, $4, $5) RETURNING id, created_at`,
			tenantID, k.Prefix, HashKey(key), k.Scopes, k.ExpiresAt).Scan(&k.ID, &k.CreatedAt)
		if err != nil {
			return Classify(err, "api key")
		}
		details := map[string]any{"scopes": k.Scopes}
		if k.ExpiresAt != nil {
			details["expires_at"] = k.ExpiresAt.Format(time.RFC3339)
		}
		return InsertAudit(ctx, tx, AuditEvent{Actor: actor, Action: "key.created", TenantID: tenantID, Subject: k.ID, Details: details})
	})
	if err != nil {
		return APIKey{}, "", err
	}
	return k, key, nil
}

// ListAPIKeys returns a page of a tenant's keys, revoked ones included,
// oldest first: at most limit (CheckLimit's bounds) after cursor, and the
// next page's cursor ("" on the last).
func (s *Store) ListAPIKeys(ctx context.Context, tenantID string, limit int, cursor string) ([]APIKey, string, error) {
	limit, err := CheckLimit(limit)
	if err != nil {
		return nil, "", err
	}
	afterTime, afterID := time.Time{}, ""
	if cursor != "" {
		if afterTime, afterID, err = decodeCursor(cursor); err != nil {
			return nil, "", err
		}
	}
	rows, err := s.pool.Query(ctx, `SELECT id, tenant_id, prefix, created_at, last_used_at, revoked_at, scopes, expires_at
		FROM api_keys WHERE tenant_id = $1 AND ($2 = '' OR (created_at, id) > ($3, $2::uuid))
		ORDER BY created_at, id LIMIT $4`, tenantID, afterID, afterTime, limit+1)
	if err != nil {
		return nil, "", Classify(err, "api keys")
	}
	keys, err := pgx.CollectRows(rows, pgx.RowToStructByPos[APIKey])
	if err != nil {
		return nil, "", Classify(err, "api keys")
	}
	next := ""
	if len(keys) > limit {
		keys = keys[:limit]
		next = encodeCursor(keys[limit-1].CreatedAt, keys[limit-1].ID)
	}
	if keys == nil {
		keys = []APIKey{}
	}
	return keys, next, nil
}

// RevokeAPIKey revokes a tenant's key and announces it on TenantChannel.
// Revoking a revoked key is a no-op; a key of another tenant is not found.
func (s *Store) RevokeAPIKey(ctx context.Context, tenantID, keyID, actor string) error {
	if !uuidRE.MatchString(keyID) {
		return Errorf(CodeNotFound, "api key %q not found", keyID)
	}
	return s.InTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 AND tenant_id = $2`, keyID, tenantID)
		if err != nil {
			return Classify(err, "api key")
		}
		if tag.RowsAffected() == 0 {
			return Errorf(CodeNotFound, "api key %q not found", keyID)
		}
		if err := InsertAudit(ctx, tx, AuditEvent{Actor: actor, Action: "key.revoked", TenantID: tenantID, Subject: keyID}); err != nil {
			return err
		}
		return notifyTenant(ctx, tx, tenantID)
	})
}

// KeyOwner is what a key resolves to.
type KeyOwner struct {
	KeyID    string
	TenantID string
	Revoked  bool
	Scopes   []string
	// ExpiresAt is when the key stops working; zero is never. The key's
	// holder checks it on every use: an expiry announces itself to no one.
	ExpiresAt time.Time
	// Allow is the tenant's IP allowlist (CIDRs; empty: any network).
	Allow []string
}

// Expired reports whether the key no longer works at now.
func (o KeyOwner) Expired(now time.Time) bool {
	return !o.ExpiresAt.IsZero() && !now.Before(o.ExpiresAt)
}

// ResolveAPIKey finds the key with that hash. An unknown hash is a
// CodeNotFound error.
func (s *Store) ResolveAPIKey(ctx context.Context, hash []byte) (KeyOwner, error) {
	var o KeyOwner
	var expires *time.Time
	err := s.pool.QueryRow(ctx, `SELECT k.id, k.tenant_id, k.revoked_at IS NOT NULL, k.scopes, k.expires_at, t.network_allow::text[]
		FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.hash = $1`, hash).
		Scan(&o.KeyID, &o.TenantID, &o.Revoked, &o.Scopes, &expires, &o.Allow)
	if expires != nil {
		o.ExpiresAt = *expires
	}
	return o, Classify(err, "api key")
}

// TouchAPIKeys records that keys were used (batched by the router).
func (s *Store) TouchAPIKeys(ctx context.Context, keyIDs []string, at time.Time) error {
	_, err := s.pool.Exec(ctx, `UPDATE api_keys SET last_used_at = $2 WHERE id = ANY($1::uuid[]) AND (last_used_at IS NULL OR last_used_at < $2)`, keyIDs, at)
	return Classify(err, "api keys")
}

// RecordExpiredKeys writes a key.expired audit event, once, for each key
// whose expiry has passed (a key stops working at expires_at by itself; this
// puts it in the tenant's audit trail). Every replica may call it: a key is
// marked in the statement that records it. It returns how many it recorded.
func (s *Store) RecordExpiredKeys(ctx context.Context) (int64, error) {
	tag, err := s.pool.Exec(ctx, `
		WITH expired AS (
			UPDATE api_keys SET expiry_recorded = true
			WHERE expires_at <= now() AND NOT expiry_recorded AND revoked_at IS NULL
			RETURNING id, tenant_id, expires_at)
		INSERT INTO audit_events (actor, action, tenant_id, subject, details)
		SELECT 'system', 'key.expired', tenant_id, id::text, jsonb_build_object('expires_at', to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
		FROM expired`)
	if err != nil {
		return 0, Classify(err, "expired API keys")
	}
	return tag.RowsAffected(), nil
}
