package mover_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/migrations"
	"github.com/tenantplane/tenantplane/mover"
	"github.com/tenantplane/tenantplane/provisioner"
)

// benchTimeout bounds each benchmark's database work.
const benchTimeout = 15 * time.Minute

// benchSchema is the benchmarks' tenant schema: several tables with
// secondary indexes, foreign keys and serials, and writes for the
// clients' inserts during a move.
var benchSchema = map[string]string{
	"000001_bench.up.sql": `
CREATE TABLE accounts (id bigserial PRIMARY KEY, name text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE users (id bigserial PRIMARY KEY, account_id bigint NOT NULL REFERENCES accounts,
	email text NOT NULL UNIQUE, name text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX users_account_idx ON users (account_id);
CREATE TABLE orders (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users,
	amount numeric(12,2) NOT NULL, status text NOT NULL, placed_at timestamptz NOT NULL, note text);
CREATE INDEX orders_user_idx ON orders (user_id);
CREATE INDEX orders_placed_idx ON orders (placed_at);
CREATE TABLE events (id bigserial PRIMARY KEY, account_id bigint NOT NULL REFERENCES accounts,
	kind text NOT NULL, payload jsonb NOT NULL, at timestamptz NOT NULL);
CREATE INDEX events_account_at_idx ON events (account_id, at);
CREATE TABLE writes (id bigserial PRIMARY KEY, n bigint NOT NULL UNIQUE, at timestamptz NOT NULL DEFAULT clock_timestamp());`,
	"000001_bench.down.sql": `DROP TABLE writes, events, orders, users, accounts;`,
}

// fillBench writes about 200 MB (1.21M rows) into a tenant database of
// benchSchema, as its admin role.
const fillBench = `
INSERT INTO accounts (name) SELECT 'account ' || i FROM generate_series(1, 10000) i;
INSERT INTO users (account_id, email, name)
	SELECT 1 + i % 10000, 'user' || i || '@example.com', 'User Number ' || i FROM generate_series(1, 200000) i;
INSERT INTO orders (user_id, amount, status, placed_at, note)
	SELECT 1 + i % 200000, (i % 100000) / 100.0, (ARRAY['new', 'paid', 'shipped'])[1 + i % 3],
		timestamptz '2025-01-01' + i * interval '1 minute', 'order ' || md5(i::text)
	FROM generate_series(1, 600000) i;
INSERT INTO events (account_id, kind, payload, at)
	SELECT 1 + i % 10000, 'kind' || i % 20, jsonb_build_object('i', i, 'tags', jsonb_build_array('a', 'b', i)),
		timestamptz '2025-01-01' + i * interval '1 second'
	FROM generate_series(1, 400000) i;
ANALYZE;`

// benchBundle is moveBundle for benchmarks: a catalog, a provisioner over
// pg-1 (source) and pg-2, and tenants on pg-1.
type benchBundle struct {
	store   *catalog.Store
	prov    *provisioner.Provisioner
	servers map[string]*pgtest.Server
	logger  *slog.Logger
}

func benchContext(b *testing.B) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), benchTimeout)
	b.Cleanup(cancel)
	return ctx
}

func setupBench(b *testing.B, source *pgtest.Server) *benchBundle {
	b.Helper()
	return setupBenchTo(b, source, pgtest.NewServer(b))
}

