package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

// Network is a tenant's IP allowlist.
type Network struct {
	Allow []string `json:"allow"`
}

func newTenantsNetworkCmd(o *adminOptions) *cobra.Command {
	var (
		allow    []string
		clearAll bool
	)
	cmd := &cobra.Command{
		Use:   "network SLUG [--allow CIDR ...] [--clear]",
		Short: "Show or set the networks a tenant's API calls may come from",
		Long: `Show a tenant's IP allowlist, or replace it.

With --allow (repeat it, or separate CIDRs with commas) the tenant API answers
the tenant's calls only from those networks, and 403 network_not_allowed from
anywhere else; --clear lets every network in again. Every replica applies a
change within a second. Behind a proxy, set TENANTPLANE_TRUSTED_PROXIES on the
server so that X-Forwarded-For is believed from it (and from nothing else).`,
		Example: "  tenantplane tenants network acme --allow 203.0.113.0/24 --allow 2001:db8::/32",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if clearAll && len(allow) > 0 {
				return fmt.Errorf("--clear and --allow together: give one")
			}
			method, body := "GET", any(nil)
			if clearAll || len(allow) > 0 {
				method, body = "PUT", Network{Allow: append([]string{}, allow...)}
			}
			raw, err := o.call(cmd, method, pathf("/tenants/%s/network", args[0]), nil, body)
			if err != nil {
				return err
			}
			var n Network
			return o.print(cmd, raw, &n, func() error { return writeNetwork(cmd.OutOrStdout(), args[0], n) })
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&allow, "allow", nil, "a network (CIDR) the tenant's calls may come from; repeat for more")
	f.BoolVar(&clearAll, "clear", false, "let every network in")
	return cmd
}

func writeNetwork(w io.Writer, slug string, n Network) error {
	if len(n.Allow) == 0 {
		_, err := fmt.Fprintf(w, "Tenant %s accepts calls from any network.\n", slug)
		return err
	}
	if _, err := fmt.Fprintf(w, "Tenant %s accepts calls only from:\n", slug); err != nil {
		return err
	}
	for _, cidr := range n.Allow {
		if _, err := fmt.Fprintf(w, "  %s\n", oneLine(cidr)); err != nil {
			return err
		}
	}
	return nil
}
