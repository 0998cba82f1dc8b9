package controlplane

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgcluster"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

// fleet is a running App with tenant servers of its own.
type fleet struct {
	*testBundle
	servers map[string]*pgtest.Server
}

// setupFleet starts the App and registers n private clusters as tenant
// servers pg-1 ... pg-n.
func setupFleet(t testing.TB, n int, env map[string]string) *fleet {
	t.Helper()
	return setupFleetOpts(t, n, env, 0)
}

// setupFleetOpts is setupFleet with each server's connection budget (0: the default).
func setupFleetOpts(t testing.TB, n int, env map[string]string, connBudget int) *fleet {
	t.Helper()
	return setupFleetOn(t, "", n, env, connBudget)
}

// setupFleetOn is setupFleetOpts on a given catalog database ("" for a fresh one).
func setupFleetOn(t testing.TB, catalogDSN string, n int, env map[string]string, connBudget int) *fleet {
	t.Helper()
	f := &fleet{testBundle: setupEnv(t, catalogDSN, env), servers: map[string]*pgtest.Server{}}
	for i := 1; i <= n; i++ {
		srv := pgtest.NewServer(t)
		name := fmt.Sprintf("pg-%d", i)
		status, body := call(t, "POST", f.admin+"/admin/v1/servers", testToken, map[string]any{"name": name, "dsn": srv.ManagedDSN(t, "postgres"), "capacity": 100, "conn_budget": connBudget})
		require.Equal(t, http.StatusCreated, status, body)
		f.servers[name] = srv
	}
	return f
}

func (f *fleet) createTenant(t testing.TB, slug string, wait bool) (int, map[string]any) {
	t.Helper()
	return call(t, "POST", f.admin+"/admin/v1/tenants?wait="+fmt.Sprint(wait), testToken, map[string]any{"slug": slug, "name": "Tenant " + slug, "plan": "pro"})
}

// connect opens a connection to a database of a server with the given DSN user.
func connect(t testing.TB, dsn string) (*pgx.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return pgx.Connect(ctx, dsn)
}

func query[T any](t testing.TB, dsn, sql string, args ...any) T {
	t.Helper()
	conn, err := connect(t, dsn)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var v T
	require.NoError(t, conn.QueryRow(context.Background(), sql, args...).Scan(&v))
	return v
}

// dbAndRoleExist says whether a database and a role of that name exist on a server.
func dbAndRoleExist(t testing.TB, srv *pgtest.Server, name string) (db, role bool) {
	t.Helper()
	db = query[bool](t, srv.DSN("postgres"), `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name)
	role = query[bool](t, srv.DSN("postgres"), `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, name)
	return db, role
}

// tenantNames returns the tenant databases (t_...) on a server.
func tenantNames(t testing.TB, srv *pgtest.Server) (dbs, roles []string) {
	t.Helper()
	conn, err := connect(t, srv.DSN("postgres"))
	require.NoError(t, err)
	defer conn.Close(context.Background())
	rows, err := conn.Query(context.Background(), `SELECT datname FROM pg_database WHERE datname LIKE 't\_%' ORDER BY 1`)
	require.NoError(t, err)
	dbs, err = pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	rows, err = conn.Query(context.Background(), `SELECT rolname FROM pg_roles WHERE rolname LIKE 't\_%' ORDER BY 1`)
	require.NoError(t, err)
	roles, err = pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return dbs, roles
}