// setupBenchTo is setupBench with the target server (pg-2) given.
func setupBenchTo(b *testing.B, source, target *pgtest.Server) *benchBundle {
	b.Helper()
	ctx := benchContext(b)
	key, err := catalog.ParseKey(catalog.NewKey())
	require.NoError(b, err)
	cipher, err := catalog.NewCipher(key)
	require.NoError(b, err)
	store, err := catalog.Open(ctx, pgtest.NewDB(b, catalogTemplate), cipher, catalog.StoreConfig{})
	require.NoError(b, err)
	b.Cleanup(store.Close)

	dir := b.TempDir()
	for name, body := range benchSchema {
		require.NoError(b, os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600))
	}
	schema, err := migrations.Load(dir)
	require.NoError(b, err)
	bb := &benchBundle{store: store, servers: map[string]*pgtest.Server{"pg-1": source, "pg-2": target},
		logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	bb.prov, err = provisioner.New(store, provisioner.Config{Logger: bb.logger, Migrations: &schema, WarmPoolSize: -1})
	require.NoError(b, err)
	require.NoError(b, bb.prov.Start(ctx))
	b.Cleanup(func() { _ = bb.prov.Stop(context.Background()) })
	for _, name := range []string{"pg-1", "pg-2"} {
		_, err := bb.prov.RegisterServer(ctx, provisioner.ServerSpec{Name: name, DSN: bb.servers[name].ManagedDSN(b, "postgres"), Capacity: 1000}, "bench")
		require.NoError(b, err)
	}
	return bb
}

// createTenant makes a tenant on pg-1 through the provisioner.
func (bb *benchBundle) createTenant(b *testing.B, slug string) catalog.Tenant {
	b.Helper()
	ctx := benchContext(b)
	_, _, err := bb.prov.CreateTenant(ctx, provisioner.TenantSpec{Slug: slug, Plan: "basic", Server: "pg-1"}, "bench")
	require.NoError(b, err)
	t, err := bb.prov.WaitSettled(ctx, slug)
	require.NoError(b, err)
	require.Equal(b, catalog.TenantActive, t.State, t.LastError)
	return t
}

func (bb *benchBundle) service(b *testing.B, workers int, hook func(ctx context.Context, id int64, phase string) error) *mover.Service {
	b.Helper()
	cfg := mover.Config{Logger: bb.logger, Targets: bb.prov, Keep: time.Hour, Workers: workers}
	if hook != nil {
		mover.SetAfterPhase(&cfg, hook)
	}
	svc, err := mover.New(bb.store, cfg)
	require.NoError(b, err)
	require.NoError(b, svc.Start(context.Background()))
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = svc.Stop(ctx)
	})
	return svc
}

func (bb *benchBundle) adminConn(b *testing.B, server, database string) *pgx.Conn {
	b.Helper()
	conn, err := pgx.Connect(benchContext(b), bb.servers[server].ManagedDSN(b, database))
	require.NoError(b, err)
	b.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// fillTenant writes fillBench into the tenant's database on pg-1 and
// returns its size.
func (bb *benchBundle) fillTenant(b *testing.B, t catalog.Tenant) int64 {
	b.Helper()
	ctx := benchContext(b)
	conn := bb.adminConn(b, "pg-1", t.Database)
	began := time.Now()
	_, err := conn.Exec(ctx, fillBench)
	require.NoError(b, err)
	var size int64
	require.NoError(b, conn.QueryRow(ctx, "SELECT pg_database_size(current_database())").Scan(&size))
	b.Logf("filled tenant %s: %d MB in %s", t.Slug, size>>20, time.Since(began).Round(time.Millisecond))
	return size
}

// phaseClock records when each phase of a move was recorded.
type phaseClock struct {
	mu sync.Mutex
	at map[string]time.Time
}

func (c *phaseClock) hook(_ context.Context, _ int64, phase string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.at == nil {
		c.at = map[string]time.Time{}
	}
	if _, ok := c.at[phase]; !ok {
		c.at[phase] = time.Now()
	}
	return nil
}

func (c *phaseClock) get(phase string) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.at[phase]
}

// benchClients insert numbered rows as the tenant role, each in a loop of
// its own, the way requests through the router would: while the tenant is
// held a client waits, and a write that fails (the fence) is tried again.
// Each client records the gaps between its acknowledged writes.
type benchClients struct {
	bb     *benchBundle
	b      *testing.B
	tenant catalog.Tenant
	pass   string
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	acks []int64
	gaps [][]gap // per client
	errs []error
}

