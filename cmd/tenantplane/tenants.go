package main

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"
)

// waitTimeout bounds `tenants create --wait` unless --timeout says otherwise:
// provisioning a database and migrating it can take longer than a plain call.
const waitTimeout = 5 * time.Minute

// Tenant is a tenant as the admin API shows it.
type Tenant struct {
	ID            apiID   `json:"id"`
	Slug          string  `json:"slug"`
	Name          string  `json:"name"`
	Plan          string  `json:"plan"`
	State         string  `json:"state"`
	Server        string  `json:"server"`
	Database      string  `json:"database"`
	SchemaVersion *int64  `json:"schema_version"`
	SchemaDirty   bool    `json:"schema_dirty"`
	LastError     string  `json:"last_error"`
	DeleteAfter   apiTime `json:"delete_after"`
	MoveID        apiID   `json:"move_id"`
	CreatedAt     apiTime `json:"created_at"`
	UpdatedAt     apiTime `json:"updated_at"`
}

// schema is the schema version for display, marked when dirty.
func (t Tenant) schema() string {
	v := "-"
	if t.SchemaVersion != nil {
		v = strconv.FormatInt(*t.SchemaVersion, 10)
	}
	if t.SchemaDirty {
		v += " (dirty)"
	}
	return v
}

// tenantPage is one answer of GET /tenants. Tenants stay raw so that --json
// --all can print them as they came.
type tenantPage struct {
	Tenants    []json.RawMessage `json:"tenants"`
	NextCursor string            `json:"next_cursor"`
}

func newTenantsCmd() *cobra.Command {
	cmd, o := newAdminGroup("tenants", "Create, list, show, suspend, resume, restore, retry, delete, move, promote and demote tenants, change their plan, rotate their credentials; back up, restore, export and erase their data")
	cmd.AddCommand(newTenantsCreateCmd(o), newTenantsListCmd(o), newTenantsShowCmd(o), newTenantsDeleteCmd(o), newTenantsMoveCmd(o), newTenantsTierCmd(o, true), newTenantsTierCmd(o, false), newTenantsSetPlanCmd(o),
		newTenantsNetworkCmd(o), newTenantsHostnamesCmd(o),
		newTenantsBackupCmd(o), newTenantsBackupsCmd(o), newTenantsRestoreBackupCmd(o), newTenantsRestoreStatusCmd(o),
		newTenantsExportCmd(o), newTenantsEraseCmd(o), newTenantsErasureCmd(o), newTenantsBillingAddressCmd(o))
	for _, a := range []struct{ action, done, short string }{
		{"suspend", "Suspended", "Suspend a tenant: its API calls get 403 within a second; its data stays"},
		{"resume", "Resumed", "Resume a suspended tenant"},
		{"restore", "Restored", "Restore a tenant that is deleting, before its grace period ends"},
		{"retry", "Retried", "Retry the failed step of a failed tenant"},
		{"rotate-credentials", "Rotated the database credentials of", "Give a tenant's database role a new password; routers switch to it within a second"},
	} {
		cmd.AddCommand(newTenantActionCmd(o, a.action, a.done, a.short))
	}
	return cmd
}

func newTenantsCreateCmd(o *adminOptions) *cobra.Command {
	var (
		req struct {
			Slug   string `json:"slug"`
			Name   string `json:"name"`
			Plan   string `json:"plan"`
			Server string `json:"server,omitempty"`
		}
		wait bool
	)
	cmd := &cobra.Command{
		Use:   "create SLUG --name NAME --plan PLAN",
		Short: "Create a tenant: a database of its own on the least loaded server (or --server)",
		Long: `Create a tenant: a database of its own on the least loaded server (or --server).

Creation is idempotent by slug. Without --wait the command returns once the
tenant is recorded (state provisioning); with --wait it returns once the
tenant is active, or fails with the reason, waiting up to 5 minutes
(--timeout changes that).`,
		Example: `  tenantplane tenants create acme --name "Acme Inc" --plan pro --wait`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Slug = args[0]
			c, err := o.client(os.Getenv)
			if err != nil {
				return err
			}
			var q url.Values
			if wait {
				q = url.Values{"wait": {"true"}}
				if !cmd.Flags().Changed("timeout") {
					c.Timeout = waitTimeout
				}
			}
			var raw json.RawMessage
			if err := c.do(cmd.Context(), "POST", "/tenants", q, req, &raw); err != nil {
				return err
			}
			var t Tenant
			return o.print(cmd, raw, &t, func() error { return writeTenantCreated(cmd.OutOrStdout(), t) })
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Name, "name", "", "display name of the tenant")
	f.StringVar(&req.Plan, "plan", "", "billing plan of the tenant")
	f.StringVar(&req.Server, "server", "", "server to place the tenant on (default: the least loaded with free capacity)")
	f.BoolVar(&wait, "wait", false, "return once the tenant is active (or failed), up to 5 minutes")
	_ = cmd.MarkFlagRequired("name")
	_ = cmd.MarkFlagRequired("plan")
	return cmd
}

