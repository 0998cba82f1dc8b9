package controlplane

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// dataDir is a directory of the test's own for backups, exports or archives.
func dataDir(t testing.TB, name string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tenantplane-"+name+"-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// waitFor polls an admin GET until done says its body is finished.
func (f *fleet) waitFor(t testing.TB, path string, done func(map[string]any) bool) map[string]any {
	t.Helper()
	var body map[string]any
	deadline := time.Now().Add(90 * time.Second)
	for {
		status, b := call(t, "GET", f.admin+path, testToken, nil)
		require.Equal(t, http.StatusOK, status, b)
		if body = b; done(body) {
			return body
		}
		require.True(t, time.Now().Before(deadline), "%s never finished: %v", path, body)
		time.Sleep(100 * time.Millisecond)
	}
}

func stateIn(states ...string) func(map[string]any) bool {
	return func(b map[string]any) bool {
		for _, s := range states {
			if b["state"] == s {
				return true
			}
		}
		return false
	}
}

// backup takes a backup of slug and waits for it to finish.
func (f *fleet) backup(t testing.TB, slug string) map[string]any {
	t.Helper()
	status, b := call(t, "POST", f.admin+"/admin/v1/tenants/"+slug+"/backups", testToken, nil)
	require.Equal(t, http.StatusAccepted, status, b)
	b = f.waitFor(t, fmt.Sprintf("/admin/v1/tenants/%s/backups/%v", slug, b["id"]), stateIn("done", "failed"))
	require.Equal(t, "done", b["state"], b)
	return b
}

// userEmails lists the emails of a tenant's users through the tenant API.
func (f *fleet) userEmails(t testing.TB, key string) []string {
	t.Helper()
	status, body := call(t, "GET", f.api+"/v1/users?limit=1000", key, nil)
	require.Equal(t, http.StatusOK, status, body)
	var out []string
	for _, u := range body["users"].([]any) {
		out = append(out, u.(map[string]any)["email"].(string))
	}
	sort.Strings(out)
	return out
}

// scrape reads the admin address's /metrics.
func scrape(t testing.TB, admin string) string {
	t.Helper()
	resp, err := http.Get(admin + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(raw)
}

func fileSHA256(t testing.TB, path string) string {
	t.Helper()
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:])
}

// TestBackupAndRestore: a backup of a tenant with rows is a pg_dump file in
// TENANTPLANE_BACKUP_DIR whose size, SHA-256 and schema version the catalog
// holds; rows deleted through the tenant API afterwards come back in a new
// tenant restored from it (the original keeps its deletions), and a restore
// in place brings them back into the tenant itself, which is active again
// after.
func TestBackupAndRestore(t *testing.T) {
	t.Parallel()
	dir := dataDir(t, "backups")
	f := setupFleet(t, 1, map[string]string{"TENANTPLANE_BACKUP_DIR": dir, "TENANTPLANE_BACKUP_CHECK": "off"})
	tenant, key := f.tenantWithKey(t, "keeper", "pro", "")
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(f.logs.String())
		}
	})
	var ids []string
	var all []string
	for i := range 5 {
		email := fmt.Sprintf("user%d@example.com", i)
		status, u := call(t, "POST", f.api+"/v1/users", key, map[string]any{"email": email, "name": "User " + fmt.Sprint(i)})
		require.Equal(t, http.StatusCreated, status, u)
		ids = append(ids, u["id"].(string))
		all = append(all, email)
	}

	b := f.backup(t, "keeper")
	file := filepath.Join(dir, tenant["id"].(string), fmt.Sprintf("%v.dump", b["id"]))
	st, err := os.Stat(file)
	require.NoError(t, err)
	require.EqualValues(t, st.Size(), b["size_bytes"])
	require.Equal(t, fileSHA256(t, file), b["sha256"])
	require.Equal(t, tenant["schema_version"], b["schema_version"])
	require.Equal(t, "manual", b["trigger"])
	require.NotNil(t, b["expires_at"])
	require.Contains(t, scrape(t, f.admin), `tenantplane_data_jobs_total{kind="backup",outcome="done"} 1`)

	for _, id := range ids[:3] {
		status, body := call(t, "DELETE", f.api+"/v1/users/"+id, key, nil)
		require.Equal(t, http.StatusNoContent, status, body)
	}
	require.Equal(t, all[3:], f.userEmails(t, key))

	status, r := call(t, "POST", fmt.Sprintf("%s/admin/v1/tenants/keeper/backups/%v/restore", f.admin, b["id"]), testToken, map[string]any{"as": "keeper-restored"})
	require.Equal(t, http.StatusAccepted, status, r)
	require.Equal(t, "new_tenant", r["mode"])
	r = f.waitFor(t, fmt.Sprintf("/admin/v1/restores/%v", r["id"]), stateIn("done", "failed"))
	require.Equal(t, "done", r["state"], r)
	require.EqualValues(t, 5, r["tables"].(map[string]any)["users"], r)

	_, restored := call(t, "GET", f.admin+"/admin/v1/tenants/keeper-restored", testToken, nil)
	require.Equal(t, "active", restored["state"], restored)
	require.Equal(t, tenant["schema_version"], restored["schema_version"])
	restoredKey := f.issueKey(t, "keeper-restored", nil)
	require.Equal(t, all, f.userEmails(t, restoredKey), "the restored tenant has the deleted rows")
	require.Equal(t, all[3:], f.userEmails(t, key), "the original keeps its deletions")
	// The restored tenant's role writes as any tenant's does.
	status, body := call(t, "POST", f.api+"/v1/users", restoredKey, map[string]any{"email": "new@example.com"})
	require.Equal(t, http.StatusCreated, status, body)

	// Restoring into a taken slug is refused, and makes nothing.
	status, body = call(t, "POST", fmt.Sprintf("%s/admin/v1/tenants/keeper/backups/%v/restore", f.admin, b["id"]), testToken, map[string]any{"as": "keeper-restored"})
	require.Equal(t, http.StatusConflict, status, body)

	// In place: the tenant is suspended for the restore and active after.
	status, r = call(t, "POST", fmt.Sprintf("%s/admin/v1/tenants/keeper/backups/%v/restore", f.admin, b["id"]), testToken, nil)
	require.Equal(t, http.StatusAccepted, status, r)
	require.Equal(t, "in_place", r["mode"])
	r = f.waitFor(t, fmt.Sprintf("/admin/v1/restores/%v", r["id"]), stateIn("done", "failed"))
	require.Equal(t, "done", r["state"], r)
	_, body = call(t, "GET", f.admin+"/admin/v1/tenants/keeper", testToken, nil)
	require.Equal(t, "active", body["state"], body)
	require.Eventually(t, func() bool {
		status, _, _ := try("GET", f.api+"/v1/users", key, "")
		return status == http.StatusOK
	}, 5*time.Second, 50*time.Millisecond)
	require.Equal(t, all, f.userEmails(t, key), "the deleted rows are back in place")
	actions := auditActions(t, f.app.store, tenant["id"].(string))
	require.Contains(t, actions, "tenant.suspended")
	require.Contains(t, actions, "tenant.resumed")
}

