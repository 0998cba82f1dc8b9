package router

import (
	"context"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
)

func TestClientAddr(t *testing.T) {
	t.Parallel()
	proxies := []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("10.9.0.0/16")}
	for _, tc := range []struct {
		name, peer string
		xff        []string
		trusted    []netip.Prefix
		want       string // "" : unknown
	}{
		{"no proxies trusted: the socket", "127.0.0.1:5000", []string{"10.1.2.3"}, nil, "127.0.0.1"},
		{"an untrusted peer's header is ignored", "192.0.2.9:5000", []string{"10.1.2.3"}, proxies, "192.0.2.9"},
		{"a trusted peer: the forwarded address", "127.0.0.1:5000", []string{"10.1.2.3"}, proxies, "10.1.2.3"},
		{"right to left past trusted hops", "127.0.0.1:5000", []string{"198.51.100.7, 203.0.113.5, 10.9.1.1"}, proxies, "203.0.113.5"},
		{"a forged left part is never reached", "127.0.0.1:5000", []string{"10.1.2.3, 203.0.113.5"}, proxies, "203.0.113.5"},
		{"several headers are one list", "127.0.0.1:5000", []string{"198.51.100.7", "203.0.113.5, 10.9.1.1"}, proxies, "203.0.113.5"},
		{"every hop trusted: the leftmost", "127.0.0.1:5000", []string{"10.9.3.3, 10.9.1.1"}, proxies, "10.9.3.3"},
		{"a trusted peer without a header: the peer", "127.0.0.1:5000", nil, proxies, "127.0.0.1"},
		{"a malformed hop: unknown", "127.0.0.1:5000", []string{"10.1.2.3, not-an-ip"}, proxies, ""},
		{"IPv6 peer", "[2001:db8::1]:443", nil, proxies, "2001:db8::1"},
		{"IPv4-mapped IPv6 is IPv4", "[::ffff:127.0.0.1]:443", []string{"::ffff:10.1.2.3"}, proxies, "10.1.2.3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/v1/me", nil)
			req.RemoteAddr = tc.peer
			for _, v := range tc.xff {
				req.Header.Add("X-Forwarded-For", v)
			}
			got, ok := clientAddr(req, tc.trusted)
			if tc.want == "" {
				require.False(t, ok, got.String())
				return
			}
			require.True(t, ok)
			require.Equal(t, tc.want, got.String())
		})
	}
}

// BenchmarkEnterpriseChecks is what a cache hit pays for its tenant's host,
// a key's expiry and scope, and a tenant's allowlist behind a trusted proxy (the rest of a hit
// is BenchmarkRouter's hit-overhead figure). Quick, no database:
//
//	go test -run '^$' -bench EnterpriseChecks ./router
func BenchmarkEnterpriseChecks(b *testing.B) {
	r := &Router{
		cfg:    Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, TenantDomain: "api.example.com"},
		scopes: map[routeKey]routeScope{{"GET", "/v1/users"}: {catalog.ScopeUsersRead, scopeBits[catalog.ScopeUsersRead]}},
	}
	e := &resolved{tenant: catalog.Tenant{Slug: "acme"}, scopes: scopesOf([]string{catalog.ScopeUsersRead, catalog.ScopeUsageRead}), expiresAt: time.Now().Add(time.Hour),
		allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("192.0.2.0/24")}}
	req := httptest.NewRequest("GET", "/v1/users", nil)
	req.RemoteAddr = "127.0.0.1:40000"
	req.Host = "acme.api.example.com"
	req.Header.Set("X-Forwarded-For", "198.51.100.7, 192.0.2.10")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if r.checkHost(ctx, req.Host, e) != nil || e.expired(time.Now()) || r.checkNetwork(req, e) != nil || r.checkScope("GET", "/v1/users", e) != nil {
			b.Fatal("refused")
		}
	}
}

func TestHostSlug(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		host, domain, slug string
		named              bool
	}{
		{"acme.api.example.com", "api.example.com", "acme", true},
		{"ACME.Api.Example.com.:8443", "api.example.com", "acme", true},
		{"api.example.com", "api.example.com", "", false},
		{"a.b.api.example.com", "api.example.com", "", true},
		{"-x.api.example.com", "api.example.com", "", true},
		{"acme.example.com", "api.example.com", "", false},
		{"127.0.0.1:8080", "api.example.com", "", false},
		{"acme.api.example.com", "", "", false},
		{"evilapi.example.com", "api.example.com", "", false},
	} {
		slug, named := hostSlug(normalHost(tc.host), tc.domain)
		require.Equal(t, tc.slug, slug, tc.host)
		require.Equal(t, tc.named, named, tc.host)
	}
}
