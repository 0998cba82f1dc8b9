package main

import (
	"bufio"
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
	cmd.AddCommand(newServersAddCmd(o), newServersListCmd(o), newServersSetCmd(o), newServersDrainCmd(o))
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
	return &cobra.Command{
		Use:   "drain NAME",
		Short: "Stop placing new tenants on a server; the tenants it has stay",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := o.call(cmd, "POST", pathf("/servers/%s/drain", args[0]), nil, nil)
			if err != nil {
				return err
			}
			var s Server
			return o.print(cmd, raw, &s, func() error {
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "Server %s is %s: it keeps its %d tenants and takes no new ones.\n", s.Name, s.State, s.Tenants)
				return err
			})
		},
	}
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