func newTenantsListCmd(o *adminOptions) *cobra.Command {
	var (
		state, plan, server, cursor string
		limit                       int
		all                         bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List tenants, filtered by state, plan or server, a page at a time (or --all)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 0 {
				return fmt.Errorf("--limit must not be negative, got %d", limit)
			}
			c, err := o.client(os.Getenv)
			if err != nil {
				return err
			}
			q := url.Values{}
			for k, v := range map[string]string{"state": state, "plan": plan, "server": server} {
				if v != "" {
					q.Set(k, v)
				}
			}
			if limit > 0 {
				q.Set("limit", strconv.Itoa(limit))
			}
			var (
				tenants []json.RawMessage
				next    = cursor
				seen    = map[string]bool{}
				first   json.RawMessage
			)
			for {
				if next != "" {
					q.Set("cursor", next)
				}
				var raw json.RawMessage
				if err := c.do(cmd.Context(), "GET", "/tenants", q, nil, &raw); err != nil {
					return err
				}
				var page tenantPage
				if err := json.Unmarshal(raw, &page); err != nil {
					return fmt.Errorf("the admin API's answer is not the JSON expected: %w", err)
				}
				if first == nil {
					first = raw
				}
				tenants = append(tenants, page.Tenants...)
				next = page.NextCursor
				if !all || next == "" {
					break
				}
				if seen[next] {
					return fmt.Errorf("the admin API returned cursor %q twice; stopping to avoid a loop", next)
				}
				seen[next] = true
			}
			w := cmd.OutOrStdout()
			if o.json {
				if !all {
					return writeJSON(w, first)
				}
				merged, err := json.Marshal(tenantPage{Tenants: nonNil(tenants)})
				if err != nil {
					return err
				}
				return writeJSON(w, merged)
			}
			list := make([]Tenant, len(tenants))
			for i, raw := range tenants {
				if err := json.Unmarshal(raw, &list[i]); err != nil {
					return fmt.Errorf("the admin API's answer is not the JSON expected: %w", err)
				}
			}
			if err := writeTenants(w, list); err != nil {
				return err
			}
			if next != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "More tenants follow: add --cursor %s, or --all for every page.\n", next)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&state, "state", "", "only tenants in this state (provisioning, active, suspended, deleting, deleted, failed)")
	f.StringVar(&plan, "plan", "", "only tenants on this plan")
	f.StringVar(&server, "server", "", "only tenants on this server")
	f.IntVar(&limit, "limit", 0, "tenants per page (default: the API's)")
	f.StringVar(&cursor, "cursor", "", "start at this page (from a previous list)")
	f.BoolVar(&all, "all", false, "follow the cursors and list every page")
	return cmd
}

func nonNil(rs []json.RawMessage) []json.RawMessage {
	if rs == nil {
		return []json.RawMessage{}
	}
	return rs
}

func newTenantsShowCmd(o *adminOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "show SLUG",
		Short: "Show a tenant",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := o.call(cmd, "GET", pathf("/tenants/%s", args[0]), nil, nil)
			if err != nil {
				return err
			}
			var t Tenant
			return o.print(cmd, raw, &t, func() error { return writeTenant(cmd.OutOrStdout(), t) })
		},
	}
}

// newTenantActionCmd is one of the lifecycle calls that take an optional
// reason and answer with the tenant.
func newTenantActionCmd(o *adminOptions, action, done, short string) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   action + " SLUG",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var body any
			if reason != "" {
				body = map[string]string{"reason": reason}
			}
			raw, err := o.call(cmd, "POST", pathf("/tenants/%s/"+action, args[0]), nil, body)
			if err != nil {
				return err
			}
			var t Tenant
			return o.print(cmd, raw, &t, func() error {
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "%s tenant %s; it is now %s.\n", done, t.Slug, t.State)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the audit log")
	return cmd
}

func newTenantsDeleteCmd(o *adminOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "delete SLUG",
		Short: "Delete a tenant: soft first, its database is dropped after a grace period (restore undoes it until then)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := o.call(cmd, "DELETE", pathf("/tenants/%s", args[0]), nil, nil)
			if err != nil {
				return err
			}
			var t Tenant
			return o.print(cmd, raw, &t, func() error { return writeTenantDeleted(cmd.OutOrStdout(), t) })
		},
	}
}
