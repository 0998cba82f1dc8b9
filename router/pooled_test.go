package router

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/httpapi"
	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/provisioner"
)

// pooledBundle is a router serving pooled tenants of one pool database on
// a private server, with a dedicated tenant beside them.
type pooledBundle struct {
	store     *catalog.Store
	prov      *provisioner.Provisioner
	srv       *pgtest.Server
	router    *Router
	url       string
	pool      catalog.PoolDatabase
	tenants   []catalog.Tenant
	keys      []string
	dedicated catalog.Tenant
}

// setupPooled makes n pooled tenants (plan "pooled-test": max_conns 2, no
// rate limit to speak of) in one pool database, and serves them with a
// router configured by tune.
func setupPooled(t *testing.T, n int, tune func(*Config)) *pooledBundle {
	t.Helper()
	ctx := context.Background()
	store, prov, srv, logger := setupServer(t, 40)
	_, err := store.Pool().Exec(ctx, `INSERT INTO plans (name, max_conns, rate_per_sec, rate_burst, isolation) VALUES ('pooled-test', 2, 100000, 100000, 'pooled')`)
	require.NoError(t, err)

	b := &pooledBundle{store: store, prov: prov, srv: srv}
	b.pool, err = prov.CreatePool(ctx, "pg-1", 1000, "test")
	require.NoError(t, err)
	require.Equal(t, catalog.PoolActive, b.pool.State, b.pool.LastError)
	for i := range n {
		tn, created, err := prov.CreateTenant(ctx, provisioner.TenantSpec{Slug: fmt.Sprintf("pooled-%02d", i), Plan: "pooled-test"}, "test")
		require.NoError(t, err)
		require.True(t, created)
		require.Equal(t, catalog.TenantActive, tn.State, "a pooled tenant is active as it is created")
		_, k, err := store.CreateAPIKey(ctx, tn.ID, "test")
		require.NoError(t, err)
		b.tenants, b.keys = append(b.tenants, tn), append(b.keys, k)
	}
	b.dedicated, _, err = prov.CreateTenant(ctx, provisioner.TenantSpec{Slug: "dedicated", Plan: "pro"}, "test")
	require.NoError(t, err)
	b.dedicated, err = prov.WaitSettled(ctx, "dedicated")
	require.NoError(t, err)
	require.Equal(t, catalog.TenantActive, b.dedicated.State, b.dedicated.LastError)

	watcher := catalog.NewWatcher(store, logger)
	require.NoError(t, watcher.Start(ctx))
	t.Cleanup(watcher.Stop)
	cfg := Config{Store: store, Watcher: watcher, Ready: store.Ping, Logger: logger, Pools: PoolConfig{PoolDatabaseConns: 4}}
	if tune != nil {
		tune(&cfg)
	}
	b.router, err = New(cfg)
	require.NoError(t, err)
	// A handler that forgets its WHERE tenant_id, and one that holds its
	// connection for a while: the fences must hold without the handler's help.
	v1 := b.router.engine.Group("/v1", b.router.authenticate)
	b.router.route(v1, http.MethodGet, "/forgetful", catalog.ScopeUsersRead, func(c *gin.Context) {
		db, err := DB(c)
		if err != nil {
			httpapi.WriteError(c, err)
			return
		}
		rows, err := db.Query(c, `SELECT email FROM users ORDER BY email`)
		if err != nil {
			httpapi.WriteError(c, dbError(err, "users"))
			return
		}
		emails, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			httpapi.WriteError(c, dbError(err, "users"))
			return
		}
		c.JSON(http.StatusOK, gin.H{"emails": emails})
	})
	b.router.route(v1, http.MethodGet, "/sleep", catalog.ScopeUsersRead, func(c *gin.Context) {
		db, err := DB(c)
		if err != nil {
			httpapi.WriteError(c, err)
			return
		}
		if _, err := db.Exec(c, `SELECT pg_sleep($1::float8)`, c.Query("s")); err != nil {
			httpapi.WriteError(c, dbError(err, "sleep"))
			return
		}
		c.Status(http.StatusNoContent)
	})
	b.router.route(v1, http.MethodPost, "/panic", catalog.ScopeUsersWrite, func(c *gin.Context) {
		db, err := DB(c)
		if err != nil {
			httpapi.WriteError(c, err)
			return
		}
		if _, err := db.Exec(c, `INSERT INTO users (tenant_id, email) VALUES ($1, 'half@example.com')`, Tenant(c).ID); err != nil {
			httpapi.WriteError(c, dbError(err, "user"))
			return
		}
		panic("a handler bug after its write")
	})
	require.NoError(t, b.router.Start(ctx))
	t.Cleanup(func() { _ = b.router.Stop(context.Background()) })
	hs := httptest.NewServer(b.router.Handler())
	t.Cleanup(hs.Close)
	b.url = hs.URL
	return b
}

