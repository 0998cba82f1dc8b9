package datarights_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/datarights"
	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/provisioner"
)

var catalogTemplate = pgtest.WithTemplate("catalog-"+pgtest.HashFS(catalog.Migrations()), catalog.Migrate)

// bundle is a catalog of the test's own, a real provisioner over one
// server (pg-1, registered with the managed role) and tenants on it.
type bundle struct {
	store  *catalog.Store
	prov   *provisioner.Provisioner
	server *pgtest.Server
	dir    string
}

func setup(t *testing.T, tenants ...string) *bundle {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	cipher, err := catalog.NewCipher(mustKey(t))
	require.NoError(t, err)
	store, err := catalog.Open(ctx, pgtest.NewDB(t, catalogTemplate), cipher, catalog.StoreConfig{})
	require.NoError(t, err)
	t.Cleanup(store.Close)
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	prov, err := provisioner.New(store, provisioner.Config{Logger: logger, WarmPoolSize: -1})
	require.NoError(t, err)
	require.NoError(t, prov.Start(ctx))
	t.Cleanup(func() { _ = prov.Stop(context.Background()) })
	b := &bundle{store: store, prov: prov, server: pgtest.NewServer(t), dir: t.TempDir()}
	_, err = prov.RegisterServer(ctx, provisioner.ServerSpec{Name: "pg-1", DSN: b.server.ManagedDSN(t, "postgres")}, "test")
	require.NoError(t, err)
	for _, slug := range tenants {
		_, _, err = prov.CreateTenant(ctx, provisioner.TenantSpec{Slug: slug, Plan: "basic"}, "test")
		require.NoError(t, err)
		tn, err := prov.WaitSettled(ctx, slug)
		require.NoError(t, err)
		require.Equal(t, catalog.TenantActive, tn.State, tn.LastError)
	}
	return b
}

func mustKey(t *testing.T) []byte {
	key, err := catalog.ParseKey(catalog.NewKey())
	require.NoError(t, err)
	return key
}

// service runs a datarights service with its own job registry.
func (b *bundle) service(t *testing.T, cfg datarights.Config) *datarights.Service {
	t.Helper()
	cfg.Tenants, cfg.BackupDir, cfg.ScheduleEvery = b.prov, b.dir, -1
	svc, err := datarights.New(b.store, cfg)
	require.NoError(t, err)
	require.NoError(t, svc.Start(context.Background()))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = svc.Stop(ctx)
	})
	return svc
}

func waitBackup(t *testing.T, svc *datarights.Service, slug string, id int64, limit time.Duration) datarights.Backup {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		b, err := svc.GetBackup(context.Background(), slug, id)
		require.NoError(t, err)
		if b.State == datarights.StateDone || b.State == datarights.StateFailed {
			return b
		}
		require.True(t, time.Now().Before(deadline), "backup %d still %s: %s", id, b.State, b.LastError)
		time.Sleep(50 * time.Millisecond)
	}
}

// TestFailedBackupIsRetriedAndReported: a backup whose database cannot be
// dumped is tried again, then marked failed with the reason after its last
// attempt, with an audit event; it leaves no file behind.
func TestFailedBackupIsRetriedAndReported(t *testing.T) {
	t.Parallel()
	b := setup(t, "broken")
	reg := prometheus.NewRegistry()
	svc := b.service(t, datarights.Config{MaxAttempts: 2, Registerer: reg})
	ctx := context.Background()
	tn, err := b.store.GetTenant(ctx, "broken")
	require.NoError(t, err)
	// Gone behind the catalog's back (a superuser's mistake, say).
	conn, err := pgx.Connect(ctx, b.server.DSN("postgres"))
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "DROP DATABASE "+tn.Database+" WITH (FORCE)")
	require.NoError(t, err)
	conn.Close(ctx)

	bk, created, err := svc.StartBackup(ctx, "broken", "test")
	require.NoError(t, err)
	require.True(t, created)
	got := waitBackup(t, svc, "broken", bk.ID, time.Minute)
	require.Equal(t, datarights.StateFailed, got.State)
	require.Equal(t, 2, got.Attempts, "tried again before it failed")
	require.Contains(t, got.LastError, tn.Database)
	require.NotNil(t, got.FinishedAt)
	events, err := b.store.ListAudit(ctx, catalog.AuditFilter{TenantID: tn.ID})
	require.NoError(t, err)
	var failed int
	for _, e := range events {
		if e.Action == "tenant.backup_failed" {
			failed++
			require.Contains(t, e.Reason, tn.Database)
		}
	}
	require.Equal(t, 1, failed)
	files, err := filepath.Glob(filepath.Join(b.dir, tn.ID, "*"))
	require.NoError(t, err)
	require.Empty(t, files, "no partial file left")
	outcomes := map[string]float64{}
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, fam := range families {
		if fam.GetName() == "tenantplane_data_jobs_total" {
			for _, m := range fam.GetMetric() {
				outcomes[m.GetLabel()[1].GetValue()] = m.GetCounter().GetValue()
			}
		}
	}
	require.Equal(t, map[string]float64{"retried": 1, "failed": 1}, outcomes, "the metrics report it too")
}

