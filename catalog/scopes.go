package catalog

import (
	"slices"
	"strings"
	"time"
)

// Key scopes name what a tenant API key may do, one per route group of the
// tenant API. A key holds one or more; ScopeAll holds every one, today's and
// tomorrow's, and is what a key gets when none are asked for (and what every
// key issued before scopes existed holds).
const (
	ScopeUsersRead  = "users:read"
	ScopeUsersWrite = "users:write"
	ScopeUsageRead  = "usage:read"
	ScopeAuditRead  = "audit:read"
	ScopeAll        = "*"
)

// Scopes are the scopes a key may be given, in the order messages list them.
var Scopes = []string{ScopeUsersRead, ScopeUsersWrite, ScopeUsageRead, ScopeAuditRead, ScopeAll}

// MaxKeyLifetime bounds expires_at: a key meant to expire expires within
// ten years, which also keeps timestamps far from PostgreSQL's limits.
const MaxKeyLifetime = 10 * 365 * 24 * time.Hour

// NormalizeScopes checks scopes against Scopes and returns them without
// duplicates in Scopes' order; none is [ScopeAll]. An unknown scope is a
// CodeInvalid error that lists the valid ones.
func NormalizeScopes(scopes []string) ([]string, error) {
	if len(scopes) == 0 {
		return []string{ScopeAll}, nil
	}
	for _, s := range scopes {
		if !slices.Contains(Scopes, s) {
			return nil, Errorf(CodeInvalid, "scope %s is not a key scope: use %s", quote(s), strings.Join(Scopes, ", "))
		}
	}
	out := make([]string, 0, len(scopes))
	for _, s := range Scopes {
		if slices.Contains(scopes, s) {
			out = append(out, s)
		}
	}
	return out, nil
}