func TestCreateTenantsConcurrentlyAcrossServers(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 2, nil)

	const n = 30
	var wg sync.WaitGroup
	statuses := make([]int, n)
	bodies := make([]map[string]any, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i], bodies[i] = f.createTenant(t, fmt.Sprintf("tenant-%02d", i), true)
		}()
	}
	wg.Wait()
	perServer := map[string]int{}
	for i := range n {
		require.Equal(t, http.StatusCreated, statuses[i], bodies[i])
		require.Equal(t, "active", bodies[i]["state"])
		perServer[bodies[i]["server"].(string)]++
	}
	require.Len(t, perServer, 2, "placement spreads tenants over both servers")
	require.InDelta(t, perServer["pg-1"], perServer["pg-2"], 2, "least loaded first: %v", perServer)

	catalogDSN := f.app.cfg.DatabaseURL
	for i := range n {
		body := bodies[i]
		srv := f.servers[body["server"].(string)]
		db := body["database"].(string)
		// The database is on the server the catalog says, owned by the
		// server's admin role: the tenant role only connects.
		owner := query[string](t, srv.DSN("postgres"), `SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1`, db)
		require.Equal(t, pgtest.ManagedRole, owner)
		other := f.servers[map[string]string{"pg-1": "pg-2", "pg-2": "pg-1"}[body["server"].(string)]]
		inOther, _ := dbAndRoleExist(t, other, db)
		require.False(t, inOther)
		// PUBLIC has no CONNECT on it.
		require.False(t, query[bool](t, srv.DSN("postgres"), `SELECT has_database_privilege('public', $1, 'CONNECT')`, db))
		require.EqualValues(t, 2, body["schema_version"])
	}

	// Tenant A's role cannot connect to tenant B's database, even on the same server.
	a, b := sameServerPair(t, bodies)
	srv := f.servers[a["server"].(string)]
	pwA := tenantPassword(t, f, a["id"].(string))
	_, err := connect(t, dsnAs(t, srv, a["database"].(string), pwA, b["database"].(string)))
	require.ErrorContains(t, err, "permission denied for database")
	conn, err := connect(t, dsnAs(t, srv, a["database"].(string), pwA, a["database"].(string)))
	require.NoError(t, err, "a tenant's own role connects to its own database")
	var users int
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT count(*) FROM users`).Scan(&users), "and reads its tables")
	conn.Close(context.Background())

	// The catalog holds no plaintext password.
	for i := range n {
		pw := tenantPassword(t, f, bodies[i]["id"].(string))
		leaked := query[bool](t, catalogDSN, `SELECT EXISTS (SELECT 1 FROM tenants WHERE position(convert_to($1, 'UTF8') in coalesce(credentials_sealed, '')) > 0)`, pw)
		require.False(t, leaked)
		require.NotContains(t, f.logs.String(), pw)
	}
}

func sameServerPair(t testing.TB, bodies []map[string]any) (map[string]any, map[string]any) {
	t.Helper()
	for _, a := range bodies {
		for _, b := range bodies {
			if a["id"] != b["id"] && a["server"] == b["server"] {
				return a, b
			}
		}
	}
	t.Fatal("no two tenants on one server")
	return nil, nil
}

func tenantPassword(t testing.TB, f *fleet, id string) string {
	t.Helper()
	_, pw, err := f.app.store.TenantCredentials(context.Background(), id)
	require.NoError(t, err)
	return pw
}

func TestCreateTenantIsIdempotentAndValidates(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 2, nil)

	status, first := f.createTenant(t, "acme", true)
	require.Equal(t, http.StatusCreated, status, first)
	status, again := f.createTenant(t, "acme", true)
	require.Equal(t, http.StatusCreated, status, again)
	require.Equal(t, first["id"], again["id"], "the same request gives the same tenant")
	status, again = f.createTenant(t, "acme", false)
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, first["id"], again["id"])

	status, body := call(t, "POST", f.admin+"/admin/v1/tenants", testToken, map[string]any{"slug": "acme", "name": "Someone else", "plan": "pro"})
	require.Equal(t, http.StatusConflict, status)
	require.Equal(t, "conflict", errorCode(t, body))

	before := map[string][2][]string{}
	for name, srv := range f.servers {
		dbs, roles := tenantNames(t, srv)
		before[name] = [2][]string{dbs, roles}
	}
	bad := []map[string]any{
		{"slug": "a", "name": "x", "plan": "pro"},
		{"slug": "Bad_Slug", "name": "x", "plan": "pro"},
		{"slug": `x"; drop database postgres; --`, "name": "x", "plan": "pro"},
		{"slug": "good-slug", "name": "x", "plan": "platinum"},
		{"slug": "good-slug", "name": "x", "plan": "pro", "server": "nowhere"},
		{"slug": "good-slug", "name": "x"},
		{"slug": "good-slug", "name": "x", "plan": "pro", "sever": "pg-2"}, // a misspelt field is not dropped
	}
	for _, b := range bad {
		status, body := call(t, "POST", f.admin+"/admin/v1/tenants", testToken, b)
		require.Equal(t, http.StatusBadRequest, status, "%v: %v", b, body)
		require.Equal(t, "invalid", errorCode(t, body))
	}
	_, body = call(t, "POST", f.admin+"/admin/v1/tenants", testToken, map[string]any{"slug": "good-slug", "name": "x", "plan": "platinum"})
	require.Contains(t, body["error"].(map[string]any)["message"], `unknown plan "platinum"`)
	_, body = call(t, "POST", f.admin+"/admin/v1/tenants", testToken, map[string]any{"slug": "good-slug", "name": "x", "plan": "pro", "sever": "pg-2"})
	require.Contains(t, body["error"].(map[string]any)["message"], `unknown field "sever"`)
	status, body = call(t, "POST", f.admin+"/admin/v1/tenants", testToken, nil)
	require.Equal(t, http.StatusBadRequest, status)
	require.Contains(t, body["error"].(map[string]any)["message"], "request body is empty")

	// Nothing was made anywhere: no catalog row, no role, no database.
	status, body = call(t, "GET", f.admin+"/admin/v1/tenants", testToken, nil)
	require.Equal(t, http.StatusOK, status)
	require.Len(t, body["tenants"], 1)
	for name, srv := range f.servers {
		dbs, roles := tenantNames(t, srv)
		require.Equal(t, before[name], [2][]string{dbs, roles})
	}
	require.True(t, query[bool](t, f.servers["pg-1"].DSN("postgres"), `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'postgres')`))
}

