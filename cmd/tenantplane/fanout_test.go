package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/controlplane"
	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/migrations"
)

// recordedRuns serves the given answers to GET /admin/v1/migrations/runs/7,
// one per call, the last one forever after.
func recordedRuns(t *testing.T, answers ...string) string {
	t.Helper()
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/admin/v1/migrations/runs/7" || r.Header.Get("Authorization") != "Bearer "+testToken {
			http.Error(w, "unexpected request", http.StatusTeapot)
			return
		}
		i := min(int(calls.Add(1))-1, len(answers)-1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, answers[i])
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestWatchEndsWithTheRunsOutcome(t *testing.T) {
	t.Parallel()
	running := `{"id": 7, "state": "running", "target_version": 3, "reason": "", "counts": {"total": 4, "pending": 4}}`
	halfway := `{"id": 7, "state": "running", "target_version": 3, "counts": {"total": 4, "pending": 1, "running": 1, "done": 2}}`
	halted := `{"id": 7, "state": "halted", "target_version": 3, "reason": "canary tenant acme failed: migration 3: boom",
		"counts": {"total": 4, "pending": 3, "failed": 1},
		"failed": [{"slug": "acme", "server": "pg-1", "canary": true, "state": "failed", "from_version": 2, "version": 2,
		            "attempts": 1, "error": "migration 3: column \"x\" does not exist (line 2) [SQLSTATE 42703]"}]}`
	url := recordedRuns(t, running, halfway, halted)
	stdout, _, err := runCLI(t, "", "fanout", "status", "7", "--watch", "--interval", "5ms", "--admin-url", url, "--token", testToken)
	require.Error(t, err)
	require.Equal(t, `run 7 halted: canary tenant acme failed: migration 3: boom; fix the failed tenants listed above, then: tenantplane fanout resume 7`, err.Error())
	require.Contains(t, stdout, "run 7 running · done 0 · failed 0 · running 0 · pending 4\n")
	require.Contains(t, stdout, "run 7 halted · done 0 · failed 1 · running 0 · pending 3")
	require.Contains(t, stdout, "Run 7 is halted: 0 done, 1 failed, 0 skipped, 3 pending of 4")
	require.Contains(t, stdout, "acme (canary)  pg-1    failed  2     2        1         migration 3: column \"x\" does not exist (line 2) [SQLSTATE 42703]")
	require.NotContains(t, stdout, "\r", "not a terminal: plain lines")

	done := `{"id": 7, "state": "done", "target_version": 3, "counts": {"total": 4, "done": 4}}`
	stdout, _, err = runCLI(t, "", "fanout", "status", "7", "--watch", "--interval", "5ms", "--admin-url", recordedRuns(t, running, done), "--token", testToken)
	require.NoError(t, err)
	require.Contains(t, stdout, "Run 7 is done: 4 done, 0 failed, 0 skipped, 0 pending of 4")

	stdout, _, err = runCLI(t, "", "fanout", "status", "7", "--watch", "--json", "--interval", "5ms", "--admin-url", recordedRuns(t, running, done), "--token", testToken)
	require.NoError(t, err)
	var final map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &final), "--json --watch prints the final answer only")
	require.Equal(t, "done", final["state"])
}

// fanoutApp runs the real App on port 0 with env, until stop or the test's end.
func fanoutApp(t *testing.T, env map[string]string) (adminURL string, stop func()) {
	t.Helper()
	full := map[string]string{"TENANTPLANE_API_ADDR": "127.0.0.1:0", "TENANTPLANE_ADMIN_ADDR": "127.0.0.1:0", "TENANTPLANE_ADMIN_TOKEN": testToken}
	for k, v := range env {
		full[k] = v
	}
	cfg, err := controlplane.ConfigFromEnv(func(k string) string { return full[k] })
	require.NoError(t, err)
	ctx := context.Background()
	app, err := controlplane.New(ctx, cfg, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	require.NoError(t, err)
	require.NoError(t, app.Start(ctx))
	stop = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, app.Stop(ctx))
	}
	t.Cleanup(stop)
	return "http://" + app.AdminAddr(), stop
}

