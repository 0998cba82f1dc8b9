package controlplane

import (
	"archive/zip"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/helperproc"
	"github.com/tenantplane/tenantplane/internal/pgcluster"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

// exportSchema adds tables with what an export must get right: json whose
// text holds newlines and tabs between its tokens, strings with backslashes,
// quotes, newlines and non-ASCII, bytea, arrays, NULLs, numerics, and a
// table with no rows.
const exportSchema = `
CREATE TABLE orders (
	tenant_id uuid NOT NULL DEFAULT tenantplane_tenant_id(),
	id        bigserial,
	user_id   uuid,
	amount    numeric(12,2) NOT NULL,
	note      text,
	doc       json,
	meta      jsonb,
	tags      text[],
	blob      bytea,
	PRIMARY KEY (tenant_id, id),
	FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id)
);
CREATE TABLE empty_things (tenant_id uuid NOT NULL DEFAULT tenantplane_tenant_id(), id int, PRIMARY KEY (tenant_id, id));
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE orders FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON orders USING (tenant_id = tenantplane_tenant_id()) WITH CHECK (tenant_id = tenantplane_tenant_id());
CREATE POLICY database_owner ON orders TO pg_database_owner USING (true) WITH CHECK (true);
ALTER TABLE empty_things ENABLE ROW LEVEL SECURITY;
ALTER TABLE empty_things FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON empty_things USING (tenant_id = tenantplane_tenant_id()) WITH CHECK (tenant_id = tenantplane_tenant_id());
CREATE POLICY database_owner ON empty_things TO pg_database_owner USING (true) WITH CHECK (true);
`

// downloadZip fetches an export's download into memory (a test's export is small).
func (f *fleet) downloadZip(t testing.TB, slug string, id any) (*zip.Reader, []byte, http.Header) {
	t.Helper()
	req, err := http.NewRequest("GET", fmt.Sprintf("%s/admin/v1/tenants/%s/exports/%v/download", f.admin, slug, id), nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(raw))
	zr, err := zip.NewReader(bytes.NewReader(raw), int64(len(raw)))
	require.NoError(t, err)
	return zr, raw, resp.Header
}

func readEntry(t testing.TB, zr *zip.Reader, name string) []byte {
	t.Helper()
	rc, err := zr.Open(name)
	require.NoError(t, err, name)
	defer rc.Close()
	raw, err := io.ReadAll(rc)
	require.NoError(t, err)
	return raw
}

// normalized re-encodes JSON texts so that two spellings of one value compare equal.
func normalized(t testing.TB, texts []string) []string {
	t.Helper()
	out := make([]string, len(texts))
	for i, s := range texts {
		var v any
		require.NoError(t, json.Unmarshal([]byte(s), &v), s)
		b, err := json.Marshal(v)
		require.NoError(t, err)
		out[i] = string(b)
	}
	sort.Strings(out)
	return out
}

// TestExportManifestMatchesItsFiles: an export of a tenant with several
// tables is a zip whose manifest lists every table with its row count and
// the SHA-256 of its file, each matching the file; every row of the
// database is in its table's file as JSON, one per line, whatever its text
// holds; the pg_dump asked for restores; the download carries the zip's
// SHA-256, and an export of another tenant's id is 404.
func TestExportManifestMatchesItsFiles(t *testing.T) {
	t.Parallel()
	dir := migrationsDir(t)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "000003_orders.up.sql"), []byte(exportSchema), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "000003_orders.down.sql"), []byte(`DROP TABLE empty_things; DROP TABLE orders;`), 0o644))
	exports := dataDir(t, "exports")
	f := setupFleet(t, 1, map[string]string{"TENANTPLANE_TENANT_MIGRATIONS": dir, "TENANTPLANE_EXPORT_DIR": exports})
	tenant, key := f.tenantWithKey(t, "porter", "pro", "")
	f.tenantWithKey(t, "other", "pro", "")
	for i := range 30 {
		status, body := call(t, "POST", f.api+"/v1/users", key, map[string]any{"email": fmt.Sprintf("u%d@example.com", i), "name": "Zoë \"Q\" \\ O'Brien\n" + fmt.Sprint(i)})
		require.Equal(t, http.StatusCreated, status, body)
	}
	dsn := f.servers["pg-1"].DSN(tenant["database"].(string))
	conn, err := connect(t, dsn)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	_, err = conn.Exec(context.Background(), `
		INSERT INTO orders (user_id, amount, note, doc, meta, tags, blob)
		SELECT (SELECT id FROM users ORDER BY email LIMIT 1 OFFSET i % 30), i * 1.25,
			CASE WHEN i % 5 = 0 THEN NULL ELSE E'line\none\ttab \\ back "quoted" ☃ ' || i END,
			CASE WHEN i % 3 = 0 THEN NULL ELSE (E'{\n\t"i": ' || i || E',\r\n "s": "a\\\\b\\nc"}')::json END,
			jsonb_build_object('i', i, 'nested', jsonb_build_array('x', i, NULL)),
			ARRAY['t' || i, 'with, comma', NULL], decode(md5(i::text), 'hex')
		FROM generate_series(1, 2000) i`)
	require.NoError(t, err)

	status, x := call(t, "POST", f.admin+"/admin/v1/tenants/porter/exports", testToken, map[string]any{"include_dump": true})
	require.Equal(t, http.StatusAccepted, status, x)
	x = f.waitFor(t, fmt.Sprintf("/admin/v1/tenants/porter/exports/%v", x["id"]), stateIn("done", "failed"))
	require.Equal(t, "done", x["state"], x)
	require.NotNil(t, x["expires_at"])

	status, body := call(t, "GET", fmt.Sprintf("%s/admin/v1/tenants/other/exports/%v/download", f.admin, x["id"]), testToken, nil)
	require.Equal(t, http.StatusNotFound, status, body)

	zr, raw, header := f.downloadZip(t, "porter", x["id"])
	sum := sha256.Sum256(raw)
	require.Equal(t, x["sha256"], hex.EncodeToString(sum[:]))
	require.Equal(t, x["sha256"], header.Get("X-Content-SHA256"))
	require.EqualValues(t, len(raw), x["size_bytes"])

	var m struct {
		Tenant        string `json:"tenant"`
		SchemaVersion int64  `json:"schema_version"`
		Tables        []struct {
			Name, File, SHA256 string
			Rows, Bytes        int64
		} `json:"tables"`
		Dump struct {
			File, SHA256 string
			Bytes        int64
		} `json:"dump"`
	}
	require.NoError(t, json.Unmarshal(readEntry(t, zr, "manifest.json"), &m))
	require.Equal(t, "porter", m.Tenant)
	require.EqualValues(t, 3, m.SchemaVersion)
	var names []string
	for _, mt := range m.Tables {
		names = append(names, mt.Name)
		content := readEntry(t, zr, mt.File)
		fileSum := sha256.Sum256(content)
		require.Equal(t, mt.SHA256, hex.EncodeToString(fileSum[:]), mt.File)
		require.EqualValues(t, len(content), mt.Bytes, mt.File)
		var lines []string
		sc := bufio.NewScanner(bytes.NewReader(content))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			lines = append(lines, sc.Text())
		}
		require.NoError(t, sc.Err())
		require.EqualValues(t, len(lines), mt.Rows, mt.File)

		rows, err := conn.Query(context.Background(), `SELECT row_to_json(t)::text FROM public.`+pgx.Identifier{mt.Name}.Sanitize()+` t`)
		require.NoError(t, err)
		want, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		require.Equal(t, normalized(t, want), normalized(t, lines), "every row of %s, as JSON", mt.Name)
	}
	require.Equal(t, []string{"empty_things", "orders", "users"}, names)
	rowsOf := map[string]int64{}
	for _, mt := range m.Tables {
		rowsOf[mt.Name] = mt.Rows
	}
	require.Equal(t, map[string]int64{"empty_things": 0, "orders": 2000, "users": 30}, rowsOf)

	dump := readEntry(t, zr, m.Dump.File)
	dumpSum := sha256.Sum256(dump)
	require.Equal(t, m.Dump.SHA256, hex.EncodeToString(dumpSum[:]))
	dumpFile := filepath.Join(t.TempDir(), "dump.pgdump")
	require.NoError(t, os.WriteFile(dumpFile, dump, 0o600))
	bin, err := pgcluster.FindBinDir()
	require.NoError(t, err)
	out, err := exec.Command(filepath.Join(bin, "pg_restore"), "--data-only", "--table=users", "--file=-", dumpFile).Output()
	require.NoError(t, err)
	require.Contains(t, string(out), "u29@example.com")
}

