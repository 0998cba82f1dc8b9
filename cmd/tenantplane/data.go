package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
)

// Backup is a tenant's backup as the admin API shows it.
type Backup struct {
	ID            apiID   `json:"id"`
	Tenant        string  `json:"tenant"`
	Trigger       string  `json:"trigger"`
	State         string  `json:"state"`
	SizeBytes     *int64  `json:"size_bytes"`
	SHA256        string  `json:"sha256"`
	SchemaVersion *int64  `json:"schema_version"`
	Attempts      int     `json:"attempts"`
	LastError     string  `json:"last_error"`
	CreatedAt     apiTime `json:"created_at"`
	FinishedAt    apiTime `json:"finished_at"`
	ExpiresAt     apiTime `json:"expires_at"`
}

// Restore is a restore of a backup as the admin API shows it.
type Restore struct {
	ID        apiID            `json:"id"`
	BackupID  apiID            `json:"backup_id"`
	Source    string           `json:"source"`
	Tenant    string           `json:"tenant"`
	Mode      string           `json:"mode"`
	State     string           `json:"state"`
	Tables    map[string]int64 `json:"tables"`
	LastError string           `json:"last_error"`
}

// Export is a tenant's export as the admin API shows it.
type Export struct {
	ID        apiID   `json:"id"`
	Tenant    string  `json:"tenant"`
	State     string  `json:"state"`
	SizeBytes *int64  `json:"size_bytes"`
	SHA256    string  `json:"sha256"`
	LastError string  `json:"last_error"`
	ExpiresAt apiTime `json:"expires_at"`
	Manifest  *struct {
		SchemaVersion int64 `json:"schema_version"`
		Tables        []struct {
			Name string `json:"name"`
			Rows int64  `json:"rows"`
		} `json:"tables"`
	} `json:"manifest"`
}

// Erasure is an erasure record as the admin API shows it.
type Erasure struct {
	Tenant  string `json:"tenant"`
	State   string `json:"state"`
	Removed []struct {
		Kind, Name, Server, SHA256, Note string
		Count                            *int64
	} `json:"removed"`
	Kept []struct {
		Kind, Note string
		Count      *int64
	} `json:"kept"`
	FinishedAt    apiTime `json:"finished_at"`
	AlreadyErased bool    `json:"already_erased"`
}

// dataPoll is how often a command waiting for a backup, restore or export asks.
const dataPoll = 500 * time.Millisecond