// do sends one tenant API request and returns its status and body; for goroutines.
func do(method, url, key, body string) (int, string, error) {
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(raw), err
}

func mustDo(t *testing.T, method, url, key, body string) (int, map[string]any) {
	t.Helper()
	status, raw, err := do(method, url, key, body)
	require.NoError(t, err)
	var out map[string]any
	if raw != "" {
		require.NoError(t, json.NewDecoder(bytes.NewReader([]byte(raw))).Decode(&out), raw)
	}
	return status, out
}

// poolConn connects to the pool database as its own role, as the routers do.
func (b *pooledBundle) poolConn(t *testing.T) *pgx.Conn {
	t.Helper()
	role, password, err := b.store.PoolCredentials(context.Background(), b.pool.ID)
	require.NoError(t, err)
	conn, err := pgx.Connect(context.Background(), withUser(t, b.srv.DSN(b.pool.Name), role, password))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func withUser(t *testing.T, dsn, user, password string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	require.NoError(t, err)
	return fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable", user, password, cfg.Host, cfg.Port, cfg.Database)
}

func TestPooledTenantsSeeOnlyTheirRows(t *testing.T) {
	t.Parallel()
	const n = 50
	b := setupPooled(t, n, nil)
	ctx := context.Background()

	// A pooled tenant is a catalog row and its key: no database, no role.
	require.Empty(t, b.tenants[0].Database)
	require.Equal(t, b.pool.Name, b.tenants[0].Pool)
	require.Equal(t, "pg-1", b.tenants[0].Server)
	var dbs, roles int
	require.NoError(t, pgxQueryRow(t, b.srv.DSN("postgres"), `SELECT (SELECT count(*) FROM pg_database WHERE datname LIKE 't\_%'),
		(SELECT count(*) FROM pg_roles WHERE rolname LIKE 't\_%')`).Scan(&dbs, &roles))
	require.Equal(t, 1, dbs, "only the dedicated tenant has a database")
	require.Equal(t, 1, roles, "and a role")

	userIDs := make([]string, n)
	var wg sync.WaitGroup
	errs := make(chan string, 4*n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 3 {
				// The same emails in every tenant: uniqueness is per tenant.
				status, body, err := do("POST", b.url+"/v1/users", b.keys[i], fmt.Sprintf(`{"email": "user%d@example.com", "name": "%s"}`, j, b.tenants[i].Slug))
				if err != nil || status != http.StatusCreated {
					errs <- fmt.Sprintf("%s: create: %d %v %s", b.tenants[i].Slug, status, err, body)
					return
				}
				var u User
				_ = json.Unmarshal([]byte(body), &u)
				userIDs[i] = u.ID
			}
			status, body, _ := do("POST", b.url+"/v1/users", b.keys[i], `{"email": "user0@example.com"}`)
			if status != http.StatusConflict {
				errs <- fmt.Sprintf("%s: a taken email within the tenant: %d %s", b.tenants[i].Slug, status, body)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	require.False(t, t.Failed())

	// Concurrent reads: every one sees its own tenant's three rows and no other.
	var bad atomic.Int64
	report := make(chan string, 20)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			slug := b.tenants[i].Slug
			for k := range 10 {
				url := b.url + "/v1/users?limit=100"
				if k%2 == 1 {
					url = b.url + "/v1/forgetful"
				}
				status, body, err := do("GET", url, b.keys[i], "")
				ok := err == nil && status == http.StatusOK
				if k%2 == 0 {
					ok = ok && strings.Count(body, `"name":"`+slug+`"`) == 3 && strings.Count(body, `"name":"pooled-`) == 3
				} else {
					ok = ok && strings.Count(body, `@example.com`) == 3
				}
				// Another tenant's user id: not found.
				other := userIDs[(i+1)%n]
				s2, b2, err2 := do("GET", b.url+"/v1/users/"+other, b.keys[i], "")
				ok = ok && err2 == nil && s2 == http.StatusNotFound
				if !ok {
					bad.Add(1)
					select {
					case report <- fmt.Sprintf("%s: %d %v %s | other's id: %d %s", slug, status, err, body, s2, b2):
					default:
					}
				}
			}
		}()
	}
	wg.Wait()
	close(report)
	for e := range report {
		t.Error(e)
	}
	require.Zero(t, bad.Load())

	// Writes to another tenant's id change nothing.
	for _, method := range []string{"PATCH", "DELETE"} {
		status, body := mustDo(t, method, b.url+"/v1/users/"+userIDs[1], b.keys[0], `{"name": "stolen"}`)
		require.Equal(t, http.StatusNotFound, status, "%s: %v", method, body)
	}
	status, body := mustDo(t, "GET", b.url+"/v1/users/"+userIDs[1], b.keys[1], "")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, b.tenants[1].Slug, body["name"])

	// The pool holds every row, each under its tenant.
	var rows, tenants int
	require.NoError(t, pgxQueryRow(t, b.srv.DSN(b.pool.Name), `SELECT count(*), count(DISTINCT tenant_id) FROM users`).Scan(&rows, &tenants))
	require.Equal(t, 3*n, rows)
	require.Equal(t, n, tenants)
	_ = ctx
}