func TestTenantLifecycle(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 1, map[string]string{"TENANTPLANE_DELETE_GRACE": "0s"})
	srv := f.servers["pg-1"]

	status, body := f.createTenant(t, "lifecycle", true)
	require.Equal(t, http.StatusCreated, status, body)
	db := body["database"].(string)

	status, body = call(t, "POST", f.admin+"/admin/v1/tenants/lifecycle/suspend", testToken, map[string]any{"reason": "unpaid"})
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, "suspended", body["state"])
	status, body = call(t, "POST", f.admin+"/admin/v1/tenants/lifecycle/suspend", testToken, nil)
	require.Equal(t, http.StatusConflict, status)
	require.Contains(t, body["error"].(map[string]any)["message"], "tenant is suspended")
	hasDB, hasRole := dbAndRoleExist(t, srv, db)
	require.True(t, hasDB && hasRole, "a suspended tenant keeps its data")

	status, body = call(t, "POST", f.admin+"/admin/v1/tenants/lifecycle/resume", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, "active", body["state"])

	// Delete with a grace of 0: the database and role are dropped.
	status, body = call(t, "DELETE", f.admin+"/admin/v1/tenants/lifecycle", testToken, nil)
	require.Equal(t, http.StatusAccepted, status, body)
	require.Equal(t, "deleting", body["state"])
	require.Eventually(t, func() bool {
		_, body := call(t, "GET", f.admin+"/admin/v1/tenants/lifecycle", testToken, nil)
		return body["state"] == "deleted"
	}, 20*time.Second, 50*time.Millisecond)
	hasDB, hasRole = dbAndRoleExist(t, srv, db)
	require.False(t, hasDB)
	require.False(t, hasRole)
	status, _ = call(t, "POST", f.admin+"/admin/v1/tenants/lifecycle/restore", testToken, nil)
	require.Equal(t, http.StatusConflict, status, "a dropped tenant cannot be restored")

	// Every transition is in the audit log, in order.
	events, err := f.app.store.ListAudit(context.Background(), auditFilterFor(t, f, "lifecycle"))
	require.NoError(t, err)
	var trail []string
	for _, e := range events {
		trail = append(trail, e.FromState+"->"+e.ToState)
	}
	require.Equal(t, []string{"->provisioning", "provisioning->active", "active->suspended", "suspended->active", "active->deleting", "deleting->deleted"}, trail)
	require.Equal(t, "unpaid", events[2].Reason)
}

func TestDeleteThenRestoreWithinGrace(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 1, map[string]string{"TENANTPLANE_DELETE_GRACE": "1h"})
	status, body := f.createTenant(t, "keepme", true)
	require.Equal(t, http.StatusCreated, status, body)
	status, body = call(t, "POST", f.admin+"/admin/v1/tenants/keepme/suspend", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)

	status, body = call(t, "DELETE", f.admin+"/admin/v1/tenants/keepme", testToken, nil)
	require.Equal(t, http.StatusAccepted, status, body)
	require.Equal(t, "deleting", body["state"])
	deleteAfter, err := time.Parse(time.RFC3339Nano, body["delete_after"].(string))
	require.NoError(t, err)
	require.WithinDuration(t, time.Now().Add(time.Hour), deleteAfter, time.Minute)

	status, body = call(t, "POST", f.admin+"/admin/v1/tenants/keepme/restore", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, "suspended", body["state"], "restore returns the tenant to the state it was deleted from")
	require.Nil(t, body["delete_after"])
	hasDB, hasRole := dbAndRoleExist(t, f.servers["pg-1"], body["database"].(string))
	require.True(t, hasDB && hasRole)
}