// awaitState GETs path until its state is one of final, and returns that answer.
func (o *adminOptions) awaitState(cmd *cobra.Command, path string, final ...string) (json.RawMessage, error) {
	for {
		raw, err := o.call(cmd, "GET", path, nil, nil)
		if err != nil {
			return nil, err
		}
		var s struct {
			State string `json:"state"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("the admin API's answer is not the JSON expected: %w", err)
		}
		for _, f := range final {
			if s.State == f {
				return raw, nil
			}
		}
		select {
		case <-cmd.Context().Done():
			return nil, fmt.Errorf("stopped waiting; it goes on (GET %s%s shows it)", adminPathPrefix, path)
		case <-time.After(dataPoll):
		}
	}
}

func newTenantsBackupCmd(o *adminOptions) *cobra.Command {
	var wait bool
	cmd := &cobra.Command{
		Use:   "backup SLUG",
		Short: "Back up a tenant's database now (pg_dump -Fc into TENANTPLANE_BACKUP_DIR)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := o.call(cmd, "POST", pathf("/tenants/%s/backups", args[0]), nil, nil)
			if err != nil {
				return err
			}
			var b Backup
			if err := json.Unmarshal(raw, &b); err != nil {
				return err
			}
			if wait {
				if raw, err = o.awaitState(cmd, pathf("/tenants/%s/backups/%s", args[0], string(b.ID)), "done", "failed"); err != nil {
					return err
				}
			}
			return o.print(cmd, raw, &b, func() error { return writeBackups(cmd.OutOrStdout(), []Backup{b}) })
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the backup is done (or failed)")
	return cmd
}

func newTenantsBackupsCmd(o *adminOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "backups SLUG",
		Short: "List a tenant's backups, newest first",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := o.callAll(cmd, pathf("/tenants/%s/backups", args[0]), nil, "backups")
			if err != nil {
				return err
			}
			var page struct {
				Backups []Backup `json:"backups"`
			}
			return o.print(cmd, raw, &page, func() error { return writeBackups(cmd.OutOrStdout(), page.Backups) })
		},
	}
}

func writeBackups(w io.Writer, list []Backup) error {
	t := newTable(w, "ID", "TRIGGER", "STATE", "SIZE", "SCHEMA", "TAKEN", "EXPIRES", "SHA256", "ERROR")
	for _, b := range list {
		size, schema := "-", "-"
		if b.SizeBytes != nil {
			size = formatBytes(*b.SizeBytes)
		}
		if b.SchemaVersion != nil {
			schema = fmt.Sprint(*b.SchemaVersion)
		}
		t.row(string(b.ID), b.Trigger, b.State, size, schema, formatTime(b.FinishedAt), formatTime(b.ExpiresAt), truncate(b.SHA256, 16), truncate(b.LastError, 60))
	}
	return t.flush()
}

func formatTime(t apiTime) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func newTenantsRestoreBackupCmd(o *adminOptions) *cobra.Command {
	var as string
	var noWait bool
	cmd := &cobra.Command{
		Use:   "restore-backup SLUG BACKUP_ID [--as NEW_SLUG]",
		Short: "Restore a backup into a new tenant (--as), or in place with the tenant suspended meanwhile",
		Long: `Restore one of a tenant's backups.

With --as NEW_SLUG, a new tenant of that slug (the same plan, on the same
server) receives the backup, to compare or recover rows; the tenant itself is
untouched. Without it, the tenant is restored in place: it is suspended for
the restore (its API calls answer 403) and resumed after if it was active;
only a backup of its current schema version can be restored in place.

The command waits for the restore and prints the rows of each table read
back from the restored database.`,
		Example: `  tenantplane tenants restore-backup acme 42 --as acme-restored
  tenantplane tenants restore-backup acme 42`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var body any
			if as != "" {
				body = map[string]string{"as": as}
			}
			raw, err := o.call(cmd, "POST", pathf("/tenants/%s/backups/%s/restore", args[0], args[1]), nil, body)
			if err != nil {
				return err
			}
			var r Restore
			if err := json.Unmarshal(raw, &r); err != nil {
				return err
			}
			if !noWait {
				if raw, err = o.awaitState(cmd, pathf("/restores/%s", string(r.ID)), "done", "failed"); err != nil {
					return err
				}
			}
			return o.print(cmd, raw, &r, func() error { return writeRestore(cmd.OutOrStdout(), r) })
		},
	}
	cmd.Flags().StringVar(&as, "as", "", "the slug of a new tenant to restore into (default: in place)")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "answer at once instead of waiting for the restore")
	return cmd
}

func writeRestore(w io.Writer, r Restore) error {
	switch r.State {
	case "done":
		fmt.Fprintf(w, "Restored backup %s of %s into %s (%s).\n", r.BackupID, r.Source, r.Tenant, strings.ReplaceAll(r.Mode, "_", " "))
		names := make([]string, 0, len(r.Tables))
		for n := range r.Tables {
			names = append(names, n)
		}
		sort.Strings(names)
		t := newTable(w, "TABLE", "ROWS")
		for _, n := range names {
			t.row(n, humanize.Comma(r.Tables[n]))
		}
		return t.flush()
	case "failed":
		return fmt.Errorf("restore %s of backup %s into %s failed: %s", r.ID, r.BackupID, r.Tenant, r.LastError)
	}
	_, err := fmt.Fprintf(w, "Restore %s of backup %s into %s is %s; follow it with: tenantplane tenants restore-status %s\n", r.ID, r.BackupID, r.Tenant, r.State, r.ID)
	return err
}

func newTenantsRestoreStatusCmd(o *adminOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "restore-status RESTORE_ID",
		Short: "Show a restore: its state and the rows of each table restored",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := o.call(cmd, "GET", pathf("/restores/%s", args[0]), nil, nil)
			if err != nil {
				return err
			}
			var r Restore
			return o.print(cmd, raw, &r, func() error { return writeRestore(cmd.OutOrStdout(), r) })
		},
	}
}

func newTenantsExportCmd(o *adminOptions) *cobra.Command {
	var (
		dump bool
		out  string
	)
	cmd := &cobra.Command{
		Use:   "export SLUG [--dump] [--out FILE]",
		Short: "Export a tenant's data: a zip of JSON lines per table with a manifest",
		Long: `Export a tenant's data (right to data portability).

The export is a zip: one JSON-lines file per table (tables/NAME.jsonl), a
manifest.json with each table's row count and the SHA-256 of each file, and
with --dump a pg_dump -Fc of the same snapshot. The command waits for it;
with --out it downloads the zip to FILE and checks its SHA-256.`,
		Example: `  tenantplane tenants export acme --out acme.zip`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := o.call(cmd, "POST", pathf("/tenants/%s/exports", args[0]), nil, map[string]bool{"include_dump": dump})
			if err != nil {
				return err
			}
			var x Export
			if err := json.Unmarshal(raw, &x); err != nil {
				return err
			}
			if raw, err = o.awaitState(cmd, pathf("/tenants/%s/exports/%s", args[0], string(x.ID)), "done", "failed"); err != nil {
				return err
			}
			if err := json.Unmarshal(raw, &x); err != nil {
				return err
			}
			if x.State == "failed" {
				return fmt.Errorf("export %s of %s failed: %s", x.ID, x.Tenant, x.LastError)
			}
			if out != "" {
				if err := o.download(cmd.Context(), pathf("/tenants/%s/exports/%s/download", args[0], string(x.ID)), out, x.SHA256); err != nil {
					return err
				}
			}
			return o.print(cmd, raw, &x, func() error {
				fmt.Fprintf(cmd.OutOrStdout(), "Export %s of %s: %s, SHA-256 %s, until %s.\n", x.ID, x.Tenant, formatBytes(deref(x.SizeBytes)), x.SHA256, formatTime(x.ExpiresAt))
				if out != "" {
					fmt.Fprintf(cmd.OutOrStdout(), "Downloaded to %s (checksum checked).\n", out)
				}
				if x.Manifest != nil {
					t := newTable(cmd.OutOrStdout(), "TABLE", "ROWS")
					for _, mt := range x.Manifest.Tables {
						t.row(mt.Name, humanize.Comma(mt.Rows))
					}
					return t.flush()
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&dump, "dump", false, "add a pg_dump -Fc of the same snapshot to the zip")
	cmd.Flags().StringVar(&out, "out", "", "download the zip to this file")
	return cmd
}

func deref(p *int64) int64 {
	if p == nil {
		return 0
	}
	return *p
}

// download streams an admin API file answer into path, checking its SHA-256.
// Only the connection has a bound, not the transfer: an export is as large as
// the tenant's data.
func (o *adminOptions) download(ctx context.Context, path, file, sum string) error {
	c, err := o.client(os.Getenv)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, "GET", strings.TrimRight(c.BaseURL, "/")+adminPathPrefix+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return c.transportError(ctx, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return apiErrorOf(resp, raw)
	}
	tmp := file + ".partial"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(f, h), resp.Body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && hex.EncodeToString(h.Sum(nil)) != sum {
		err = fmt.Errorf("the download's SHA-256 is not the export's (%s): try again", sum)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, file)
}

func newTenantsEraseCmd(o *adminOptions) *cobra.Command {
	var confirm, reason string
	cmd := &cobra.Command{
		Use:   "erase SLUG --confirm SLUG",
		Short: "Erase a tenant for good: its database, backups, exports, archives, keys and Stripe customer",
		Long: `Erase a tenant (right to erasure). This cannot be undone.

Drops the tenant's database and role on every server, deletes its backups,
exports and archived dumps (each hashed first), its API keys and hostnames,
its billing address and its Stripe customer, and clears its name. Its
invoices and usage totals are kept, as tax law requires, and the audit log.
The tenant stays as a tombstone (state deleted) and the erasure record, with
what was removed and the hashes of the removed files, is shown by
tenantplane tenants erasure SLUG. Erasing an erased tenant does nothing.`,
		Example: `  tenantplane tenants erase acme --confirm acme --reason "ticket 4711"`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if confirm != args[0] {
				return fmt.Errorf("--confirm must repeat the slug (%s): erasure cannot be undone", args[0])
			}
			raw, err := o.call(cmd, "POST", pathf("/tenants/%s/erase", args[0]), nil, map[string]string{"confirm": confirm, "reason": reason})
			if err != nil {
				return err
			}
			var e Erasure
			return o.print(cmd, raw, &e, func() error { return writeErasure(cmd.OutOrStdout(), e) })
		},
	}
	cmd.Flags().StringVar(&confirm, "confirm", "", "the tenant's slug again (required)")
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the record and the audit log")
	_ = cmd.MarkFlagRequired("confirm")
	return cmd
}

func newTenantsErasureCmd(o *adminOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "erasure SLUG",
		Short: "Show the record of a tenant's erasure: what was removed, with hashes, and what was kept",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := o.call(cmd, "GET", pathf("/tenants/%s/erasure", args[0]), nil, nil)
			if err != nil {
				return err
			}
			var e Erasure
			return o.print(cmd, raw, &e, func() error { return writeErasure(cmd.OutOrStdout(), e) })
		},
	}
}

func writeErasure(w io.Writer, e Erasure) error {
	switch {
	case e.AlreadyErased:
		fmt.Fprintf(w, "Tenant %s was erased before (%s); nothing was done.\n", e.Tenant, formatTime(e.FinishedAt))
	case e.State == "done":
		fmt.Fprintf(w, "Erased tenant %s at %s.\n", e.Tenant, formatTime(e.FinishedAt))
	default:
		fmt.Fprintf(w, "The erasure of %s is %s: run it again to finish it.\n", e.Tenant, e.State)
	}
	t := newTable(w, "REMOVED", "NAME", "SERVER", "COUNT", "SHA256")
	for _, a := range e.Removed {
		count := "-"
		if a.Count != nil {
			count = fmt.Sprint(*a.Count)
		}
		t.row(a.Kind, a.Name, a.Server, count, a.SHA256)
	}
	if err := t.flush(); err != nil {
		return err
	}
	t = newTable(w, "KEPT", "COUNT", "WHY")
	for _, a := range e.Kept {
		count := "-"
		if a.Count != nil {
			count = fmt.Sprint(*a.Count)
		}
		t.row(a.Kind, count, a.Note)
	}
	return t.flush()
}

// BillingAddress is a tenant's billing address as the admin API shows it.
type BillingAddress struct {
	Country    string  `json:"country"`
	PostalCode string  `json:"postal_code"`
	State      string  `json:"state"`
	City       string  `json:"city"`
	Line1      string  `json:"line1"`
	SyncedAt   apiTime `json:"synced_at"`
	SyncError  string  `json:"sync_error"`
}

func newTenantsBillingAddressCmd(o *adminOptions) *cobra.Command {
	var a BillingAddress
	cmd := &cobra.Command{
		Use:   "billing-address SLUG [--country CC --postal-code CODE --state ST]",
		Short: "Show or set a tenant's billing address (sent to its Stripe customer; Stripe Tax locates it there)",
		Long: `Show a tenant's billing address, or set it with --country (an ISO 3166-1
code such as US, DE, GB) and, where needed, --postal-code and --state (both
required in the US and Canada). It is sent to the tenant's Stripe customer;
with TENANTPLANE_STRIPE_TAX=automatic Stripe computes each invoice's tax
from it.`,
		Example: `  tenantplane tenants billing-address acme --country US --postal-code 94107 --state CA`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := pathf("/tenants/%s/billing-address", args[0])
			var raw json.RawMessage
			var err error
			if a.Country != "" {
				raw, err = o.call(cmd, "PUT", path, nil, map[string]string{"country": a.Country, "postal_code": a.PostalCode, "state": a.State, "city": a.City, "line1": a.Line1})
			} else {
				raw, err = o.call(cmd, "GET", path, nil, nil)
			}
			if err != nil {
				return err
			}
			var got BillingAddress
			return o.print(cmd, raw, &got, func() error {
				w := cmd.OutOrStdout()
				fmt.Fprintf(w, "%s: %s\n", args[0], strings.Join(nonEmpty(got.Line1, got.City, got.State, got.PostalCode, got.Country), ", "))
				switch {
				case got.SyncError != "":
					fmt.Fprintf(w, "Stripe did not take it yet (%s); the next billing run sends it.\n", got.SyncError)
				case !got.SyncedAt.IsZero():
					fmt.Fprintf(w, "Sent to its Stripe customer at %s.\n", formatTime(got.SyncedAt))
				default:
					fmt.Fprintln(w, "Not sent to Stripe (no Stripe customer yet).")
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&a.Country, "country", "", "ISO 3166-1 alpha-2 country code; setting it sets the address")
	cmd.Flags().StringVar(&a.PostalCode, "postal-code", "", "postal code (required in the US and Canada)")
	cmd.Flags().StringVar(&a.State, "state", "", "state or province (required in the US and Canada)")
	cmd.Flags().StringVar(&a.City, "city", "", "city")
	cmd.Flags().StringVar(&a.Line1, "line1", "", "street address")
	return cmd
}

func nonEmpty(vs ...string) []string {
	var out []string
	for _, v := range vs {
		if v != "" {
			out = append(out, v)
		}
	}
	return out
}
