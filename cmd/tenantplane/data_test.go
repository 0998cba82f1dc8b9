package main

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestTenantsRestoreBackupWaitsAndShowsTheRows: restore-backup --as sends
// the new slug, follows the restore until it is done and prints the rows of
// each table; without --as the body is empty (in place); a failed restore
// is an error carrying its reason.
func TestTenantsRestoreBackupWaitsAndShowsTheRows(t *testing.T) {
	t.Parallel()
	pending := `{"id": 3, "backup_id": 7, "source": "acme", "tenant": "acme-restored", "mode": "new_tenant", "state": "pending", "tables": {}, "last_error": ""}`
	done := `{"id": 3, "backup_id": 7, "source": "acme", "tenant": "acme-restored", "mode": "new_tenant", "state": "done", "tables": {"users": 1234, "orders": 5}, "last_error": ""}`
	failed := `{"id": 4, "backup_id": 7, "source": "acme", "tenant": "acme", "mode": "in_place", "state": "failed", "tables": {}, "last_error": "pg_restore: the disk is full"}`
	admin, url := newCannedAdmin(t, map[string][]cannedAnswer{
		"POST /tenants/acme/backups/7/restore": {{http.StatusAccepted, pending}, {http.StatusAccepted, failed}},
		"GET /restores/3":                      {ok(pending), ok(done)},
		"GET /restores/4":                      {ok(failed)},
	})
	stdout, stderr, err := runCLI(t, "", "tenants", "restore-backup", "acme", "7", "--as", "acme-restored", "--admin-url", url, "--token", testToken)
	require.NoError(t, err, stderr)
	require.Equal(t, []string{`{"as":"acme-restored"}`}, admin.sent("POST /tenants/acme/backups/7/restore"))
	require.Contains(t, stdout, "Restored backup 7 of acme into acme-restored (new tenant).\n")
	require.Contains(t, stdout, "orders  5\nusers   1,234\n")

	_, _, err = runCLI(t, "", "tenants", "restore-backup", "acme", "7", "--admin-url", url, "--token", testToken)
	require.ErrorContains(t, err, "restore 4 of backup 7 into acme failed: pg_restore: the disk is full")
	require.Equal(t, "", admin.sent("POST /tenants/acme/backups/7/restore")[1], "in place: no body")
}

// TestTenantsEraseNeedsTheSlugTwice: erase refuses a --confirm that is not
// the slug before calling the API, and prints what was removed and kept.
func TestTenantsEraseNeedsTheSlugTwice(t *testing.T) {
	t.Parallel()
	record := `{"tenant": "acme", "state": "done", "finished_at": "2026-03-01T12:00:00Z",
		"removed": [{"kind": "database", "name": "t_1", "server": "pg-1"}, {"kind": "backup", "name": "backup 7", "sha256": "abc123"}],
		"kept": [{"kind": "invoices", "count": 3, "note": "kept, as tax law requires"}]}`
	admin, url := newCannedAdmin(t, map[string][]cannedAnswer{"POST /tenants/acme/erase": {ok(record)}})
	_, _, err := runCLI(t, "", "tenants", "erase", "acme", "--confirm", "acm", "--admin-url", url, "--token", testToken)
	require.ErrorContains(t, err, "--confirm must repeat the slug (acme)")
	require.Empty(t, admin.sent("POST /tenants/acme/erase"))

	stdout, stderr, err := runCLI(t, "", "tenants", "erase", "acme", "--confirm", "acme", "--reason", "ticket 1", "--admin-url", url, "--token", testToken)
	require.NoError(t, err, stderr)
	require.Equal(t, []string{`{"confirm":"acme","reason":"ticket 1"}`}, admin.sent("POST /tenants/acme/erase"))
	require.Contains(t, stdout, "Erased tenant acme at 2026-03-01T12:00:00Z.\n")
	require.Contains(t, stdout, "backup    backup 7  -       -      abc123")
	require.Contains(t, stdout, "invoices  3      kept, as tax law requires")
}

