package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// Server is a database server as the admin API shows it. DSN has no password.
type Server struct {
	ID         apiID   `json:"id"`
	Name       string  `json:"name"`
	DSN        string  `json:"dsn"`
	Capacity   int     `json:"capacity"`
	ConnBudget int     `json:"conn_budget"`
	State      string  `json:"state"`
	Tenants    int     `json:"tenants"`
	CreatedAt  apiTime `json:"created_at"`
}

func newServersCmd() *cobra.Command {
	cmd, o := newAdminGroup("servers", "Register, list, resize and drain the PostgreSQL servers that hold tenant databases")
	cmd.AddCommand(newServersAddCmd(o), newServersListCmd(o), newServersSetCmd(o), newServersDrainCmd(o), newServersActivateCmd(o), newServersRebalanceCmd(o))
	return cmd
}

func newServersAddCmd(o *adminOptions) *cobra.Command {
	var req struct {
		Name       string `json:"name"`
		DSN        string `json:"dsn"`
		Capacity   int    `json:"capacity,omitempty"`
		ConnBudget int    `json:"conn_budget,omitempty"`
	}
	cmd := &cobra.Command{
		Use:   "add NAME --dsn DSN",
		Short: "Register a server; the admin API checks it can create databases and roles there",
		Example: `  tenantplane servers add pg-1 --dsn postgres://admin:secret@10.0.0.5:5432/postgres --capacity 200
  echo "$PG1_DSN" | tenantplane servers add pg-1 --dsn -`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			if req.DSN == "-" {
				line, err := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
				if strings.TrimSpace(line) == "" {
					return fmt.Errorf("--dsn -: no DSN on standard input (%v)", err)
				}
				req.DSN = strings.TrimSpace(line)
			}
			raw, err := o.call(cmd, "POST", "/servers", nil, req)
			if err != nil {
				return err
			}
			var s Server
			return o.print(cmd, raw, &s, func() error {
				return writeServers(cmd.OutOrStdout(), []Server{s})
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.DSN, "dsn", "", `admin DSN of the server (its role needs CREATEDB and CREATEROLE); "-" reads it from standard input, keeping the password out of the process list`)
	f.IntVar(&req.Capacity, "capacity", 0, "most tenant databases the server may hold (default: the API's, 100)")
	f.IntVar(&req.ConnBudget, "conn-budget", 0, "most connections tenant pools may hold on the server (default: the API's)")
	_ = cmd.MarkFlagRequired("dsn")
	return cmd
}

func newServersListCmd(o *adminOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the servers with their load",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			raw, err := o.callAll(cmd, "/servers", nil, "servers")
			if err != nil {
				return err
			}
			var page struct {
				Servers []Server `json:"servers"`
			}
			return o.print(cmd, raw, &page, func() error {
				return writeServers(cmd.OutOrStdout(), page.Servers)
			})
		},
	}
}

