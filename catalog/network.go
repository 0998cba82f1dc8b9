package catalog

import (
	"context"
	"net/netip"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// MaxAllowlist bounds a tenant's IP allowlist: every request of the tenant
// is checked against it.
const MaxAllowlist = 256

// ParsePrefixes reads CIDRs such as 203.0.113.0/24 and 2001:db8::/32; a
// bare address is its own network (/32, /128). A CIDR with host bits set
// (203.0.113.5/24) is refused rather than silently widened or narrowed.
// what names the list in messages. Duplicates are dropped; order is kept.
func ParsePrefixes(what string, cidrs []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(cidrs))
	for _, raw := range cidrs {
		s := strings.TrimSpace(raw)
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil || a.Zone() != "" {
				return nil, Errorf(CodeInvalid, "%s: %s is not a CIDR such as 203.0.113.0/24 or 2001:db8::/32", what, quote(raw))
			}
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		if p.Bits() < 0 || p != p.Masked() {
			return nil, Errorf(CodeInvalid, "%s: %s has bits set past its prefix length: write %s", what, quote(raw), p.Masked())
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// SetTenantNetwork replaces a tenant's IP allowlist (empty: any network)
// with CIDRs (ParsePrefixes'), records it in the audit log and announces it
// on TenantChannel, so every router applies it within a second. It returns
// the list as stored.
func (s *Store) SetTenantNetwork(ctx context.Context, tenantID string, cidrs []string, actor string) ([]string, error) {
	prefixes, err := ParsePrefixes("allow", cidrs)
	if err != nil {
		return nil, err
	}
	if len(prefixes) > MaxAllowlist {
		return nil, Errorf(CodeInvalid, "allow has %d networks; at most %d", len(prefixes), MaxAllowlist)
	}
	allow := make([]string, len(prefixes))
	for i, p := range prefixes {
		allow[i] = p.String()
	}
	err = s.InTx(ctx, func(tx pgx.Tx) error {
		var slug string
		err := tx.QueryRow(ctx, `UPDATE tenants SET network_allow = $2::cidr[], updated_at = now() WHERE id = $1 RETURNING slug`, tenantID, allow).Scan(&slug)
		if err != nil {
			return Classify(err, "tenant")
		}
		if err := InsertAudit(ctx, tx, AuditEvent{Actor: actor, Action: "tenant.network_changed", TenantID: tenantID, Subject: slug,
			Details: map[string]any{"allow": allow}}); err != nil {
			return err
		}
		return notifyTenant(ctx, tx, tenantID)
	})
	if err != nil {
		return nil, err
	}
	return allow, nil
}

// TenantNetwork returns a tenant's IP allowlist (empty: any network).
func (s *Store) TenantNetwork(ctx context.Context, tenantID string) ([]string, error) {
	var allow []string
	err := s.pool.QueryRow(ctx, `SELECT network_allow::text[] FROM tenants WHERE id = $1`, tenantID).Scan(&allow)
	if allow == nil {
		allow = []string{}
	}
	return allow, Classify(err, "tenant")
}
