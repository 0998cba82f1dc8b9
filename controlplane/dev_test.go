package controlplane

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestDevEmbeddedDefault runs `tenantplane dev` twice on one data directory:
// the first start makes the cluster (initdb included) and registers it as the
// first tenant server; the second reuses both. Each serves /healthz and the
// admin API with the token it printed.
func TestDevEmbeddedDefault(t *testing.T) {
	t.Parallel()
	// Not t.TempDir(): the postgres user must be able to enter the directory.
	dir, err := os.MkdirTemp("", "tenantplane-dev-test-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	t.Cleanup(func() { _ = os.RemoveAll(dir) })

	env := map[string]string{"TENANTPLANE_API_ADDR": "127.0.0.1:0", "TENANTPLANE_ADMIN_ADDR": "127.0.0.1:0"}
	for run := 1; run <= 2; run++ {
		start := time.Now()
		ctx, cancel := context.WithCancel(context.Background())
		out := &syncWriter{}
		done := make(chan error, 1)
		go func() {
			done <- Dev(ctx, DevOptions{Dir: filepath.Join(dir, ".data"), Getenv: envOf(env), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Out: out})
		}()

		banner := regexp.MustCompile(`admin API +http://(\S+)/admin/v1\s+admin token +(\S+)`)
		var m []string
		require.Eventually(t, func() bool {
			m = banner.FindStringSubmatch(out.String())
			return m != nil
		}, 60*time.Second, 20*time.Millisecond, "dev never printed its banner")
		admin, token := "http://"+m[1], m[2]
		status, _ := call(t, "GET", admin+"/healthz", "", nil)
		require.Equal(t, http.StatusOK, status)
		t.Logf("run %d: serving after %v", run, time.Since(start).Round(time.Millisecond))

		status, body := call(t, "GET", admin+"/admin/v1/servers", token, nil)
		require.Equal(t, http.StatusOK, status, body)
		servers := body["servers"].([]any)
		require.Len(t, servers, 1, "registered once, and reused on the next start")
		require.Equal(t, devServerName, servers[0].(map[string]any)["name"])
		// Registered as a managed PostgreSQL would be: a CREATEDB CREATEROLE role, not the superuser.
		require.Contains(t, servers[0].(map[string]any)["dsn"], "//"+devAdminRole+"@")

		if run == 1 {
			// The embedded default provisions tenants on its own cluster.
			status, body = call(t, "POST", admin+"/admin/v1/tenants?wait=true", token, map[string]any{"slug": "dev-tenant", "name": "Dev", "plan": "basic"})
			require.Equal(t, http.StatusCreated, status, body)
		} else {
			status, body = call(t, "GET", admin+"/admin/v1/tenants/dev-tenant", token, nil)
			require.Equal(t, http.StatusOK, status, body)
			require.Equal(t, "active", body["state"], "the catalog survives a restart")
		}
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(60 * time.Second):
			t.Fatal("dev did not stop")
		}
		// Stopped means stopped: the admin address answers no more.
		_, err := http.Get(admin + "/healthz")
		require.Error(t, err)
	}
	require.FileExists(t, filepath.Join(dir, ".data", "secret.key"))
	st, err := os.Stat(filepath.Join(dir, ".data", "secret.key"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())
}
