package controlplane

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgcluster"
)

// BenchmarkBackupAndExportAgainstPgDump measures, on one tenant database of
// about 200 MB, the backup job (pg_dump -Fc streamed to a file, hashed) and
// the export job (every row as JSON lines into a deflated zip) against a
// plain pg_dump -Fc of the same database to a file, in the same run, three
// rounds, alternated; each rate is the database's size over the time taken
// (the jobs' own times, from the catalog: started to finished). Targets:
// export at least 0.8x pg_dump's rate, backup no slower than pg_dump.
func BenchmarkBackupAndExportAgainstPgDump(b *testing.B) {
	backups, exports := dataDir(b, "bench-backups"), dataDir(b, "bench-exports")
	f := setupFleet(b, 1, map[string]string{"TENANTPLANE_BACKUP_DIR": backups, "TENANTPLANE_EXPORT_DIR": exports, "TENANTPLANE_BACKUP_CHECK": "off"})
	tenant, _ := f.tenantWithKey(b, "benchdata", "pro", "")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	dsn := f.servers["pg-1"].DSN(tenant["database"].(string))
	conn, err := connect(b, dsn)
	require.NoError(b, err)
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, `INSERT INTO users (email, name)
		SELECT 'user' || i || '@example.com', repeat(md5(i::text), 5) FROM generate_series(1, 600000) i`)
	require.NoError(b, err)
	_, err = conn.Exec(ctx, `VACUUM ANALYZE users`)
	require.NoError(b, err)
	var size int64
	require.NoError(b, conn.QueryRow(ctx, `SELECT pg_database_size(current_database())`).Scan(&size))
	mb := float64(size) / (1 << 20)
	t, err := f.app.store.GetTenant(ctx, "benchdata")
	require.NoError(b, err)
	cfg, err := f.adminConfig(ctx, t)
	require.NoError(b, err)

	var dumps, backupsT, exportsT []time.Duration
	b.ResetTimer()
	for range b.N {
		for range 3 {
			dumps = append(dumps, plainDump(b, ctx, cfg, t.Database))
			backupsT = append(backupsT, f.timedBackup(b, ctx))
			exportsT = append(exportsT, f.timedExport(b, ctx))
		}
	}
	b.StopTimer()
	med := func(d []time.Duration) time.Duration { s := slices.Clone(d); slices.Sort(s); return s[len(s)/2] }
	rate := func(d time.Duration) float64 { return mb / d.Seconds() }
	dump, backup, export := med(dumps), med(backupsT), med(exportsT)
	b.ReportMetric(rate(dump), "pg_dump-MB/s")
	b.ReportMetric(rate(backup), "backup-MB/s")
	b.ReportMetric(rate(export), "export-MB/s")
	b.ReportMetric(rate(backup)/rate(dump), "backup/pg_dump")
	b.ReportMetric(rate(export)/rate(dump), "export/pg_dump")
	b.Logf("database %.0f MB (600,000 rows); medians of 3: pg_dump -Fc %s (%.1f MB/s), backup %s (%.1f MB/s, %.2fx), export %s (%.1f MB/s, %.2fx); all: pg_dump %v, backup %v, export %v",
		mb, dump.Round(time.Millisecond), rate(dump), backup.Round(time.Millisecond), rate(backup), rate(backup)/rate(dump),
		export.Round(time.Millisecond), rate(export), rate(export)/rate(dump), dumps, backupsT, exportsT)
}

// adminConfig is a connection to tenant t's database as its server's admin role.
func (f *fleet) adminConfig(ctx context.Context, t catalog.Tenant) (*pgx.ConnConfig, error) {
	dsn, err := f.app.store.ServerDSN(ctx, t.Server)
	if err != nil {
		return nil, err
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cfg.Database = t.Database
	return cfg, nil
}

// plainDump times pg_dump -Fc of database into a file, as the admin role.
func plainDump(b *testing.B, ctx context.Context, cfg *pgx.ConnConfig, database string) time.Duration {
	out := filepath.Join(b.TempDir(), "plain.dump")
	cmd, err := pgcluster.ClientCommand(ctx, "pg_dump", &cfg.Config, database, "--format=custom", "--file="+out)
	require.NoError(b, err)
	cmd.Stderr = io.Discard
	start := time.Now()
	require.NoError(b, cmd.Run())
	d := time.Since(start)
	require.NoError(b, os.Remove(out))
	return d
}

// timedBackup takes a backup and returns its job's time, started to finished.
func (f *fleet) timedBackup(b *testing.B, ctx context.Context) time.Duration {
	bk, created, err := f.app.data.StartBackup(ctx, "benchdata", "bench")
	require.NoError(b, err)
	require.True(b, created)
	for {
		got, err := f.app.data.GetBackup(ctx, "benchdata", bk.ID)
		require.NoError(b, err)
		if got.State == "done" {
			require.NoError(b, os.Remove(got.File))
			return got.FinishedAt.Sub(*got.StartedAt)
		}
		require.NotEqual(b, "failed", got.State, got.LastError)
		time.Sleep(20 * time.Millisecond)
	}
}

// timedExport makes an export and returns its time, asked to finished.
func (f *fleet) timedExport(b *testing.B, ctx context.Context) time.Duration {
	status, x := call(b, "POST", f.admin+"/admin/v1/tenants/benchdata/exports", testToken, nil)
	require.Equal(b, http.StatusAccepted, status, x)
	for {
		got, err := f.app.data.GetExport(ctx, "benchdata", int64(x["id"].(float64)))
		require.NoError(b, err)
		if got.State == "done" {
			return got.FinishedAt.Sub(got.CreatedAt)
		}
		require.NotEqual(b, "failed", got.State, got.LastError)
		time.Sleep(20 * time.Millisecond)
	}
}
