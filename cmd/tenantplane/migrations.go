package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"
)

// SchemaStatus is GET /migrations/status.
type SchemaStatus struct {
	NewestVersion int64          `json:"newest_version"`
	SchemaHash    string         `json:"schema_hash"`
	CheckedAt     apiTime        `json:"checked_at"`
	Tenants       int            `json:"tenants"`
	Histogram     []VersionCount `json:"histogram"`
	Behind        []TenantSchema `json:"behind"`
	Dirty         []TenantSchema `json:"dirty"`
	Disagrees     []TenantSchema `json:"catalog_disagrees"`
	Unreachable   []TenantSchema `json:"unreachable"`
}

// VersionCount is a bar of the version histogram.
type VersionCount struct {
	Version int64 `json:"version"`
	Tenants int   `json:"tenants"`
}

// TenantSchema is a tenant database's schema, and the catalog's copy.
type TenantSchema struct {
	Slug           string `json:"slug"`
	Server         string `json:"server"`
	Database       string `json:"database"`
	Version        *int64 `json:"version"`
	Dirty          bool   `json:"dirty"`
	CatalogVersion int64  `json:"catalog_version"`
	CatalogDirty   bool   `json:"catalog_dirty"`
	Error          string `json:"error"`
}

func newMigrationsCmd() *cobra.Command {
	cmd, o := newAdminGroup("migrations", "The tenant schema across the fleet: status (read from each database), force")
	cmd.AddCommand(newMigrationsStatusCmd(o), newMigrationsForceCmd(o))
	return cmd
}

func newMigrationsStatusCmd(o *adminOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Read every tenant database's schema version: the histogram, the tenants behind, dirty, or that the catalog is wrong about",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.client(os.Getenv)
			if err != nil {
				return err
			}
			if !cmd.Flags().Changed("timeout") {
				c.Timeout = time.Minute // it reads every tenant database
			}
			var raw json.RawMessage
			if err := c.do(cmd.Context(), "GET", "/migrations/status", nil, nil, &raw); err != nil {
				return err
			}
			var st SchemaStatus
			return o.print(cmd, raw, &st, func() error { return writeSchemaStatus(cmd.OutOrStdout(), st) })
		},
	}
}

func writeSchemaStatus(w io.Writer, st SchemaStatus) error {
	fmt.Fprintf(w, "Newest tenant schema version: %d (migrations %s). %d tenant databases read at %s.\n\n",
		st.NewestVersion, st.SchemaHash, st.Tenants, st.CheckedAt)
	if st.Tenants == 0 {
		_, err := fmt.Fprintln(w, "No tenants.")
		return err
	}
	t := newTable(w, "VERSION", "TENANTS")
	for _, h := range st.Histogram {
		t.row(strconv.FormatInt(h.Version, 10), strconv.Itoa(h.Tenants))
	}
	if err := t.flush(); err != nil {
		return err
	}
	version := func(s TenantSchema) string {
		if s.Version == nil {
			return "-"
		}
		v := strconv.FormatInt(*s.Version, 10)
		if s.Dirty {
			v += " (dirty)"
		}
		return v
	}
	catalogVersion := func(s TenantSchema) string {
		v := strconv.FormatInt(s.CatalogVersion, 10)
		if s.CatalogDirty {
			v += " (dirty)"
		}
		return v
	}
	sections := []struct {
		title       string
		rows        []TenantSchema
		extraHeader string
		extra       func(TenantSchema) string
	}{
		{"Behind the newest version", st.Behind, "", nil},
		{"Dirty: a migration failed mid-way; repair, then tenantplane migrations force SLUG VERSION", st.Dirty, "", nil},
		{"The catalog disagrees with the database", st.Disagrees, "CATALOG", catalogVersion},
		{"Unreachable", st.Unreachable, "ERROR", func(s TenantSchema) string { return truncate(s.Error, 120) }},
	}
	for _, s := range sections {
		if len(s.rows) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s (%d):\n", s.title, len(s.rows))
		header := []string{"SLUG", "SERVER", "DATABASE", "VERSION"}
		if s.extra != nil {
			header = append(header, s.extraHeader)
		}
		t := newTable(w, header...)
		for _, r := range s.rows {
			cells := []string{r.Slug, r.Server, r.Database, version(r)}
			if s.extra != nil {
				cells = append(cells, s.extra(r))
			}
			t.row(cells...)
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	if len(st.Behind)+len(st.Dirty)+len(st.Disagrees)+len(st.Unreachable) == 0 {
		_, err := fmt.Fprintln(w, "\nEvery tenant database is at the newest version, clean, as the catalog says.")
		return err
	}
	return nil
}

func newMigrationsForceCmd(o *adminOptions) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "force SLUG VERSION",
		Short: "Clear a dirty tenant database's flag at the version it really is at, after a repair by hand (audited)",
		Long: `Clear a dirty tenant database's flag at the version it really is at.

A migration that fails outside a transaction (a file marked
-- tenantplane:no-transaction) leaves the database dirty: part of it may have
run. Look at the database, finish or undo that part by hand, then say which
version it is at. Runs never do this by themselves.`,
		Example: `  tenantplane migrations force acme 11 --reason "dropped the invalid index"`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := strconv.ParseInt(args[1], 10, 64)
			if err != nil || v < 0 {
				return fmt.Errorf("VERSION must be a migration version (a whole number, 0 for none), got %q", args[1])
			}
			body := map[string]any{"version": v}
			if reason != "" {
				body["reason"] = reason
			}
			raw, err := o.call(cmd, "POST", pathf("/tenants/%s/migrations/force", args[0]), nil, body)
			if err != nil {
				return err
			}
			var t Tenant
			return o.print(cmd, raw, &t, func() error {
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "Forced tenant %s to schema version %s; it is clean.\n", t.Slug, t.schema())
				return err
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "what was repaired, for the audit log")
	return cmd
}
