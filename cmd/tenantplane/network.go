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

// Hostname is a tenant's custom hostname.
type Hostname struct {
	Hostname  string  `json:"hostname"`
	CreatedAt apiTime `json:"created_at"`
}

func newTenantsHostnamesCmd(o *adminOptions) *cobra.Command {
	var add, remove string
	cmd := &cobra.Command{
		Use:   "hostnames SLUG [--add HOSTNAME | --remove HOSTNAME]",
		Short: "List, add or remove a tenant's custom hostnames",
		Long: `List a tenant's custom hostnames, or add or remove one.

A request to a tenant's hostname must carry one of its keys; another tenant's
key there answers as an unknown key does. A hostname belongs to one tenant.
Point its DNS (and certificate) at the tenant API.`,
		Example: "  tenantplane tenants hostnames acme --add api.acme.com",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			w := cmd.OutOrStdout()
			switch {
			case add != "" && remove != "":
				return fmt.Errorf("--add and --remove together: give one")
			case add != "":
				raw, err := o.call(cmd, "POST", pathf("/tenants/%s/hostnames", args[0]), nil, map[string]string{"hostname": add})
				if err != nil {
					return err
				}
				var h Hostname
				return o.print(cmd, raw, &h, func() error {
					_, err := fmt.Fprintf(w, "Tenant %s is served at %s.\n", args[0], oneLine(h.Hostname))
					return err
				})
			case remove != "":
				if _, err := o.call(cmd, "DELETE", pathf("/tenants/%s/hostnames/%s", args[0], remove), nil, nil); err != nil {
					return err
				}
				if o.json {
					return nil
				}
				_, err := fmt.Fprintf(w, "Removed hostname %s of tenant %s.\n", oneLine(remove), args[0])
				return err
			}
			raw, err := o.call(cmd, "GET", pathf("/tenants/%s/hostnames", args[0]), nil, nil)
			if err != nil {
				return err
			}
			var page struct {
				Hostnames []Hostname `json:"hostnames"`
			}
			return o.print(cmd, raw, &page, func() error {
				if len(page.Hostnames) == 0 {
					_, err := fmt.Fprintf(w, "Tenant %s has no custom hostnames.\n", args[0])
					return err
				}
				t := newTable(w, "HOSTNAME", "CREATED")
				for _, h := range page.Hostnames {
					t.row(h.Hostname, h.CreatedAt.String())
				}
				return t.flush()
			})
		},
	}
	cmd.Flags().StringVar(&add, "add", "", "give the tenant this hostname")
	cmd.Flags().StringVar(&remove, "remove", "", "take this hostname from the tenant")
	return cmd
}
