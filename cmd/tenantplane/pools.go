package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

// Pool is a pool database as the admin API shows it.
type Pool struct {
	ID            apiID   `json:"id"`
	Name          string  `json:"name"`
	Server        string  `json:"server"`
	Capacity      int     `json:"capacity"`
	Tenants       int     `json:"tenants"`
	State         string  `json:"state"`
	SchemaVersion int64   `json:"schema_version"`
	LastError     string  `json:"last_error"`
	CreatedAt     apiTime `json:"created_at"`
}

func newPoolsCmd() *cobra.Command {
	cmd, o := newAdminGroup("pools", "Make and list pool databases, where pooled tenants' rows live")
	var capacity int
	create := &cobra.Command{
		Use:     "create SERVER [--capacity N]",
		Short:   "Make a pool database on a server for pooled tenants (plans whose isolation is pooled)",
		Example: `  tenantplane pools create pg-1 --capacity 2000`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := o.call(cmd, "POST", "/pools", nil, map[string]any{"server": args[0], "capacity": capacity})
			if err != nil {
				return err
			}
			var p Pool
			return o.print(cmd, raw, &p, func() error {
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "Pool database %s on %s is %s: room for %d tenants.\n", p.Name, p.Server, p.State, p.Capacity)
				return err
			})
		},
	}
	create.Flags().IntVar(&capacity, "capacity", 1000, "the most tenants it holds")
	list := &cobra.Command{
		Use:   "list",
		Short: "List the pool databases, with their tenants and capacity",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			raw, err := o.call(cmd, "GET", "/pools", nil, nil)
			if err != nil {
				return err
			}
			var page struct {
				Pools []Pool `json:"pools"`
			}
			return o.print(cmd, raw, &page, func() error { return writePools(cmd.OutOrStdout(), page.Pools) })
		},
	}
	cmd.AddCommand(create, list)
	return cmd
}

func writePools(w io.Writer, pools []Pool) error {
	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	t.row("ID", "NAME", "SERVER", "STATE", "TENANTS", "CAPACITY", "SCHEMA")
	for _, p := range pools {
		t.row(string(p.ID), p.Name, p.Server, p.State, strconv.Itoa(p.Tenants), strconv.Itoa(p.Capacity), strconv.FormatInt(p.SchemaVersion, 10))
	}
	return t.flush()
}

// newTenantsTierCmd is `tenants promote` and `tenants demote`: a move of
// the tenant's rows between its pool database and a database of its own.
func newTenantsTierCmd(o *adminOptions, promote bool) *cobra.Command {
	var (
		to    string
		pool  int64
		plan  string
		watch watchFlags
	)
	cmd := &cobra.Command{
		Use:   "promote SLUG [--to SERVER]",
		Short: "Move a pooled tenant's rows into a database of its own (on its pool's server, or --to)",
		Long: `Move a pooled tenant's rows out of its pool database into a database and
role of its own, with its writes held for the copy of its rows: the routers
hold its requests, its rows in the pool are fenced, copied, verified (counts
and hashes) and the tenant switched; its rows leave the pool once the keep
(TENANTPLANE_MOVE_KEEP) is over. Keys, usage, audit and billing carry over.`,
		Example: `  tenantplane tenants promote acme --to pg-2 --watch`,
	}
	if !promote {
		cmd.Use, cmd.Example = "demote SLUG [--pool ID]", `  tenantplane tenants demote acme --watch`
		cmd.Short = "Move a dedicated tenant's rows into a pool database (the one with most room, or --pool)"
		cmd.Long = `Move a dedicated tenant's rows into a pool database, with its writes held
for the copy: its database is fenced, its rows copied into the pool, verified
and the tenant switched; its database and role are dropped once the keep
(TENANTPLANE_MOVE_KEEP) is over.`
	}
	cmd.Args = cobra.ExactArgs(1)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		path, body := pathf("/tenants/%s/promote", args[0]), map[string]any{}
		if promote && to != "" {
			body["to"] = to
		}
		if !promote {
			path = pathf("/tenants/%s/demote", args[0])
			if pool != 0 {
				body["pool"] = pool
			}
		}
		if plan != "" {
			body["plan"] = plan
		}
		raw, err := o.call(cmd, "POST", path, nil, body)
		if err != nil {
			return err
		}
		return o.moveStarted(cmd, raw, watch)
	}
	cmd.Flags().StringVar(&plan, "plan", "", "a plan of the new tier the tenant takes when the move switches (default: it keeps its plan)")
	if promote {
		cmd.Flags().StringVar(&to, "to", "", "the server of its new database (default: its pool database's)")
	} else {
		cmd.Flags().Int64Var(&pool, "pool", 0, "the pool database's id (default: the one with the most room, on the tenant's server first)")
	}
	watch.registerMove(cmd)
	return cmd
}

// newTenantsSetPlanCmd changes a tenant's plan: at once within its tier, by
// a promotion or demotion across tiers.
func newTenantsSetPlanCmd(o *adminOptions) *cobra.Command {
	var watch watchFlags
	cmd := &cobra.Command{
		Use:   "set-plan SLUG PLAN",
		Short: "Give a tenant another plan: at once within its tier, else by a promotion or demotion that carries it",
		Long: `Give a tenant another plan (GET /admin/v1/plans lists them).

A plan of the tenant's tier (dedicated or pooled) applies at once: every
router applies its rate limit and connections within a second; the tenant
is printed. A plan of the other tier moves the tenant: a pooled tenant is
promoted into a database of its own, a dedicated one demoted into a pool
database, and the tenant takes the plan when the move switches (an aborted
or cancelled move leaves the old plan; reverting the move puts it back);
the move is printed.`,
		Example: `  tenantplane tenants set-plan acme pro --watch`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := o.call(cmd, "PATCH", pathf("/tenants/%s", args[0]), nil, map[string]string{"plan": args[1]})
			if err != nil {
				return err
			}
			var started struct {
				Move json.RawMessage `json:"move"`
			}
			if err := json.Unmarshal(raw, &started); err != nil {
				return fmt.Errorf("the admin API's answer is not the JSON expected: %w", err)
			}
			if started.Move != nil {
				if o.json && !watch.on {
					return o.print(cmd, raw, &started, func() error { return nil })
				}
				return o.moveStarted(cmd, started.Move, watch)
			}
			var t Tenant
			return o.print(cmd, raw, &t, func() error { return writeTenant(cmd.OutOrStdout(), t) })
		},
	}
	watch.registerMove(cmd)
	return cmd
}