func pgxQueryRow(t *testing.T, dsn, sql string, args ...any) pgx.Row {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn.QueryRow(context.Background(), sql, args...)
}

func TestPooledConnectionsCarryNoTenantBetweenRequests(t *testing.T) {
	t.Parallel()
	const n, requests, workers = 20, 10000, 8
	b := setupPooled(t, n, nil)
	for i := range n {
		status, body := mustDo(t, "POST", b.url+"/v1/users", b.keys[i], `{"email": "only@example.com"}`)
		require.Equal(t, http.StatusCreated, status, body)
	}
	// 10,000 requests across the tenants on a pool of 4 connections: reads,
	// the forgetful handler, and failures (a taken email: rolled back).
	var next, bad atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := next.Add(1)
				if k > requests {
					return
				}
				i := int(k) % n
				var status int
				var body string
				var err error
				want := http.StatusOK
				switch k % 3 {
				case 0:
					status, body, err = do("GET", b.url+"/v1/users", b.keys[i], "")
				case 1:
					status, body, err = do("GET", b.url+"/v1/forgetful", b.keys[i], "")
				case 2:
					status, body, err = do("POST", b.url+"/v1/users", b.keys[i], `{"email": "only@example.com"}`)
					want = http.StatusConflict
				}
				if err != nil || status != want || (want == http.StatusOK && strings.Count(body, "only@example.com") != 1) {
					if bad.Add(1) < 5 {
						t.Errorf("request %d: %d %v %s", k, status, err, body)
					}
				}
			}
		}()
	}
	wg.Wait()
	require.Zero(t, bad.Load())

	// Every connection of the pool database's pool, between transactions:
	// no tenant named, and so no row to see.
	b.router.pools.mu.Lock()
	tp, ok := b.router.pools.cache.Peek(fmt.Sprintf("pool:%d", b.pool.ID))
	b.router.pools.mu.Unlock()
	require.True(t, ok)
	require.LessOrEqual(t, tp.pool.Stat().TotalConns(), int32(4))
	ctx := context.Background()
	conns := tp.pool.AcquireAllIdle(ctx)
	require.NotEmpty(t, conns)
	for _, c := range conns {
		require.Equal(t, byte('I'), c.Conn().PgConn().TxStatus())
		var setting *string
		require.NoError(t, c.QueryRow(ctx, `SELECT nullif(current_setting('tenantplane.tenant_id', true), '')`).Scan(&setting))
		require.Nil(t, setting, "a connection carries no tenant between transactions")
		var rows int
		require.NoError(t, c.QueryRow(ctx, `SELECT count(*) FROM users`).Scan(&rows))
		require.Zero(t, rows, "a connection without the setting sees nothing")
		c.Release()
	}
}