// TestExportOf100MBKeepsMemoryFlat: a tenantplane process of its own (the
// test binary started again, so no other test shares its heap) exports a
// tenant database of about 100 MB while the test reads the process's heap
// in use from its /metrics every 20 ms: it never grows by more than a small
// fraction of the data, because rows stream from COPY into the zip.
func TestExportOf100MBKeepsMemoryFlat(t *testing.T) {
	t.Parallel()
	exports := dataDir(t, "exports")
	catalogDSN, secret := pgtest.NewDB(t), catalog.NewKey()
	env := map[string]string{"TENANTPLANE_EXPORT_DIR": exports, "TENANTPLANE_SECRET_KEY": secret}
	f := setupFleetOn(t, catalogDSN, 1, env, 0)
	tenant, _ := f.tenantWithKey(t, "bulky", "pro", "")
	conn, err := connect(t, f.servers["pg-1"].DSN(tenant["database"].(string)))
	require.NoError(t, err)
	defer conn.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	_, err = conn.Exec(ctx, `INSERT INTO users (email, name)
		SELECT 'user' || i || '@example.com', repeat(md5(i::text), 6) FROM generate_series(1, 250000) i`)
	require.NoError(t, err)
	var size int64
	require.NoError(t, conn.QueryRow(ctx, `SELECT pg_database_size(current_database())`).Scan(&size))
	require.Greater(t, size, int64(95<<20), "a database of about 100 MB")

	// This process's App stops; the helper alone works the export.
	stopCtx, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	require.NoError(t, f.app.Stop(stopCtx))
	lines := helperproc.NewLines(16)
	helperproc.Start(t, lines, appHelperEnv+"=1", "DATABASE_URL="+catalogDSN, "TENANTPLANE_SECRET_KEY="+secret,
		"TENANTPLANE_ADMIN_TOKEN="+testToken, "TENANTPLANE_API_ADDR=127.0.0.1:0", "TENANTPLANE_ADMIN_ADDR=127.0.0.1:0",
		"TENANTPLANE_EXPORT_DIR="+exports, "TENANTPLANE_WARM_POOL_SIZE=off", "TENANTPLANE_STORAGE_INTERVAL=off")
	var admin string
	select {
	case line := <-lines.C():
		admin = "http://" + strings.TrimPrefix(line, "admin=")
	case <-time.After(time.Minute):
		t.Fatal("the helper process did not start serving")
	}
	heap := func() int64 {
		resp, err := http.Get(admin + "/metrics")
		require.NoError(t, err)
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		m := regexp.MustCompile(`(?m)^go_memstats_heap_inuse_bytes (\S+)$`).FindStringSubmatch(string(raw))
		require.NotNil(t, m, "no heap figure in /metrics")
		v, err := strconv.ParseFloat(m[1], 64)
		require.NoError(t, err)
		return int64(v)
	}
	time.Sleep(time.Second) // past the start's own allocations
	base := heap()
	status, x := call(t, "POST", admin+"/admin/v1/tenants/bulky/exports", testToken, nil)
	require.Equal(t, http.StatusAccepted, status, x)
	peak, samples := base, 0
	path := fmt.Sprintf("/admin/v1/tenants/bulky/exports/%v", x["id"])
	for deadline := time.Now().Add(4 * time.Minute); ; {
		peak, samples = max(peak, heap()), samples+1
		_, x = call(t, "GET", admin+path, testToken, nil)
		if x["state"] == "done" || x["state"] == "failed" {
			break
		}
		require.True(t, time.Now().Before(deadline), "export never finished: %v", x)
		time.Sleep(20 * time.Millisecond)
	}
	require.Equal(t, "done", x["state"], x)
	growth := peak - base
	t.Logf("database %d MB; the exporting process's heap in use: %d MB before, peak %d MB over %d samples (growth %d MB); zip %v bytes",
		size>>20, base>>20, peak>>20, samples, growth>>20, x["size_bytes"])
	require.Less(t, growth, int64(20<<20), "the heap grew with the data")
	require.Greater(t, samples, 5, "sampled while it ran")
	m := x["manifest"].(map[string]any)
	require.EqualValues(t, 250000, m["tables"].([]any)[0].(map[string]any)["rows"])
}