type gap struct {
	end time.Time
	d   time.Duration
}

func (bb *benchBundle) startClients(b *testing.B, t catalog.Tenant, n int) *benchClients {
	ctx, cancel := context.WithCancel(benchContext(b))
	_, pass, err := bb.store.TenantCredentials(ctx, t.ID)
	require.NoError(b, err)
	c := &benchClients{bb: bb, b: b, tenant: t, pass: pass, cancel: cancel, gaps: make([][]gap, n)}
	for i := range n {
		c.wg.Add(1)
		go c.run(ctx, i)
	}
	b.Cleanup(c.stop)
	return c
}

func (c *benchClients) connect(ctx context.Context, server string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(c.bb.servers[server].ManagedDSN(c.b, c.tenant.Database))
	if err != nil {
		return nil, err
	}
	cfg.User, cfg.Password, cfg.ConnectTimeout = c.tenant.Role, c.pass, 2*time.Second
	return pgx.ConnectConfig(ctx, cfg)
}

func (c *benchClients) run(ctx context.Context, client int) {
	defer c.wg.Done()
	conns := map[string]*pgx.Conn{}
	defer func() {
		for _, conn := range conns {
			conn.Close(context.Background())
		}
	}()
	last := time.Now()
	for seq := int64(1); ctx.Err() == nil; seq++ {
		n := int64(client+1)*1_000_000_000 + seq
		for ctx.Err() == nil {
			tnt, err := c.bb.store.GetTenantByID(ctx, c.tenant.ID)
			if err != nil || tnt.Held {
				time.Sleep(2 * time.Millisecond)
				continue
			}
			conn := conns[tnt.Server]
			if conn == nil {
				if conn, err = c.connect(ctx, tnt.Server); err != nil {
					time.Sleep(5 * time.Millisecond)
					continue
				}
				conns[tnt.Server] = conn
			}
			_, err = conn.Exec(ctx, "INSERT INTO writes (n) VALUES ($1)", n)
			var pgErr *pgconn.PgError
			if err != nil && !(errors.As(err, &pgErr) && pgErr.ConstraintName == "writes_n_key") {
				if errors.As(err, &pgErr) && pgErr.Code == "23505" && ctx.Err() == nil {
					c.mu.Lock()
					c.errs = append(c.errs, fmt.Errorf("write %d on %s: %w", n, tnt.Server, err))
					c.mu.Unlock()
				}
				conn.Close(context.Background())
				delete(conns, tnt.Server)
				time.Sleep(2 * time.Millisecond)
				continue
			}
			now := time.Now()
			c.mu.Lock()
			c.acks = append(c.acks, n)
			c.gaps[client] = append(c.gaps[client], gap{end: now, d: now.Sub(last)})
			c.mu.Unlock()
			last = now
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (c *benchClients) stop() {
	c.cancel()
	c.wg.Wait()
}

// pauses stops the clients and returns, for each client, its longest gap
// between two acknowledged writes whose second came after from, and the
// median gap over all clients' writes (the steady cadence).
func (c *benchClients) pauses(from time.Time) (longest []time.Duration, median time.Duration, acks []int64) {
	c.stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	require.Empty(c.b, c.errs)
	var all []time.Duration
	for _, gs := range c.gaps {
		var most time.Duration
		for _, g := range gs {
			all = append(all, g.d)
			if g.end.After(from) {
				most = max(most, g.d)
			}
		}
		longest = append(longest, most)
	}
	slices.Sort(longest)
	slices.Sort(all)
	return longest, percentile(all, 0.5), c.acks
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(p*float64(len(sorted))))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// checkAcked asserts that every acknowledged write is on the target.
func (bb *benchBundle) checkAcked(b *testing.B, t catalog.Tenant, acks []int64) {
	b.Helper()
	ctx := benchContext(b)
	var missing int
	require.NoError(b, bb.adminConn(b, "pg-2", t.Database).QueryRow(ctx,
		"SELECT count(*) FROM unnest($1::bigint[]) a(n) WHERE NOT EXISTS (SELECT FROM writes w WHERE w.n = a.n)", acks).Scan(&missing))
	require.Zero(b, missing, "acknowledged writes missing on the target")
}

const benchClientCount = 4

// BenchmarkMoveOnline moves a tenant of about 200 MB online while four
// clients insert as the tenant role, and reports the write pause as the
// clients saw it and as the move recorded it.
func BenchmarkMoveOnline(b *testing.B) {
	ctx := benchContext(b)
	src := pgtest.NewServerWithSettings(b, map[string]string{"wal_level": "logical"})
	bb := setupBench(b, src)
	superExecB(b, ctx, src, "ALTER ROLE "+pgtest.ManagedRole+" REPLICATION")
	t := bb.createTenant(b, "big")
	size := bb.fillTenant(b, t)
	var clock phaseClock
	svc := bb.service(b, 2, clock.hook)

	clients := bb.startClients(b, t, benchClientCount)
	time.Sleep(time.Second)
	b.ResetTimer()
	began := time.Now()
	m, err := svc.StartMove(ctx, t.Slug, mover.MoveSpec{To: "pg-2"}, "bench")
	require.NoError(b, err)
	require.Equal(b, mover.ModeOnline, m.Mode, m.ModeReason)
	m = waitMove(b, svc, m.ID)
	total := time.Since(began)
	b.StopTimer()
	require.Equal(b, mover.PhaseDone, m.Phase, m.LastError)
	time.Sleep(500 * time.Millisecond)
	longest, cadence, acks := clients.pauses(began)
	bb.checkAcked(b, t, acks)
	require.NotNil(b, m.WritePauseMS)

	// Inside the fence: from the hold (phase fenced is recorded right after
	// it) through the last catch-up (verifying recorded) to the switch.
	fenced, verifying, switched := clock.get(mover.PhaseFenced), clock.get(mover.PhaseVerifying), clock.get(mover.PhaseSwitched)
	verify := bb.timeVerify(b, t)
	full, changed := mover.FenceVerifies(svc)
	require.Equal(b, [2]int64{0, 1}, [2]int64{full, changed}, "the fence verified only the rows written during the move")
	fenceVerify, counts := mover.LastFenceVerify(svc), bb.timeCounts(b, t)
	b.ReportMetric(verify.Seconds(), "verify-alone-s")
	b.ReportMetric(ms(fenceVerify), "fence-verify-ms")
	b.ReportMetric(ms(counts), "counts-alone-ms")
	b.ReportMetric(ms(percentile(longest, 0.5)), "pause-p50-ms")
	b.ReportMetric(ms(longest[len(longest)-1]), "pause-max-ms")
	b.ReportMetric(float64(*m.WritePauseMS), "write_pause_ms")
	b.ReportMetric(total.Seconds(), "move-s")
	b.ReportMetric(float64(m.BytesCopied)/(1<<20), "copied-MB")
	b.Logf("online move of %d MB (%d rows, %d MB of COPY text) under %d clients (%d writes): total %s; "+
		"write pause per client p50 %s, max %s (steady gap p50 %s); recorded write_pause_ms %d; "+
		"copy+catch-up %s, fenced→catch-up done %s, verify+switch %s (Verify alone, after the move: %s); "+
		"the fence's check of the rows written %s, of which every table's count (alone, after the move) %s",
		size>>20, m.RowsCopied, m.BytesCopied>>20, benchClientCount, len(acks), total.Round(time.Millisecond),
		percentile(longest, 0.5).Round(time.Millisecond), longest[len(longest)-1].Round(time.Millisecond), cadence.Round(100*time.Microsecond),
		*m.WritePauseMS, fenced.Sub(began).Round(time.Millisecond), verifying.Sub(fenced).Round(time.Millisecond), switched.Sub(verifying).Round(time.Millisecond),
		verify.Round(time.Millisecond), fenceVerify.Round(time.Millisecond), counts.Round(time.Millisecond))
}

// BenchmarkMoveRevertInStep moves a tenant of about 200 MB online between
// two servers that both replicate, so its source is kept in step, lets the
// four clients write on the target a while, then reverts the move and
// reports the revert's write pause as the clients saw it and as the revert
// recorded it: no copy, only the last writes caught up and verified.
func BenchmarkMoveRevertInStep(b *testing.B) {
	ctx := benchContext(b)
	src := pgtest.NewServerWithSettings(b, map[string]string{"wal_level": "logical"})
	dst := pgtest.NewServerWithSettings(b, map[string]string{"wal_level": "logical"})
	bb := setupBenchTo(b, src, dst)
	for _, srv := range []*pgtest.Server{src, dst} {
		superExecB(b, ctx, srv, "ALTER ROLE "+pgtest.ManagedRole+" REPLICATION")
	}
	t := bb.createTenant(b, "big")
	size := bb.fillTenant(b, t)
	svc := bb.service(b, 2, nil)

	clients := bb.startClients(b, t, benchClientCount)
	time.Sleep(time.Second)
	m, err := svc.StartMove(ctx, t.Slug, mover.MoveSpec{To: "pg-2"}, "bench")
	require.NoError(b, err)
	m = waitMove(b, svc, m.ID)
	require.Equal(b, mover.PhaseDone, m.Phase, m.LastError)
	require.True(b, m.KeepInStep, m.KeepReason)
	time.Sleep(3 * time.Second) // the clients write on pg-2, kept in step on pg-1

	b.ResetTimer()
	began := time.Now()
	r, err := svc.Revert(ctx, m.ID, "bench")
	require.NoError(b, err)
	r = waitMove(b, svc, r.ID)
	total := time.Since(began)
	b.StopTimer()
	require.Equal(b, mover.PhaseDone, r.Phase, r.LastError)
	require.Zero(b, r.RowsCopied)
	time.Sleep(500 * time.Millisecond)
	longest, cadence, acks := clients.pauses(began)
	var missing int
	require.NoError(b, bb.adminConn(b, "pg-1", t.Database).QueryRow(ctx,
		"SELECT count(*) FROM unnest($1::bigint[]) a(n) WHERE NOT EXISTS (SELECT FROM writes w WHERE w.n = a.n)", acks).Scan(&missing))
	require.Zero(b, missing, "acknowledged writes missing on the source")
	full, changed := mover.FenceVerifies(svc)
	require.Equal(b, [2]int64{0, 2}, [2]int64{full, changed}, "the move's and the revert's fences verified only the rows written")
	b.ReportMetric(ms(percentile(longest, 0.5)), "pause-p50-ms")
	b.ReportMetric(ms(longest[len(longest)-1]), "pause-max-ms")
	b.ReportMetric(float64(*r.WritePauseMS), "write_pause_ms")
	b.ReportMetric(total.Seconds(), "revert-s")
	b.ReportMetric(ms(mover.LastFenceVerify(svc)), "fence-verify-ms")
	b.Logf("in-step revert of a %d MB tenant under %d clients (%d writes): revert %s (no copy); write pause per client p50 %s, max %s "+
		"(steady gap p50 %s); recorded write_pause_ms %d (the move's own: %d); the fence's check of the rows written since the move %s",
		size>>20, benchClientCount, len(acks), total.Round(time.Millisecond),
		percentile(longest, 0.5).Round(time.Millisecond), longest[len(longest)-1].Round(time.Millisecond), cadence.Round(100*time.Microsecond),
		*r.WritePauseMS, *m.WritePauseMS, mover.LastFenceVerify(svc).Round(time.Millisecond))
}

// BenchmarkMoveCopy moves a tenant of about 200 MB in the copy mode and,
// in the same run, pg_dump -Fc | pg_restore (no -j: the copy reads one
// table at a time too) of the same database into an empty database on the
// target server, once before the move and once after it.
func BenchmarkMoveCopy(b *testing.B) {
	ctx := benchContext(b)
	bb := setupBench(b, pgtest.NewServer(b))
	t := bb.createTenant(b, "big")
	size := bb.fillTenant(b, t)
	var clock phaseClock
	svc := bb.service(b, 2, clock.hook)

	b.ResetTimer()
	// Copy alone and pg_dump | pg_restore, alternated, so that each pair
	// ran on the same machine state.
	var copies, dumps []time.Duration
	for i := range copyRounds {
		dumps = append(dumps, bb.dumpRestore(b, t.Database, fmt.Sprintf("restore_%d", i)))
		copies = append(copies, bb.copyAlone(b, t.Database, fmt.Sprintf("copy_%d", i)))
	}
	began := time.Now()
	m, err := svc.StartMove(ctx, t.Slug, mover.MoveSpec{To: "pg-2", Mode: mover.ModeCopy}, "bench")
	require.NoError(b, err)
	m = waitMove(b, svc, m.ID)
	total := time.Since(began)
	require.Equal(b, mover.PhaseDone, m.Phase, m.LastError)
	dumps = append(dumps, bb.dumpRestore(b, t.Database, "restore_last"))
	b.StopTimer()

	// Copy mode phases: fenced is recorded once the target is made,
	// copying once the source is fenced, verifying once the copy is done.
	fenced, copying, verifying, switched := clock.get(mover.PhaseFenced), clock.get(mover.PhaseCopying), clock.get(mover.PhaseVerifying), clock.get(mover.PhaseSwitched)
	verify := bb.timeVerify(b, t)
	copyRatio := ratios(copies, dumps)
	// The move against the pg_dump | pg_restore just before and just after it.
	around := (dumps[copyRounds-1] + dumps[copyRounds]) / 2
	dump, copyMedian := median(dumps), median(copies)
	b.ReportMetric(total.Seconds(), "move-s")
	b.ReportMetric(dump.Seconds(), "pg_dump+restore-s")
	b.ReportMetric(copyMedian.Seconds(), "copy-alone-s")
	b.ReportMetric(total.Seconds()/around.Seconds(), "move/pg_dump")
	b.ReportMetric(copyRatio, "copy/pg_dump")
	b.ReportMetric(float64(*m.WritePauseMS), "write_pause_ms")
	b.ReportMetric(verify.Seconds(), "verify-alone-s")
	b.Logf("copy move of %d MB (%d rows, %d MB of COPY text): total %s, ratio %.2f to pg_dump -Fc | pg_restore just before and after it (%s; all, in order: %s, median %s); "+
		"target made %s, fence %s, copy %s, verify+switch %s (Verify alone, after the move: %s); write_pause_ms %d; "+
		"mover.Copy alone, in order: %s, median %s; median ratio %.2f to the pg_dump | pg_restore of the same round",
		size>>20, m.RowsCopied, m.BytesCopied>>20, total.Round(time.Millisecond), total.Seconds()/around.Seconds(),
		around.Round(time.Millisecond), roundAll(dumps), dump.Round(time.Millisecond),
		fenced.Sub(began).Round(time.Millisecond), copying.Sub(fenced).Round(time.Millisecond), verifying.Sub(copying).Round(time.Millisecond),
		switched.Sub(verifying).Round(time.Millisecond), verify.Round(time.Millisecond), *m.WritePauseMS,
		roundAll(copies), copyMedian.Round(time.Millisecond), copyRatio)
}

// copyRounds is how many times BenchmarkMoveCopy times mover.Copy alone
// and pg_dump | pg_restore, alternated.
const copyRounds = 3

// ratios is the median of a[i]/b[i].
func ratios(a, b []time.Duration) float64 {
	var r []float64
	for i := range a {
		r = append(r, a[i].Seconds()/b[i].Seconds())
	}
	slices.Sort(r)
	return r[len(r)/2]
}

func median(ds []time.Duration) time.Duration {
	s := slices.Sorted(slices.Values(ds))
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}

func roundAll(ds []time.Duration) string {
	var out []string
	for _, d := range ds {
		out = append(out, d.Round(time.Millisecond).String())
	}
	return strings.Join(out, ", ")
}

// copyAlone times mover.Copy of database on pg-1 into a new database on
// pg-2 with benchSchema's tables, both as the managed role.
func (bb *benchBundle) copyAlone(b *testing.B, database, into string) time.Duration {
	b.Helper()
	ctx := benchContext(b)
	admin := bb.adminConn(b, "pg-2", "postgres")
	_, err := admin.Exec(ctx, "CREATE DATABASE "+into+" TEMPLATE template0")
	require.NoError(b, err)
	b.Cleanup(func() { _, _ = admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+into+" WITH (FORCE)") })
	dst := bb.adminConn(b, "pg-2", into)
	_, err = dst.Exec(ctx, benchSchema["000001_bench.up.sql"])
	require.NoError(b, err)
	src := bb.adminConn(b, "pg-1", database)
	res, err := mover.Copy(ctx, src, dst, mover.CopyOptions{})
	require.NoError(b, err)
	require.EqualValues(b, 1_210_000, res.Rows)
	// Closed now: the next round's database is made with no backend of
	// this one's still running.
	src.Close(ctx)
	dst.Close(ctx)
	_, err = admin.Exec(ctx, "DROP DATABASE "+into+" WITH (FORCE)")
	require.NoError(b, err)
	return res.Duration
}

// dumpRestore times pg_dump -Fc of database on pg-1 piped into pg_restore
// into a new empty database on pg-2, both as the managed role.
func (bb *benchBundle) dumpRestore(b *testing.B, database, into string) time.Duration {
	b.Helper()
	ctx := benchContext(b)
	admin := bb.adminConn(b, "pg-2", "postgres")
	_, err := admin.Exec(ctx, "CREATE DATABASE "+into+" TEMPLATE template0")
	require.NoError(b, err)
	b.Cleanup(func() { _, _ = admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+into+" WITH (FORCE)") })
	bin := "/usr/lib/postgresql/15/bin/"
	began := time.Now()
	dump := exec.CommandContext(ctx, bin+"pg_dump", "-Fc", "-d", bb.servers["pg-1"].ManagedDSN(b, database))
	restore := exec.CommandContext(ctx, bin+"pg_restore", "--no-owner", "--no-acl", "--exit-on-error", "-d", bb.servers["pg-2"].ManagedDSN(b, into))
	var dumpErr, restoreErr strings.Builder
	dump.Stderr, restore.Stderr = &dumpErr, &restoreErr
	pipe, err := dump.StdoutPipe()
	require.NoError(b, err)
	restore.Stdin = pipe
	require.NoError(b, dump.Start())
	require.NoError(b, restore.Run(), restoreErr.String())
	require.NoError(b, dump.Wait(), dumpErr.String())
	took := time.Since(began)
	var rows int64
	require.NoError(b, bb.adminConn(b, "pg-2", into).QueryRow(ctx, "SELECT (SELECT count(*) FROM orders) + (SELECT count(*) FROM events)").Scan(&rows))
	require.Equal(b, int64(1_000_000), rows)
	_, err = admin.Exec(ctx, "DROP DATABASE "+into+" WITH (FORCE)")
	require.NoError(b, err)
	return took
}

// BenchmarkEvacuate50 moves 50 small tenants off pg-1 with StartMove, four
// at a time (the service's workers), online.
func BenchmarkEvacuate50(b *testing.B) {
	ctx := benchContext(b)
	src := pgtest.NewServerWithSettings(b, map[string]string{"wal_level": "logical"})
	bb := setupBench(b, src)
	superExecB(b, ctx, src, "ALTER ROLE "+pgtest.ManagedRole+" REPLICATION")
	const tenants = 50
	var ts []catalog.Tenant
	for i := range tenants {
		t := bb.createTenant(b, fmt.Sprintf("small-%02d", i))
		conn := bb.adminConn(b, "pg-1", t.Database)
		_, err := conn.Exec(ctx, `INSERT INTO accounts (name) SELECT 'a' || i FROM generate_series(1, 100) i;
			INSERT INTO users (account_id, email, name) SELECT 1 + i % 100, 'u' || i, 'n' || i FROM generate_series(1, 1000) i;
			INSERT INTO writes (n) SELECT -i FROM generate_series(1, 1000) i`)
		require.NoError(b, err)
		conn.Close(ctx)
		ts = append(ts, t)
	}
	svc := bb.service(b, 4, nil)

	b.ResetTimer()
	began := time.Now()
	var ids []int64
	for _, t := range ts {
		m, err := svc.StartMove(ctx, t.Slug, mover.MoveSpec{To: "pg-2"}, "bench")
		require.NoError(b, err)
		require.Equal(b, mover.ModeOnline, m.Mode, m.ModeReason)
		ids = append(ids, m.ID)
	}
	var pauses []int64
	for _, id := range ids {
		m := waitMove(b, svc, id)
		require.Equal(b, mover.PhaseDone, m.Phase, m.LastError)
		pauses = append(pauses, *m.WritePauseMS)
	}
	wall := time.Since(began)
	b.StopTimer()
	slices.Sort(pauses)
	b.ReportMetric(wall.Seconds(), "wall-s")
	b.ReportMetric(float64(pauses[len(pauses)-1]), "write_pause_max_ms")
	b.ReportMetric(float64(pauses[len(pauses)/2]), "write_pause_p50_ms")
	b.Logf("evacuated %d small tenants online, 4 at a time: wall %s; write_pause_ms p50 %d, max %d",
		tenants, wall.Round(time.Millisecond), pauses[len(pauses)/2], pauses[len(pauses)-1])
}

// timeVerify runs Verify on the tenant's databases after its move (the
// source fenced, nothing writing): what a full verification of this
// database costs, measured apart from the move.
func (bb *benchBundle) timeVerify(b *testing.B, t catalog.Tenant) time.Duration {
	b.Helper()
	ctx := benchContext(b)
	vr, err := mover.Verify(ctx, bb.adminConn(b, "pg-1", t.Database), bb.adminConn(b, "pg-2", t.Database))
	var mismatch *mover.MismatchError
	if !errors.As(err, &mismatch) { // the clients wrote on the target since
		require.NoError(b, err)
	}
	return vr.Duration
}

// timeCounts times counting every table's rows on both sides at once: the
// part of an online move's fence check that grows with the database.
func (bb *benchBundle) timeCounts(b *testing.B, t catalog.Tenant) time.Duration {
	b.Helper()
	ctx := benchContext(b)
	began := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for _, server := range []string{"pg-1", "pg-2"} {
		conn := bb.adminConn(b, server, t.Database)
		g.Go(func() error {
			tables, err := mover.Tables(gctx, conn)
			if err != nil {
				return err
			}
			for _, tb := range tables {
				var n int64
				if err := conn.QueryRow(gctx, "SELECT count(*) FROM "+pgx.Identifier{mover.Schema, tb.Name}.Sanitize()).Scan(&n); err != nil {
					return err
				}
			}
			return nil
		})
	}
	require.NoError(b, g.Wait())
	return time.Since(began)
}

func superExecB(b *testing.B, ctx context.Context, srv *pgtest.Server, sql string) {
	b.Helper()
	conn, err := pgx.Connect(ctx, srv.DSN("postgres"))
	require.NoError(b, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	require.NoError(b, err)
}
