package controlplane

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/internal/stripetest"
)

// filesUnder lists every file under dir.
func filesUnder(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	require.NoError(t, filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out = append(out, path)
		}
		return err
	}))
	return out
}

// artefacts indexes an erasure record's removed (or kept) list by kind.
func artefacts(rec map[string]any, list string) map[string][]map[string]any {
	out := map[string][]map[string]any{}
	for _, a := range rec[list].([]any) {
		a := a.(map[string]any)
		out[a["kind"].(string)] = append(out[a["kind"].(string)], a)
	}
	return out
}

// TestEraseLeavesNothingAndRecordsIt: a tenant with rows, a backup, an
// export, an invoice, a Stripe customer and a move's kept source on another
// server is erased: afterwards no server holds its database or role, the
// backup and export directories hold nothing of it, its key is dead, the
// deletion of its Stripe customer reached stripe-mock, its invoice remains,
// and the erasure record lists each removed artefact, with the SHA-256 of
// each file. A deleted tenant's archive is erased the same way (another
// tenant's, whose slug starts alike, is not). A second erasure does
// nothing; an erasure without the slug repeated is refused.
func TestEraseLeavesNothingAndRecordsIt(t *testing.T) {
	t.Parallel()
	backups, exports, archives := dataDir(t, "backups"), dataDir(t, "exports"), dataDir(t, "archives")
	catalogDSN := pgtest.NewDB(t)
	tap := newStripeTap(t, stripetest.Shared(t).URL, catalogDSN)
	f := setupFleetOn(t, catalogDSN, 2, map[string]string{
		"TENANTPLANE_BACKUP_DIR": backups, "TENANTPLANE_EXPORT_DIR": exports, "TENANTPLANE_ARCHIVE_DIR": archives,
		"TENANTPLANE_BACKUP_CHECK": "off", "TENANTPLANE_DELETE_GRACE": "0s", "TENANTPLANE_BILLING_GRACE": "off",
		"TENANTPLANE_STORAGE_INTERVAL": "off", "STRIPE_API_KEY": stripetest.Key, "STRIPE_API_BASE": tap.URL,
	}, 0)
	v1 := f.admin + "/admin/v1"

	tenant, key := f.tenantWithKey(t, "erasable", "pro", "pg-1")
	id := tenant["id"].(string)
	for i := range 3 {
		status, body := call(t, "POST", f.api+"/v1/users", key, map[string]any{"email": fmt.Sprintf("person%d@example.com", i)})
		require.Equal(t, http.StatusCreated, status, body)
	}
	customer := storedCustomer(t, f.app.store, id)
	require.NotEmpty(t, customer)
	backup := f.backup(t, "erasable")
	status, x := call(t, "POST", v1+"/tenants/erasable/exports", testToken, nil)
	require.Equal(t, http.StatusAccepted, status, x)
	x = f.waitFor(t, fmt.Sprintf("/admin/v1/tenants/erasable/exports/%v", x["id"]), stateIn("done", "failed"))
	require.Equal(t, "done", x["state"], x)
	// A copy move keeps the fenced source on pg-1 (TENANTPLANE_MOVE_KEEP, 24h).
	status, move := call(t, "POST", v1+"/tenants/erasable/move", testToken, map[string]any{"to": "pg-2", "mode": "copy"})
	require.Equal(t, http.StatusAccepted, status, move)
	move = f.waitFor(t, fmt.Sprintf("/admin/v1/moves/%v", move["id"]), func(m map[string]any) bool { return m["phase"] == "done" || m["phase"] == "aborted" })
	require.Equal(t, "done", move["phase"], move)
	db, _ := dbAndRoleExist(t, f.servers["pg-1"], tenant["database"].(string))
	require.True(t, db, "the move's source is kept on pg-1")
	// An invoice of the last period, through Stripe.
	f.backdate(t, "erasable")
	status, run := call(t, "POST", v1+"/billing/runs", testToken, map[string]any{"period": catalog.FormatPeriod(catalog.PeriodOf(time.Now()).AddDate(0, -1, 0))})
	require.Equal(t, http.StatusAccepted, status, run)
	f.waitFor(t, fmt.Sprintf("/admin/v1/billing/runs/%v", run["id"]), stateIn("done"))

	// A deleted tenant leaves an archive; so does one whose slug starts alike.
	f.tenantWithKey(t, "gone", "basic", "pg-1")
	f.tenantWithKey(t, "gone-too", "basic", "pg-1")
	for _, slug := range []string{"gone", "gone-too"} {
		status, body := call(t, "DELETE", v1+"/tenants/"+slug, testToken, nil)
		require.Equal(t, http.StatusAccepted, status, body)
		f.waitFor(t, "/admin/v1/tenants/"+slug, stateIn("deleted"))
	}
	require.Len(t, filesUnder(t, archives), 2)

	status, body := call(t, "POST", v1+"/tenants/erasable/erase", testToken, map[string]any{"confirm": "erasabl"})
	require.Equal(t, http.StatusBadRequest, status, body)
	require.Contains(t, body["error"].(map[string]any)["message"], "confirm must repeat")
	_, body = call(t, "GET", v1+"/tenants/erasable", testToken, nil)
	require.Equal(t, "active", body["state"], "a refused erasure changes nothing")

	status, rec := call(t, "POST", v1+"/tenants/erasable/erase", testToken, map[string]any{"confirm": "erasable", "reason": "customer asked (ticket 42)"})
	require.Equal(t, http.StatusOK, status, rec)
	require.Equal(t, "done", rec["state"])
	require.Nil(t, rec["already_erased"])

	// Nothing of it on any server, in any directory, in the key store.
	for name, srv := range f.servers {
		db, role := dbAndRoleExist(t, srv, tenant["database"].(string))
		require.False(t, db, "database on %s", name)
		require.False(t, role, "role on %s", name)
	}
	require.Empty(t, filesUnder(t, backups))
	require.Empty(t, filesUnder(t, exports))
	status, _, err := try("GET", f.api+"/v1/users", key, "")
	require.NoError(t, err)
	require.Equal(t, http.StatusUnauthorized, status, "its key is gone")
	var keys int
	require.NoError(t, f.app.store.Pool().QueryRow(context.Background(), `SELECT count(*) FROM api_keys WHERE tenant_id = $1`, id).Scan(&keys))
	require.Zero(t, keys)
	deletes := tap.callsTo("DELETE", regexp.MustCompile(`^/v1/customers/`+regexp.QuoteMeta(customer)+`$`))
	require.Len(t, deletes, 1, "the Stripe customer's deletion reached stripe-mock")
	status, body = call(t, "GET", v1+"/tenants/erasable/invoices", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Len(t, body["invoices"], 1, "invoices are kept")
	_, body = call(t, "GET", v1+"/tenants/erasable", testToken, nil)
	require.Equal(t, "deleted", body["state"], "the tombstone")
	require.Equal(t, "erased", body["name"])

	// The record, as served.
	status, got := call(t, "GET", v1+"/tenants/erasable/erasure", testToken, nil)
	require.Equal(t, http.StatusOK, status, got)
	require.Equal(t, rec, got)
	removed := artefacts(got, "removed")
	require.Len(t, removed["database"], 2, "the current database on pg-2 and the move's source on pg-1: %v", removed)
	require.Len(t, removed["role"], 2)
	for _, db := range removed["database"] {
		require.Regexp(t, `^[0-9a-f]{64}$`, db["sha256"], "the digest of its rows, taken before the drop")
	}
	require.Equal(t, removed["database"][0]["sha256"], removed["database"][1]["sha256"], "the move's source and target held the same rows")
	require.Len(t, removed["backup"], 1)
	require.Equal(t, backup["sha256"], removed["backup"][0]["sha256"], "the backup's hash, read before it went")
	require.Len(t, removed["export"], 1)
	require.Equal(t, x["sha256"], removed["export"][0]["sha256"])
	require.Equal(t, customer, removed["stripe_customer"][0]["name"])
	require.EqualValues(t, 1, removed["api_keys"][0]["count"])
	kept := artefacts(got, "kept")
	require.EqualValues(t, 1, kept["invoices"][0]["count"])
	require.Contains(t, kept, "usage")
	require.Equal(t, "customer asked (ticket 42)", got["reason"])

	// A second erasure: a no-op that says so.
	before := len(tap.callsTo("DELETE", regexp.MustCompile(`^/v1/customers/`)))
	status, again := call(t, "POST", v1+"/tenants/erasable/erase", testToken, map[string]any{"confirm": "erasable"})
	require.Equal(t, http.StatusOK, status, again)
	require.Equal(t, true, again["already_erased"])
	require.Equal(t, got["finished_at"], again["finished_at"])
	require.Len(t, tap.callsTo("DELETE", regexp.MustCompile(`^/v1/customers/`)), before)

	// The deleted tenant's archive goes with its erasure; the other stays.
	archiveOf := func(slug string) []string {
		files, err := filepath.Glob(filepath.Join(archives, slug+"-2*.dump"))
		require.NoError(t, err)
		return files
	}
	gone := archiveOf("gone")
	require.Len(t, gone, 1)
	status, rec = call(t, "POST", v1+"/tenants/gone/erase", testToken, map[string]any{"confirm": "gone"})
	require.Equal(t, http.StatusOK, status, rec)
	require.Equal(t, filepath.Base(gone[0]), artefacts(rec, "removed")["archive"][0]["name"])
	require.NotEmpty(t, artefacts(rec, "removed")["archive"][0]["sha256"])
	require.Empty(t, archiveOf("gone"))
	require.Len(t, archiveOf("gone-too"), 1, "another tenant's archive stays")

	status, body = call(t, "GET", v1+"/tenants/gone-too/erasure", testToken, nil)
	require.Equal(t, http.StatusNotFound, status, body)
}
