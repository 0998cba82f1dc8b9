package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// writeJSON prints an API answer as it came, indented.
func writeJSON(w io.Writer, raw json.RawMessage) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return fmt.Errorf("the admin API answered with malformed JSON: %w", err)
	}
	buf.WriteByte('\n')
	_, err := w.Write(buf.Bytes())
	return err
}

// table writes aligned columns. Cells are made single-line so that a value
// with a tab or newline in it (an error message) cannot break the layout.
type table struct {
	tw *tabwriter.Writer
}

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	t.row(header...)
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		cells[i] = oneLine(c)
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if s == "" {
		return "-"
	}
	return s
}

func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-3]) + "..."
}

// apiTime is a timestamp of the API: RFC 3339, or null or "" when unset.
type apiTime struct{ time.Time }

func (t *apiTime) UnmarshalJSON(b []byte) error {
	if string(b) == "null" || string(b) == `""` {
		t.Time = time.Time{}
		return nil
	}
	return t.Time.UnmarshalJSON(b)
}

// String is the time in UTC, RFC 3339, or "-" when unset.
func (t apiTime) String() string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// apiID is an identifier the API may send as a number or a string.
type apiID string

func (id *apiID) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*id = apiID(s)
		return nil
	}
	if string(b) == "null" {
		*id = ""
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("id: %w", err)
	}
	*id = apiID(n.String())
	return nil
}

func writeServers(w io.Writer, servers []Server) error {
	if len(servers) == 0 {
		_, err := fmt.Fprintln(w, "No servers registered; add one with: tenantplane servers add NAME --dsn DSN")
		return err
	}
	t := newTable(w, "NAME", "STATE", "TENANTS/CAPACITY", "CONN_BUDGET", "DSN")
	for _, s := range servers {
		t.row(s.Name, s.State, fmt.Sprintf("%d/%d", s.Tenants, s.Capacity), strconv.Itoa(s.ConnBudget), s.DSN)
	}
	return t.flush()
}

func writeTenants(w io.Writer, tenants []Tenant) error {
	if len(tenants) == 0 {
		_, err := fmt.Fprintln(w, "No tenants.")
		return err
	}
	withErrors := false
	for _, tn := range tenants {
		withErrors = withErrors || tn.LastError != ""
	}
	header := []string{"SLUG", "STATE", "PLAN", "SERVER", "SCHEMA", "CREATED"}
	if withErrors {
		header = append(header, "LAST_ERROR")
	}
	t := newTable(w, header...)
	for _, tn := range tenants {
		cells := []string{tn.Slug, tn.State, tn.Plan, tn.Server, tn.schema(), tn.CreatedAt.String()}
		if withErrors {
			cells = append(cells, truncate(tn.LastError, 80))
		}
		t.row(cells...)
	}
	return t.flush()
}

// writeTenant prints one tenant, a field a line.
func writeTenant(w io.Writer, tn Tenant) error {
	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	t.row("SLUG:", tn.Slug)
	t.row("NAME:", tn.Name)
	t.row("ID:", string(tn.ID))
	t.row("STATE:", tn.State)
	t.row("PLAN:", tn.Plan)
	t.row("SERVER:", tn.Server)
	t.row("DATABASE:", tn.Database)
	t.row("SCHEMA:", tn.schema())
	if tn.LastError != "" {
		t.row("LAST_ERROR:", tn.LastError)
	}
	if !tn.DeleteAfter.IsZero() {
		t.row("DELETE_AFTER:", tn.DeleteAfter.String())
	}
	if tn.MoveID != "" {
		t.row("MOVING:", fmt.Sprintf("move %s; follow it with: tenantplane moves show %s --watch", tn.MoveID, tn.MoveID))
	}
	t.row("CREATED:", tn.CreatedAt.String())
	t.row("UPDATED:", tn.UpdatedAt.String())
	return t.flush()
}

func writeKeys(w io.Writer, keys []APIKey) error {
	if len(keys) == 0 {
		_, err := fmt.Fprintln(w, "No API keys.")
		return err
	}
	t := newTable(w, "ID", "PREFIX", "SCOPES", "CREATED", "EXPIRES", "LAST_USED", "REVOKED")
	for _, k := range keys {
		t.row(string(k.ID), k.Prefix, scopesText(k.Scopes), k.CreatedAt.String(), k.ExpiresAt.String(), k.LastUsedAt.String(), k.RevokedAt.String())
	}
	return t.flush()
}

// writeCreatedKey prints a new key, which is the only time anyone sees it.
func writeCreatedKey(w io.Writer, slug string, k CreatedKey) error {
	expires := "never expires"
	if !k.ExpiresAt.IsZero() {
		expires = "expires " + k.ExpiresAt.String()
	}
	_, err := fmt.Fprintf(w, "Created API key %s (prefix %s) for tenant %s, scopes %s, %s.\nThe key is shown only this once; store it now:\n\n%s\n",
		oneLine(string(k.ID)), oneLine(k.Prefix), slug, oneLine(scopesText(k.Scopes)), expires, k.Key)
	return err
}

// writeTenantCreated prints a tenant just created: a line on what happens
// next, then the tenant.
func writeTenantCreated(w io.Writer, t Tenant) error {
	var err error
	if t.State == "provisioning" {
		_, err = fmt.Fprintf(w, "Tenant %s is provisioning; follow it with: tenantplane tenants show %s\n\n", t.Slug, t.Slug)
	} else {
		_, err = fmt.Fprintf(w, "Tenant %s is %s.\n\n", t.Slug, t.State)
	}
	if err != nil {
		return err
	}
	return writeTenant(w, t)
}

// writeTenantDeleted prints a tenant just (soft-)deleted and how to undo it.
func writeTenantDeleted(w io.Writer, t Tenant) error {
	when := "its grace period"
	if !t.DeleteAfter.IsZero() {
		when = t.DeleteAfter.String()
	}
	_, err := fmt.Fprintf(w, "Tenant %s is %s; its database is dropped after %s. Until then, undo with: tenantplane tenants restore %s\n",
		t.Slug, t.State, when, t.Slug)
	return err
}