func TestPoolRoleCannotEscapeRowLevelSecurity(t *testing.T) {
	t.Parallel()
	b := setupPooled(t, 2, nil)
	ctx := context.Background()
	a, other := b.tenants[0], b.tenants[1]
	for i := range 2 {
		status, body := mustDo(t, "POST", b.url+"/v1/users", b.keys[i], `{"email": "secret@example.com"}`)
		require.Equal(t, http.StatusCreated, status, body)
	}
	conn := b.poolConn(t)

	var super, bypass bool
	require.NoError(t, conn.QueryRow(ctx, `SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user`).Scan(&super, &bypass))
	require.False(t, super)
	require.False(t, bypass)
	var owned int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)`).Scan(&owned))
	require.Zero(t, owned, "the pool role owns nothing")

	count := func(q pgx.Tx, sql string, args ...any) int {
		var n int
		require.NoError(t, q.QueryRow(ctx, sql, args...).Scan(&n), sql)
		return n
	}
	refused := func(sql string) {
		t.Helper()
		_, err := conn.Exec(ctx, sql)
		require.Error(t, err, sql)
	}
	// Without the setting: nothing to see, nothing to insert.
	var n int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM users`).Scan(&n))
	require.Zero(t, n)
	refused(`INSERT INTO users (tenant_id, email) VALUES ('` + other.ID + `', 'x@example.com')`)

	// Named as tenant a, every way of reaching the other's rows finds none.
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `SELECT set_config('tenantplane.tenant_id', $1, true)`, a.ID)
	require.NoError(t, err)
	require.Equal(t, 1, count(tx, `SELECT count(*) FROM users`))
	require.Equal(t, 0, count(tx, `SELECT count(*) FROM users WHERE tenant_id = $1`, other.ID))
	require.Equal(t, 0, count(tx, `SELECT count(*) FROM users u1 JOIN users u2 USING (email) WHERE u2.tenant_id = $1`, other.ID))
	require.Equal(t, 0, count(tx, `WITH x AS (UPDATE users SET name = 'x' WHERE tenant_id = $1 RETURNING 1) SELECT count(*) FROM x`, other.ID))
	require.Equal(t, 0, count(tx, `WITH x AS (DELETE FROM users WHERE tenant_id = $1 RETURNING 1) SELECT count(*) FROM x`, other.ID))
	var copied bytes.Buffer
	_, err = tx.Conn().PgConn().CopyTo(ctx, &copied, `COPY users (tenant_id) TO STDOUT`)
	require.NoError(t, err)
	require.Equal(t, a.ID+"\n", copied.String(), "COPY sees the tenant's rows only")
	_, err = tx.Exec(ctx, `UPDATE users SET tenant_id = $1`, other.ID)
	require.ErrorContains(t, err, "row-level security", "a row cannot be handed to another tenant")
	require.NoError(t, tx.Rollback(ctx))

	// RLS cannot be turned off, bypassed, or worked around with objects of its own.
	for _, sql := range []string{
		`ALTER TABLE users DISABLE ROW LEVEL SECURITY`,
		`ALTER TABLE users NO FORCE ROW LEVEL SECURITY`,
		`DROP POLICY tenant_isolation ON users`,
		`CREATE POLICY open ON users USING (true)`,
		`ALTER POLICY tenant_isolation ON users USING (true)`,
		`CREATE FUNCTION public.peek() RETURNS bigint LANGUAGE sql SECURITY DEFINER AS 'SELECT count(*) FROM users'`,
		`CREATE TEMP TABLE t (x int)`,
		`TRUNCATE users`,
		`SET ROLE ` + pgtest.ManagedRole,
		`ALTER ROLE CURRENT_USER BYPASSRLS`,
	} {
		refused(sql)
	}
	_, err = conn.Exec(ctx, `SET row_security = off`)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `SELECT count(*) FROM users`)
	require.ErrorContains(t, err, "row-level security", "with row_security off a query under a policy fails rather than bypasses it")

	// And a dedicated tenant's database is out of its reach.
	role, password, err := b.store.PoolCredentials(ctx, b.pool.ID)
	require.NoError(t, err)
	_, err = pgx.Connect(ctx, withUser(t, b.srv.DSN(b.dedicated.Database), role, password))
	require.ErrorContains(t, err, "permission denied for database")
}