// TestFanoutCommands drives a run from the CLI against the real admin API:
// three tenants, a new migration, start --watch, then the status commands.
func TestFanoutCommands(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	src := migrations.Embedded().FS()
	entries, err := fs.ReadDir(src, ".")
	require.NoError(t, err)
	for _, e := range entries {
		body, err := fs.ReadFile(src, e.Name())
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, e.Name()), body, 0o644))
	}
	env := map[string]string{"DATABASE_URL": pgtest.NewDB(t), "TENANTPLANE_SECRET_KEY": catalog.NewKey(), "TENANTPLANE_TENANT_MIGRATIONS": dir}
	admin, stop := fanoutApp(t, env)
	cli := func(args ...string) (string, error) {
		t.Helper()
		stdout, stderr, err := runCLI(t, "", append(args, "--admin-url", admin, "--token", testToken)...)
		return stdout + stderr, err
	}
	tenantServer := pgtest.NewServer(t)
	_, err = cli("servers", "add", "pg-1", "--dsn", tenantServer.ManagedDSN(t, "postgres"))
	require.NoError(t, err)
	for _, slug := range []string{"acme", "globex", "initech"} {
		_, err := cli("tenants", "create", slug, "--name", slug, "--plan", "pro", "--wait")
		require.NoError(t, err)
	}

	// A new version of the tenant schema, deployed.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "000003_users_locale.up.sql"), []byte("ALTER TABLE users ADD COLUMN locale text;"), 0o644))
	stop()
	admin, _ = fanoutApp(t, env)

	out, err := cli("migrations", "status")
	require.NoError(t, err)
	require.Contains(t, out, "Newest tenant schema version: 3")
	require.Contains(t, out, "Behind the newest version (3):")

	out, err = cli("fanout", "start", "--concurrency", "2", "--canary", "1", "--watch", "--interval", "20ms")
	require.NoError(t, err, out)
	require.Contains(t, out, "Started run 1: 3 tenants to version 3 (concurrency 2, per server 2, canary 1, max failures 0).")
	require.Contains(t, out, "Run 1 is done: 3 done, 0 failed, 0 skipped, 0 pending of 3")

	out, err = cli("fanout", "status", "1")
	require.NoError(t, err)
	require.Contains(t, out, "STATE:     done")
	require.Contains(t, out, "TENANTS:   3: done 3, failed 0, running 0, pending 0, skipped 0")
	out, err = cli("fanout", "list")
	require.NoError(t, err)
	require.Equal(t, []string{"1", "done", "3", "3", "3", "0", "0"}, strings.Fields(strings.Split(out, "\n")[1])[:7])
	out, err = cli("fanout", "tenants", "1", "--state", "done")
	require.NoError(t, err)
	require.Len(t, strings.Split(strings.TrimSpace(out), "\n"), 4, out)
	require.Contains(t, out, "(canary)")

	out, err = cli("migrations", "status")
	require.NoError(t, err)
	require.Contains(t, out, "VERSION  TENANTS\n3        3\n")
	require.Contains(t, out, "Every tenant database is at the newest version, clean, as the catalog says.")

	_, err = cli("fanout", "pause", "1")
	require.ErrorContains(t, err, "run 1 is done; pause needs it to be running (conflict, HTTP 409)")
	_, err = cli("migrations", "force", "acme", "2")
	require.ErrorContains(t, err, "schema is clean at version 3: force only clears the dirty flag")
	_, err = cli("fanout", "start", "--concurrency", "-1")
	require.ErrorContains(t, err, "--concurrency must not be negative")
	out, err = cli("fanout", "start", "--tenants", "acme")
	require.NoError(t, err)
	require.Contains(t, out, fmt.Sprintf("Started run 2: %d tenants to version 3", 1))
}