// TestTenantsBillingAddressSetsAndShows: with --country the command PUTs the
// address and says it reached Stripe; without, it shows it.
func TestTenantsBillingAddressSetsAndShows(t *testing.T) {
	t.Parallel()
	addr := `{"country": "US", "postal_code": "94107", "state": "CA", "city": "", "line1": "", "updated_at": "2026-03-01T12:00:00Z", "synced_at": "2026-03-01T12:00:01Z"}`
	admin, url := newCannedAdmin(t, map[string][]cannedAnswer{
		"PUT /tenants/acme/billing-address": {ok(addr)},
		"GET /tenants/acme/billing-address": {ok(addr)},
	})
	stdout, stderr, err := runCLI(t, "", "tenants", "billing-address", "acme", "--country", "US", "--postal-code", "94107", "--state", "CA", "--admin-url", url, "--token", testToken)
	require.NoError(t, err, stderr)
	require.Equal(t, []string{`{"city":"","country":"US","line1":"","postal_code":"94107","state":"CA"}`}, admin.sent("PUT /tenants/acme/billing-address"))
	require.Equal(t, "acme: CA, 94107, US\nSent to its Stripe customer at 2026-03-01T12:00:01Z.\n", stdout)
	stdout, _, err = runCLI(t, "", "tenants", "billing-address", "acme", "--admin-url", url, "--token", testToken)
	require.NoError(t, err)
	require.Contains(t, stdout, "acme: CA, 94107, US")
}

// TestInvoiceWithAutomaticTax: an invoice Stripe computes the tax of shows
// it as calculated by Stripe: a preview before Stripe has it, the tax and
// the total with it once finalized.
func TestInvoiceWithAutomaticTax(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	inv := Invoice{Tenant: "acme", Period: "2026-03", Plan: "basic", PlanVersion: 1, Currency: "usd", Total: 500, State: "preview",
		TaxNote: "calculated by Stripe", Lines: []InvoiceLine{{No: 1, Description: "Basic plan", Amount: 500}}}
	require.NoError(t, writeInvoice(&out, inv))
	require.Contains(t, out.String(), "SUBTOTAL     $5.00")
	require.Contains(t, out.String(), "TAX          calculated by Stripe")
	out.Reset()
	tax := int64(43)
	inv.State, inv.Sent, inv.Tax = "finalized", true, &tax
	require.NoError(t, writeInvoice(&out, inv))
	require.Contains(t, out.String(), "TAX (calculated by Stripe)  $0.43")
	require.Contains(t, out.String(), "TOTAL                       $5.43")
}

// TestTenantsExportDownloadsAndChecksTheZip: export --out waits for the
// export, streams the zip to the file and checks its SHA-256; a download
// whose hash differs leaves no file.
func TestTenantsExportDownloadsAndChecksTheZip(t *testing.T) {
	t.Parallel()
	zip := "PK\x03\x04 not really a zip, but bytes"
	sum := sha256.Sum256([]byte(zip))
	export := func(state, sha string) string {
		return `{"id": 5, "tenant": "acme", "state": "` + state + `", "size_bytes": 33, "sha256": "` + sha + `", "last_error": "", "expires_at": "2026-03-08T12:00:00Z",
			"manifest": {"schema_version": 1, "tables": [{"name": "users", "rows": 1234}]}}`
	}
	admin, url := newCannedAdmin(t, map[string][]cannedAnswer{
		"POST /tenants/acme/exports":            {{http.StatusAccepted, export("pending", "")}},
		"GET /tenants/acme/exports/5":           {ok(export("running", "")), ok(export("done", hex.EncodeToString(sum[:])))},
		"GET /tenants/acme/exports/5/download":  {ok(zip)},
		"POST /tenants/other/exports":           {{http.StatusAccepted, strings.ReplaceAll(export("pending", ""), `"id": 5`, `"id": 6`)}},
		"GET /tenants/other/exports/6":          {ok(strings.ReplaceAll(export("done", strings.Repeat("0", 64)), `"id": 5`, `"id": 6`))},
		"GET /tenants/other/exports/6/download": {ok(zip)},
	})
	out := filepath.Join(t.TempDir(), "acme.zip")
	stdout, stderr, err := runCLI(t, "", "tenants", "export", "acme", "--dump", "--out", out, "--admin-url", url, "--token", testToken)
	require.NoError(t, err, stderr)
	require.Equal(t, []string{`{"include_dump":true}`}, admin.sent("POST /tenants/acme/exports"))
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	require.Equal(t, zip, string(got))
	require.Contains(t, stdout, "Downloaded to "+out+" (checksum checked).")
	require.Contains(t, stdout, "users  1,234")

	bad := filepath.Join(t.TempDir(), "other.zip")
	_, _, err = runCLI(t, "", "tenants", "export", "other", "--out", bad, "--admin-url", url, "--token", testToken)
	require.ErrorContains(t, err, "the download's SHA-256 is not the export's")
	_, err = os.Stat(bad)
	require.True(t, os.IsNotExist(err), "no file from a bad download")
	_, err = os.Stat(bad + ".partial")
	require.True(t, os.IsNotExist(err))
}
