package controlplane

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgcluster"
	"github.com/tenantplane/tenantplane/provisioner"
)

// DevOptions configures Dev.
type DevOptions struct {
	// Dir holds the private cluster and the generated secrets. Default ".data".
	Dir string
	// Getenv reads the environment. Default os.Getenv.
	Getenv func(string) string
	// Logger receives the app's logs. Default slog.Default().
	Logger *slog.Logger
	// Out receives the banner with the URLs and the admin token. Default os.Stdout.
	Out io.Writer
}

// devServerName is the name the private cluster is registered under as the
// first tenant server.
const devServerName = "local"

// Dev runs tenantplane on its embedded default: with no DATABASE_URL it starts
// a private PostgreSQL cluster under opts.Dir (initdb on first run, reused
// after), uses it as the catalog and registers it as the first tenant server.
// A secret key is generated once and kept in opts.Dir; the admin token is
// TENANTPLANE_ADMIN_TOKEN or a fresh one, printed. It serves until ctx ends,
// then stops the app and the cluster.
func Dev(ctx context.Context, opts DevOptions) (err error) {
	if opts.Dir == "" {
		opts.Dir = ".data"
	}
	if opts.Getenv == nil {
		opts.Getenv = os.Getenv
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Out == nil {
		opts.Out = os.Stdout
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("dev data directory: %w", err)
	}

	env := map[string]string{}
	var cluster *pgcluster.Cluster
	if opts.Getenv("DATABASE_URL") == "" {
		if cluster, env["DATABASE_URL"], err = startDevCluster(ctx, dir); err != nil {
			return err
		}
		defer func() {
			stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			err = errors.Join(err, cluster.Stop(stopCtx))
		}()
	}
	if opts.Getenv("TENANTPLANE_SECRET_KEY") == "" {
		if env["TENANTPLANE_SECRET_KEY"], err = readOrCreate(filepath.Join(dir, "secret.key"), catalog.NewKey); err != nil {
			return err
		}
	}
	if opts.Getenv("TENANTPLANE_ADMIN_TOKEN") == "" {
		env["TENANTPLANE_ADMIN_TOKEN"] = randomHex(24)
	}
	if opts.Getenv("TENANTPLANE_BACKUP_DIR") == "" {
		env["TENANTPLANE_BACKUP_DIR"] = filepath.Join(dir, "backups") // backups and exports work out of the box
	}
	cfg, err := ConfigFromEnv(func(k string) string {
		if v, ok := env[k]; ok {
			return v
		}
		return opts.Getenv(k)
	})
	if err != nil {
		return err
	}

	app, err := New(ctx, cfg, opts.Logger)
	if err != nil {
		return err
	}
	if err := app.Start(ctx); err != nil {
		app.store.Close()
		return err
	}
	if cluster != nil {
		if err := registerDevServer(ctx, app, cluster, dir); err != nil {
			return errors.Join(err, app.Stop(context.WithoutCancel(ctx)))
		}
	}
	printBanner(opts.Out, app, cfg, env)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-app.serveErr:
	}
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	return errors.Join(runErr, app.Stop(stopCtx))
}

// startDevCluster starts the private cluster and makes sure its catalog
// database exists; it returns the catalog DSN.
func startDevCluster(ctx context.Context, dir string) (*pgcluster.Cluster, string, error) {
	password, err := readOrCreate(filepath.Join(dir, "postgres.password"), func() string { return randomHex(16) })
	if err != nil {
		return nil, "", err
	}
	cluster, err := pgcluster.New(pgcluster.Config{Dir: filepath.Join(dir, "postgres"), Password: password})
	if err != nil {
		return nil, "", err
	}
	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := cluster.Start(startCtx); err != nil {
		return nil, "", err
	}
	if err := ensureDatabase(startCtx, cluster.DSN("postgres"), "tenantplane"); err != nil {
		_ = cluster.Stop(context.WithoutCancel(ctx))
		return nil, "", err
	}
	return cluster, cluster.DSN("tenantplane"), nil
}