func TestServerDownFailsThenRetrySucceeds(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 1, nil)
	srv := f.servers["pg-1"]
	srv.Stop(t)

	start := time.Now()
	status, body := f.createTenant(t, "unlucky", true)
	require.Equal(t, http.StatusServiceUnavailable, status, body)
	msg := body["error"].(map[string]any)["message"].(string)
	require.Contains(t, msg, "failed to provision")
	require.Contains(t, msg, "pg-1")
	require.Less(t, time.Since(start), 30*time.Second)

	_, body = call(t, "GET", f.admin+"/admin/v1/tenants/unlucky", testToken, nil)
	require.Equal(t, "failed", body["state"])
	require.Contains(t, body["last_error"], "connection refused")

	srv.Start(t)
	status, body = call(t, "POST", f.admin+"/admin/v1/tenants/unlucky/retry", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, "provisioning", body["state"])
	require.Eventually(t, func() bool {
		_, body := call(t, "GET", f.admin+"/admin/v1/tenants/unlucky", testToken, nil)
		return body["state"] == "active"
	}, 30*time.Second, 50*time.Millisecond)
	_, body = call(t, "GET", f.admin+"/admin/v1/tenants/unlucky", testToken, nil)
	require.Empty(t, body["last_error"])
}

// dsnAs is a DSN for a database of srv as another user.
func dsnAs(t testing.TB, srv *pgtest.Server, user, password, database string) string {
	t.Helper()
	return withUser(t, srv.DSN(database), user, password)
}

func auditFilterFor(t testing.TB, f *fleet, slug string) catalog.AuditFilter {
	t.Helper()
	tenant, err := f.app.store.GetTenant(context.Background(), slug)
	require.NoError(t, err)
	return catalog.AuditFilter{TenantID: tenant.ID}
}

func TestDeleteKeepsADumpWhenAsked(t *testing.T) {
	t.Parallel()
	archive, err := os.MkdirTemp("", "tenantplane-archive-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(archive) })
	f := setupFleet(t, 1, map[string]string{"TENANTPLANE_DELETE_GRACE": "0s", "TENANTPLANE_ARCHIVE_DIR": archive})
	_, key := f.tenantWithKey(t, "archived", "pro", "")
	status, body := call(t, "POST", f.api+"/v1/users", key, map[string]any{"email": "kept@example.com"})
	require.Equal(t, http.StatusCreated, status, body)

	status, _ = call(t, "DELETE", f.admin+"/admin/v1/tenants/archived", testToken, nil)
	require.Equal(t, http.StatusAccepted, status)
	require.Eventually(t, func() bool {
		_, body := call(t, "GET", f.admin+"/admin/v1/tenants/archived", testToken, nil)
		return body["state"] == "deleted"
	}, 30*time.Second, 50*time.Millisecond)

	dumps, err := filepath.Glob(filepath.Join(archive, "archived-*.dump"))
	require.NoError(t, err)
	require.Len(t, dumps, 1)
	bin, err := pgcluster.FindBinDir()
	require.NoError(t, err)
	restored, err := exec.Command(filepath.Join(bin, "pg_restore"), "--data-only", "--file=-", dumps[0]).Output()
	require.NoError(t, err, "a pg_dump archive pg_restore can read")
	require.True(t, strings.Contains(string(restored), "kept@example.com"), "the archive holds the tenant's rows")
}

// A tenant server that cannot be reached makes the reconciler answer 503
// naming that server, never its DSN or password.
func TestOrphansWithAServerDownAnswer503(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 1, nil)
	srv := pgtest.NewServer(t)
	password := "pw-" + randomHex(12)
	role := createRole(t, srv.DSN("postgres"), "LOGIN CREATEDB CREATEROLE PASSWORD '"+password+"'")
	dsn := withUser(t, srv.DSN("postgres"), role, password)
	status, body := call(t, "POST", f.admin+"/admin/v1/servers", testToken, map[string]any{"name": "pg-down", "dsn": dsn})
	require.Equal(t, http.StatusCreated, status, body)

	status, body = call(t, "GET", f.admin+"/admin/v1/orphans", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	srv.Stop(t)

	for _, method := range []string{"GET", "DELETE"} {
		status, raw, err := try(method, f.admin+"/admin/v1/orphans", testToken, "")
		require.NoError(t, err)
		require.Equal(t, http.StatusServiceUnavailable, status, "%s: %s", method, raw)
		var out map[string]any
		require.NoError(t, json.Unmarshal([]byte(raw), &out), raw)
		require.Equal(t, "unavailable", errorCode(t, out))
		msg := out["error"].(map[string]any)["message"].(string)
		t.Logf("%s /admin/v1/orphans: %s", method, msg)
		// The first call may meet a pooled connection the stop ended, the
		// next a refused one: either way the server could not be reached.
		require.Contains(t, msg, `server "pg-down" could not be reached: `)
		require.NotContains(t, raw, password)
		require.NotContains(t, raw, role, "the DSN's user is not in the answer")
		require.NotContains(t, raw, strconv.Itoa(srv.Port()), "the DSN's address is not in the answer")
	}
	require.NotContains(t, f.logs.String(), password)
}

// chunked sends body with the admin token and no Content-Length: net/http
// cannot know the length of a reader that is not a bytes or strings reader,
// so it sends the body chunked.
func chunked(t *testing.T, method, url, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, io.MultiReader(strings.NewReader(body)))
	require.NoError(t, err)
	require.EqualValues(t, 0, req.ContentLength, "the length is unknown")
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var out map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	return resp.StatusCode, out
}