// TestBackupScheduleAndExpiry: with the plan's interval a second, the
// schedule queues one backup of each tenant per interval (not two while one
// is open), taken by the job; expiry deletes exactly the backups whose
// retention is over, records each deletion, and leaves the others.
func TestBackupScheduleAndExpiry(t *testing.T) {
	t.Parallel()
	dir := dataDir(t, "backups")
	f := setupFleet(t, 1, map[string]string{"TENANTPLANE_BACKUP_DIR": dir, "TENANTPLANE_BACKUP_CHECK": "off"})
	tenant, _ := f.tenantWithKey(t, "scheduled", "basic", "")
	ctx := context.Background()
	pool := f.app.store.Pool()
	_, err := pool.Exec(ctx, `UPDATE plans SET backup_interval = '1 second' WHERE name = 'basic'`)
	require.NoError(t, err)

	var scheduled []string
	for len(scheduled) < 3 {
		time.Sleep(1100 * time.Millisecond) // the next slot
		n, err := f.app.data.ScheduleBackups(ctx)
		require.NoError(t, err)
		require.LessOrEqual(t, n, 1, "one tenant, one backup per slot")
		if n == 1 {
			again, err := f.app.data.ScheduleBackups(ctx)
			require.NoError(t, err)
			require.Zero(t, again, "a slot is taken once")
			var id int64
			require.NoError(t, pool.QueryRow(ctx, `SELECT max(id) FROM backups`).Scan(&id))
			b := f.waitFor(t, fmt.Sprintf("/admin/v1/tenants/scheduled/backups/%d", id), stateIn("done", "failed"))
			require.Equal(t, "done", b["state"], b)
			require.Equal(t, "schedule", b["trigger"])
			scheduled = append(scheduled, fmt.Sprint(b["id"]))
		}
	}
	files, err := filepath.Glob(filepath.Join(dir, tenant["id"].(string), "*.dump"))
	require.NoError(t, err)
	require.Len(t, files, 3)

	// Two of the three are past their retention.
	_, err = pool.Exec(ctx, `UPDATE backups SET expires_at = now() - interval '1 minute' WHERE id = ANY($1::bigint[])`, scheduled[:2])
	require.NoError(t, err)
	n, err := f.app.data.Expire(ctx)
	require.NoError(t, err)
	require.Equal(t, 2, n)
	status, list := call(t, "GET", f.admin+"/admin/v1/tenants/scheduled/backups", testToken, nil)
	require.Equal(t, http.StatusOK, status, list)
	states := map[string]string{}
	for _, b := range list["backups"].([]any) {
		b := b.(map[string]any)
		states[fmt.Sprint(b["id"])] = b["state"].(string)
		if b["state"] == "expired" {
			require.NotNil(t, b["deleted_at"])
		}
	}
	require.Equal(t, map[string]string{scheduled[0]: "expired", scheduled[1]: "expired", scheduled[2]: "done"}, states)
	files, err = filepath.Glob(filepath.Join(dir, tenant["id"].(string), "*.dump"))
	require.NoError(t, err)
	require.Equal(t, []string{filepath.Join(dir, tenant["id"].(string), scheduled[2]+".dump")}, files)
	require.Equal(t, 2, countOf(auditActions(t, f.app.store, tenant["id"].(string)), "tenant.backup_expired"))
	n, err = f.app.data.Expire(ctx)
	require.NoError(t, err)
	require.Zero(t, n, "nothing expires twice")
}

func countOf(list []string, v string) int {
	n := 0
	for _, x := range list {
		if x == v {
			n++
		}
	}
	return n
}
