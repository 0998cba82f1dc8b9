package router

import (
	"net/http"
	"net/netip"
	"strings"

	"github.com/tenantplane/tenantplane/catalog"
)

// clientAddr is the address a request came from: the socket's peer, unless
// the peer is a trusted proxy; then X-Forwarded-For is read right to left,
// past the trusted proxies, and the first address that is not one is the
// client (every hop trusted: the leftmost). Only what trusted proxies
// appended is believed; a client can put anything at the left of the
// header, and it is never reached past an untrusted hop. ok is false when
// the address cannot be known (a malformed hop): an allowlist then refuses.
func clientAddr(req *http.Request, trusted []netip.Prefix) (addr netip.Addr, ok bool) {
	peer, err := netip.ParseAddrPort(req.RemoteAddr)
	if err != nil {
		return netip.Addr{}, false
	}
	addr = peer.Addr().Unmap().WithZone("")
	if !contains(trusted, addr) {
		return addr, true
	}
	values := req.Header.Values("X-Forwarded-For")
	for i := len(values) - 1; i >= 0; i-- {
		for rest := values[i]; rest != ""; {
			var hop string
			if j := strings.LastIndexByte(rest, ','); j >= 0 {
				rest, hop = rest[:j], rest[j+1:]
			} else {
				rest, hop = "", rest
			}
			if hop = strings.TrimSpace(hop); hop == "" {
				continue
			}
			a, err := netip.ParseAddr(hop)
			if err != nil {
				return netip.Addr{}, false
			}
			addr = a.Unmap().WithZone("")
			if !contains(trusted, addr) {
				return addr, true
			}
		}
	}
	return addr, true
}

func contains(prefixes []netip.Prefix, a netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// checkNetwork refuses a request of a tenant with an allowlist from
// anywhere else.
func (r *Router) checkNetwork(req *http.Request, e *resolved) error {
	if len(e.allow) == 0 {
		return nil
	}
	addr, ok := clientAddr(req, r.cfg.TrustedProxies)
	if ok && contains(e.allow, addr) {
		return nil
	}
	from := "an address that could not be read"
	if ok {
		from = addr.String()
	}
	return catalog.SubErrorf(catalog.CodeForbidden, catalog.SubcodeNetworkNotAllowed,
		"tenant %q accepts requests only from its allowed networks, and this one came from %s", e.tenant.Slug, from)
}