func TestPooledTenantFairShare(t *testing.T) {
	t.Parallel()
	b := setupPooled(t, 2, func(c *Config) {
		c.AcquireTimeout = time.Second
		c.PooledStatementTimeout = 4 * time.Second
	})
	// The pool's connections opened first, so that no dial counts against
	// the acquire timeout on a loaded machine.
	for range 3 {
		status, body, err := do("GET", b.url+"/v1/users", b.keys[1], "")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, status, body)
	}
	// Tenant 0 (max_conns 2) sends four slow requests at once: two run, two
	// are refused with 429 after the acquire timeout; tenant 1 is served meanwhile.
	var wg sync.WaitGroup
	statuses := make(chan int, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, _, _ := do("GET", b.url+"/v1/sleep?s=2.5", b.keys[0], "")
			statuses <- status
		}()
	}
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	status, body, err := do("GET", b.url+"/v1/users", b.keys[1], "")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, status, body)
	require.Less(t, time.Since(start), 2*time.Second, "another tenant of the pool is served while tenant 0's slow calls hold theirs")
	wg.Wait()
	close(statuses)
	got := map[int]int{}
	for s := range statuses {
		got[s]++
	}
	require.Equal(t, map[int]int{http.StatusNoContent: 2, http.StatusTooManyRequests: 2}, got)

	// A statement over the pooled statement timeout is stopped: 503.
	status, body, err = do("GET", b.url+"/v1/sleep?s=8", b.keys[0], "")
	require.NoError(t, err)
	require.Equal(t, http.StatusServiceUnavailable, status, body)
	// and the tenant is served again at once.
	status, body, err = do("GET", b.url+"/v1/users", b.keys[0], "")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, status, body)
}

// A handler that fails after writing leaves nothing: its transaction rolls
// back, for an error answer and for a panic alike, and the connection goes
// back clean.
func TestPooledRequestThatFailsWritesNothing(t *testing.T) {
	t.Parallel()
	b := setupPooled(t, 1, nil)
	status, body, err := do("POST", b.url+"/v1/panic", b.keys[0], "")
	require.NoError(t, err)
	require.Equal(t, http.StatusInternalServerError, status, body)
	status, body, err = do("POST", b.url+"/v1/users", b.keys[0], `{"email": "bad"}`)
	require.NoError(t, err)
	require.Equal(t, http.StatusBadRequest, status, body)
	var rows int
	require.NoError(t, pgxQueryRow(t, b.srv.DSN(b.pool.Name), `SELECT count(*) FROM users`).Scan(&rows))
	require.Zero(t, rows, "the panicking handler's insert was rolled back")
	status, body, err = do("GET", b.url+"/v1/users", b.keys[0], "")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, status, body)
}

// TestIsUUID: only a tenant id in the catalog's own text form is ever
// written into a pooled request's SQL.
func TestIsUUID(t *testing.T) {
	t.Parallel()
	for s, want := range map[string]bool{
		"0b7f1c9e-3d2a-4c5b-9e8f-1a2b3c4d5e6f":     true,
		"00000000-0000-0000-0000-000000000000":     true,
		"0B7F1C9E-3D2A-4C5B-9E8F-1A2B3C4D5E6F":     false, // upper case is not the catalog's text
		"0b7f1c9e3d2a4c5b9e8f1a2b3c4d5e6f":         false,
		"0b7f1c9e-3d2a-4c5b-9e8f-1a2b3c4d5e6":      false,
		"0b7f1c9e-3d2a-4c5b-9e8f-1a2b3c4d5e6f0":    false,
		"0b7f1c9e-3d2a-4c5b-9e8f-1a2b3c4d5e6'":     false,
		"0b7f1c9e-3d2a-4c5b-9e8f'-1a2b3c4d5e6":     false,
		"x'), set_config('tenantplane.tenant_id',": false,
		"": false,
	} {
		require.Equal(t, want, isUUID(s), "%q", s)
	}
}