// TestBackupsOnOneServerRunOneAtATime: with PerServer 1 and four workers,
// the backups of four tenants of one server all finish, and no two of them
// ran at the same time (their started..finished spans do not overlap).
func TestBackupsOnOneServerRunOneAtATime(t *testing.T) {
	t.Parallel()
	slugs := []string{"one", "two", "three", "four"}
	b := setup(t, slugs...)
	svc := b.service(t, datarights.Config{Workers: 4, PerServer: 1})
	ctx := context.Background()
	ids := map[string]int64{}
	for _, slug := range slugs {
		bk, _, err := svc.StartBackup(ctx, slug, "test")
		require.NoError(t, err)
		ids[slug] = bk.ID
	}
	type span struct{ from, to time.Time }
	var spans []span
	for _, slug := range slugs {
		got := waitBackup(t, svc, slug, ids[slug], 2*time.Minute)
		require.Equal(t, datarights.StateDone, got.State, got.LastError)
		spans = append(spans, span{*got.StartedAt, *got.FinishedAt})
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].from.Before(spans[j].from) })
	for i := 1; i < len(spans); i++ {
		require.False(t, spans[i].from.Before(spans[i-1].to), "backups %d and %d overlap: %v", i-1, i, spans)
	}
}

// TestScheduleSpreadsBackupsOverTheInterval: 60 tenants of a plan backed up
// hourly are each due once in every hour, at a point of the hour of their
// own, so a schedule looking every 10 minutes finds about a sixth of them
// each time, not all at once. (The first look after install finds every
// tenant due: none has a backup yet.)
func TestScheduleSpreadsBackupsOverTheInterval(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	pool := b.store.Pool()
	_, err := pool.Exec(ctx, `UPDATE plans SET backup_interval = '1 hour' WHERE name = 'basic';
		INSERT INTO tenants (slug, name, plan, state, server_id, created_at)
		SELECT 'spread-' || i, 'Spread ' || i, 'basic', 'active', (SELECT id FROM servers), now() - interval '2 days'
		FROM generate_series(1, 60) i`)
	require.NoError(t, err)
	now := time.Now().UTC()
	// Not started: the jobs are queued, never worked; the test settles the backups.
	svc, err := datarights.New(b.store, datarights.Config{Tenants: b.prov, BackupDir: b.dir, ScheduleEvery: -1, Now: func() time.Time { return now }})
	require.NoError(t, err)
	settle := func() {
		_, err := pool.Exec(ctx, `UPDATE backups SET state = 'done' WHERE state = 'pending'`)
		require.NoError(t, err)
	}
	n, err := svc.ScheduleBackups(ctx)
	require.NoError(t, err)
	require.Equal(t, 60, n, "the first look: every tenant is due")
	settle()
	var counts []int
	total := 0
	for step := 1; step <= 6; step++ {
		now = now.Add(10 * time.Minute)
		n, err := svc.ScheduleBackups(ctx)
		require.NoError(t, err)
		again, err := svc.ScheduleBackups(ctx)
		require.NoError(t, err)
		require.Zero(t, again)
		counts = append(counts, n)
		total += n
		settle()
	}
	require.Equal(t, 60, total, "each tenant once in the hour: %v", counts)
	for _, c := range counts {
		require.LessOrEqual(t, c, 22, "spread over the hour, not bunched: %v", counts)
	}
}