func ensureDatabase(ctx context.Context, adminDSN, name string) error {
	conn, err := pgx.Connect(ctx, adminDSN)
	if err != nil {
		return fmt.Errorf("connecting to the private cluster: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	return err
}

// devAdminRole is the role the private cluster is registered with as a
// tenant server: LOGIN CREATEDB CREATEROLE and nothing more, as a managed
// PostgreSQL gives, so that `make run` runs as users do.
const devAdminRole = "tenantplane_admin"

// registerDevServer registers the private cluster as the first tenant server,
// as devAdminRole, or updates its DSN when the cluster came back on another
// port. A cluster registered by an older version with its superuser stays
// so: its tenants' tables belong to the superuser, which another role could
// not migrate.
func registerDevServer(ctx context.Context, app *App, cluster *pgcluster.Cluster, dir string) error {
	dsn, err := devAdminDSN(ctx, cluster, dir)
	if err != nil {
		return err
	}
	current, err := app.store.ServerDSN(ctx, devServerName)
	switch {
	case errors.Is(err, catalog.ErrNotFound):
		if _, err = app.prov.RegisterServer(ctx, provisioner.ServerSpec{Name: devServerName, DSN: dsn}, "dev"); err != nil {
			return err
		}
		// And a pool database, so that pooled plans (free) work at once.
		_, err = app.prov.CreatePool(ctx, devServerName, 1000, "dev")
		return err
	case err != nil:
		return err
	}
	if u, err := url.Parse(current); err == nil && u.User.Username() != devAdminRole {
		dsn = cluster.DSN("postgres")
	}
	if current != dsn {
		return app.store.UpdateServerDSN(ctx, devServerName, dsn, "dev")
	}
	return nil
}

// devAdminDSN makes sure devAdminRole exists with the password kept in dir,
// and returns a DSN connecting as it.
func devAdminDSN(ctx context.Context, cluster *pgcluster.Cluster, dir string) (string, error) {
	password, err := readOrCreate(filepath.Join(dir, "tenant-admin.password"), func() string { return randomHex(16) })
	if err != nil {
		return "", err
	}
	conn, err := pgx.Connect(ctx, cluster.DSN("postgres"))
	if err != nil {
		return "", fmt.Errorf("connecting to the private cluster: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, devAdminRole).Scan(&exists); err != nil {
		return "", err
	}
	verb := "CREATE"
	if exists {
		verb = "ALTER"
	}
	// A literal, not a parameter: utility statements take none. The password
	// is hex, so it needs no quoting beyond the quotes.
	if _, err := conn.Exec(ctx, verb+" ROLE "+devAdminRole+" LOGIN CREATEDB CREATEROLE NOSUPERUSER PASSWORD '"+password+"'"); err != nil {
		return "", fmt.Errorf("creating the tenant servers' admin role: %w", err)
	}
	u, err := url.Parse(cluster.DSN("postgres"))
	if err != nil {
		return "", err
	}
	u.User = url.UserPassword(devAdminRole, password)
	return u.String(), nil
}

func printBanner(w io.Writer, app *App, cfg Config, generated map[string]string) {
	token := "$TENANTPLANE_ADMIN_TOKEN"
	if _, ok := generated["TENANTPLANE_ADMIN_TOKEN"]; ok {
		token = cfg.AdminToken
	}
	fmt.Fprintf(w, `
tenantplane is running on its embedded default.

  tenant API   http://%s/v1
  admin API    http://%s/admin/v1
  admin token  %s

  try: curl -H "Authorization: Bearer %s" http://%s/admin/v1/servers

Ctrl-C stops the server and the private cluster.

`, hostPort(app.APIAddr()), app.AdminAddr(), token, token, app.AdminAddr())
}

// hostPort turns a wildcard listen address (":8080", "[::]:8080") into one a
// person can paste into a browser.
func hostPort(addr string) string {
	if strings.HasPrefix(addr, "[::]:") {
		return "localhost:" + strings.TrimPrefix(addr, "[::]:")
	}
	if strings.HasPrefix(addr, ":") || strings.HasPrefix(addr, "0.0.0.0:") {
		return "localhost:" + addr[strings.LastIndex(addr, ":")+1:]
	}
	return addr
}

// readOrCreate returns the trimmed content of path, creating it (mode 0600)
// with gen() when it does not exist.
func readOrCreate(path string, gen func() string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	v := gen()
	if err := os.WriteFile(path, []byte(v+"\n"), 0o600); err != nil {
		return "", err
	}
	return v, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