func newServersDrainCmd(o *adminOptions) *cobra.Command {
	var (
		req struct {
			Evacuate    bool   `json:"evacuate"`
			Concurrency int    `json:"concurrency,omitempty"`
			PerServer   int    `json:"per_server,omitempty"`
			Mode        string `json:"mode,omitempty"`
			MaxAttempts int    `json:"max_attempts,omitempty"`
		}
		watch watchFlags
	)
	cmd := &cobra.Command{
		Use:   "drain NAME [--evacuate [--concurrency N] [--per-server N] [--watch]]",
		Short: "Stop placing new tenants on a server; with --evacuate, move every tenant off it too",
		Long: `Stop placing new tenants on a server; the tenants it has stay.

With --evacuate the server becomes evacuating and every tenant is moved off it,
at most --concurrency moves at once and --per-server into one target, each to
the active server with the most free capacity that has room. A tenant whose
move fails is tried again, up to --max-attempts moves, then reported with its
error; the others go on. The server ends empty
when no tenant is left on it, draining otherwise. Pause, resume or cancel it
with: tenantplane evacuations pause|resume|cancel ID`,
		Example: `  tenantplane servers drain pg-1
  tenantplane servers drain pg-1 --evacuate --concurrency 4 --per-server 2 --watch`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !req.Evacuate {
				for _, f := range []string{"concurrency", "per-server", "mode", "max-attempts", "watch"} {
					if cmd.Flags().Changed(f) {
						return fmt.Errorf("--%s goes with --evacuate", f)
					}
				}
				raw, err := o.call(cmd, "POST", pathf("/servers/%s/drain", args[0]), nil, nil)
				if err != nil {
					return err
				}
				var s Server
				return o.print(cmd, raw, &s, func() error {
					_, err := fmt.Fprintf(cmd.OutOrStdout(), "Server %s is %s: it keeps its %d tenants and takes no new ones.\n", s.Name, s.State, s.Tenants)
					return err
				})
			}
			raw, err := o.call(cmd, "POST", pathf("/servers/%s/drain", args[0]), nil, req)
			if err != nil {
				return err
			}
			var e Evacuation
			if err := json.Unmarshal(raw, &e); err != nil {
				return fmt.Errorf("the admin API's answer is not the JSON expected: %w", err)
			}
			started := func() error {
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "Evacuating server %s: %d tenants to move, %d at once, %d per target (evacuation %s).\nFollow it with: tenantplane evacuations show %s --watch\n",
					e.Server, e.Total, e.Concurrency, e.PerServer, e.ID, e.ID)
				return err
			}
			if !watch.on {
				return o.print(cmd, raw, &e, started)
			}
			if !o.json {
				if err := started(); err != nil {
					return err
				}
			}
			return o.watchEvacuation(cmd, string(e.ID), watch)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&req.Evacuate, "evacuate", false, "move every tenant off the server")
	f.IntVar(&req.Concurrency, "concurrency", 0, "with --evacuate: most moves under way at once (default: the API's, 4)")
	f.IntVar(&req.PerServer, "per-server", 0, "with --evacuate: most moves under way at once into one server (default: the API's, 2)")
	f.StringVar(&req.Mode, "mode", "", "with --evacuate: online or copy (default: online when possible, else the tenant is reported)")
	f.IntVar(&req.MaxAttempts, "max-attempts", 0, "with --evacuate: moves of one tenant tried before it is reported failed (default: the API's, 3)")
	watch.registerEvacuation(cmd)
	return cmd
}

func newServersSetCmd(o *adminOptions) *cobra.Command {
	var capacity, connBudget int
	cmd := &cobra.Command{
		Use:   "set NAME [--capacity N] [--conn-budget N]",
		Short: "Change a server's capacity or connection budget; running routers apply a new budget within a second",
		Example: `  tenantplane servers set pg-1 --conn-budget 120
  tenantplane servers set pg-1 --capacity 300 --conn-budget 150`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := map[string]int{}
			if cmd.Flags().Changed("capacity") {
				req["capacity"] = capacity
			}
			if cmd.Flags().Changed("conn-budget") {
				req["conn_budget"] = connBudget
			}
			if len(req) == 0 {
				return fmt.Errorf("nothing to change: pass --capacity and/or --conn-budget")
			}
			raw, err := o.call(cmd, "PATCH", pathf("/servers/%s", args[0]), nil, req)
			if err != nil {
				return err
			}
			var s Server
			return o.print(cmd, raw, &s, func() error {
				return writeServers(cmd.OutOrStdout(), []Server{s})
			})
		},
	}
	f := cmd.Flags()
	f.IntVar(&capacity, "capacity", 0, "most tenant databases the server may hold")
	f.IntVar(&connBudget, "conn-budget", 0, "most connections tenant pools may hold on the server, over every replica")
	return cmd
}

func newServersActivateCmd(o *adminOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "activate NAME",
		Short: "Place new tenants on a draining or empty server again",
		Long: `Place new tenants on a server again: one that was drained, or emptied by an
evacuation (after its upgrade, say). A server under evacuation is refused:
pause or cancel the evacuation first.`,
		Example: "  tenantplane servers activate pg-1",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := o.call(cmd, "POST", pathf("/servers/%s/activate", args[0]), nil, nil)
			if err != nil {
				return err
			}
			var s Server
			return o.print(cmd, raw, &s, func() error {
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "Server %s is %s: it takes new tenants (%d of %d places used).\n", s.Name, s.State, s.Tenants, s.Capacity)
				return err
			})
		},
	}
}