// rawRequest writes request as is to the server at base (http://host:port)
// and returns the answer's status: for framings net/http's client does not
// send, such as an empty chunked body.
func rawRequest(t *testing.T, base, request string) int {
	t.Helper()
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(base, "http://"), 5*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(20*time.Second)))
	_, err = io.WriteString(conn, request)
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	defer resp.Body.Close()
	return resp.StatusCode
}

// The lifecycle calls read their optional {"reason"} body whatever its
// framing, so a reason sent chunked reaches the audit log.
func TestLifecycleReasonSentChunked(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 1, nil)
	status, body := f.createTenant(t, "chunky", true)
	require.Equal(t, http.StatusCreated, status, body)
	base := f.admin + "/admin/v1/tenants/chunky"
	reasons := func() map[string]string {
		t.Helper()
		events, err := f.app.store.ListAudit(context.Background(), auditFilterFor(t, f, "chunky"))
		require.NoError(t, err)
		out := map[string]string{}
		for _, e := range events {
			out[e.Action] = e.Reason
		}
		return out
	}
	state := func() string {
		t.Helper()
		_, body := call(t, "GET", base, testToken, nil)
		return body["state"].(string)
	}

	status, body = chunked(t, "POST", base+"/suspend", `{"reason": "chunked: invoice 42 unpaid"}`)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, "suspended", body["state"])
	require.Equal(t, "chunked: invoice 42 unpaid", reasons()["tenant.suspended"])

	// An empty chunked body is no body: no reason.
	status = rawRequest(t, f.admin, "POST /admin/v1/tenants/chunky/resume HTTP/1.1\r\nHost: admin\r\n"+
		"Authorization: Bearer "+testToken+"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, "active", state())

	// Malformed JSON and unknown fields are refused, chunked or not, and change nothing.
	for _, bad := range []string{`{"reason": `, `{"reasn": "typo"}`, `{"reason": "a"} {"reason": "b"}`, `"unpaid"`} {
		status, body = chunked(t, "POST", base+"/suspend", bad)
		require.Equal(t, http.StatusBadRequest, status, "%s: %v", bad, body)
		require.Equal(t, "invalid", errorCode(t, body))
		status, raw, err := try("POST", base+"/suspend", testToken, bad)
		require.NoError(t, err)
		require.Equal(t, http.StatusBadRequest, status, "%s with a Content-Length: %s", bad, raw)
		require.Equal(t, "active", state(), "a refused call changes nothing")
	}
	status, body = chunked(t, "POST", base+"/suspend", `{"reasn": "typo"}`)
	require.Equal(t, http.StatusBadRequest, status)
	require.Contains(t, body["error"].(map[string]any)["message"], `unknown field "reasn"`)

	status, body = chunked(t, "DELETE", base, `{"reason": "chunked: customer left"}`)
	require.Equal(t, http.StatusAccepted, status, body)
	require.Equal(t, "deleting", body["state"])
	got := reasons()
	require.Equal(t, "", got["tenant.resumed"])
	require.Equal(t, "chunked: customer left", got["tenant.deleted"])
}
