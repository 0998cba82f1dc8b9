package pgcluster_test

import (
	"context"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/internal/pgcluster"
)

const testPassword = "s3cret 'quoted' \\ pass"

var testSettings = map[string]string{"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}

// testDir returns a data directory path (not yet created) under os.TempDir():
// when the tests run as root the server runs as the postgres user, which
// cannot enter t.TempDir().
// It prefers tmpfs: on some disks creating the thousand files of a data
// directory takes a second.
func testDir(t *testing.T) string {
	t.Helper()
	base, err := os.MkdirTemp(fastTempDir(), "pgcluster-test-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(base, 0o755))
	t.Cleanup(func() { os.RemoveAll(base) })
	return filepath.Join(base, "data")
}

func fastTempDir() string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() && st.Mode().Perm()&0o777 == 0o777 {
		return "/dev/shm"
	}
	return os.TempDir()
}

// testCache is an init cache shared by the tests of this package, so that
// most of them copy a data directory instead of running initdb.
func testCache(t *testing.T, password string) string {
	t.Helper()
	binDir, err := pgcluster.FindBinDir()
	require.NoError(t, err)
	key, err := pgcluster.CacheKey(context.Background(), binDir, password)
	require.NoError(t, err)
	return filepath.Join(os.TempDir(), "tenantplane-pgcluster-test", "initdb-"+key)
}

// newCluster makes a Cluster that is stopped when the test ends.
func newCluster(t *testing.T, cfg pgcluster.Config) *pgcluster.Cluster {
	t.Helper()
	c, err := pgcluster.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		require.NoError(t, c.Stop(ctx))
	})
	return c
}

func cachedConfig(t *testing.T) pgcluster.Config {
	return pgcluster.Config{Dir: testDir(t), Password: testPassword, Settings: testSettings, InitCache: testCache(t, testPassword)}
}

func start(t *testing.T, c *pgcluster.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	require.NoError(t, c.Start(ctx))
}

func stop(t *testing.T, c *pgcluster.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, c.Stop(ctx))
}

func connect(t *testing.T, dsn string) (*pgx.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err == nil {
		t.Cleanup(func() { conn.Close(context.Background()) })
	}
	return conn, err
}

func queryString(t *testing.T, conn *pgx.Conn, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var s string
	require.NoError(t, conn.QueryRow(ctx, sql).Scan(&s))
	return s
}

func TestFreshDirStartConnectRestart(t *testing.T) {
	t.Parallel()
	dir := testDir(t)
	c := newCluster(t, pgcluster.Config{Dir: dir, Password: testPassword, Settings: testSettings})
	require.Zero(t, c.Port())

	start(t, c) // initdb
	port := c.Port()
	require.NotZero(t, port)
	require.FileExists(t, filepath.Join(dir, "PG_VERSION"))
	require.FileExists(t, filepath.Join(dir, "server.log"))

	conn, err := connect(t, c.DSN("postgres"))
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1", queryString(t, conn, "SHOW listen_addresses"))
	require.Equal(t, "off", queryString(t, conn, "SHOW fsync"))
	require.Equal(t, "UTF8", queryString(t, conn, "SHOW server_encoding"))

	wrong, err := url.Parse(c.DSN("postgres"))
	require.NoError(t, err)
	wrong.User = url.UserPassword("postgres", "wrong")
	_, err = connect(t, wrong.String())
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	require.Equal(t, "28P01", pgErr.Code) // invalid_password

	stop(t, c)
	_, err = connect(t, c.DSN("postgres"))
	require.Error(t, err)
	stop(t, c) // idempotent

	began := time.Now()
	start(t, c)
	t.Logf("restart took %s", time.Since(began))
	require.Equal(t, port, c.Port())
	_, err = connect(t, c.DSN("postgres"))
	require.NoError(t, err)
}

func TestFindBinDirEmptyEnvDir(t *testing.T) {
	// No t.Parallel: t.Setenv.
	t.Setenv(pgcluster.EnvBinDir, t.TempDir())
	_, err := pgcluster.FindBinDir()
	require.ErrorIs(t, err, pgcluster.ErrNoBinaries)
	require.Contains(t, err.Error(), "apt-get install postgresql")
	require.Contains(t, err.Error(), "TENANTPLANE_PG_BIN")

	_, err = pgcluster.New(pgcluster.Config{Dir: "x", Password: "x"})
	require.ErrorIs(t, err, pgcluster.ErrNoBinaries)
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	for name, cfg := range map[string]pgcluster.Config{
		"no dir":            {Password: "x"},
		"no password":       {Dir: "x"},
		"bad port":          {Dir: "x", Password: "x", Port: 70000},
		"reserved setting":  {Dir: "x", Password: "x", Settings: map[string]string{"listen_addresses": "*"}},
		"bad setting name":  {Dir: "x", Password: "x", Settings: map[string]string{"fsync = off\nport": "1"}},
		"bad setting value": {Dir: "x", Password: "x", Settings: map[string]string{"work_mem": "1MB\nport = 1"}},
		"bad bin dir":       {Dir: "x", Password: "x", BinDir: "/nonexistent"},
	} {
		_, err := pgcluster.New(cfg)
		require.Error(t, err, name)
	}
}

func TestRecordedPortTakenPicksAnother(t *testing.T) {
	t.Parallel()
	c := newCluster(t, cachedConfig(t))
	start(t, c)
	port := c.Port()
	stop(t, c)

	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	require.NoError(t, err)
	defer l.Close()
	start(t, c)
	require.NotEqual(t, port, c.Port())
	_, err = connect(t, c.DSN("postgres"))
	require.NoError(t, err)
}

func TestFixedPortTaken(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	cfg := cachedConfig(t)
	cfg.Port = l.Addr().(*net.TCPAddr).Port
	c := newCluster(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err = c.Start(ctx)
	require.ErrorContains(t, err, "in use")
}

func TestStartAfterServerCrash(t *testing.T) {
	t.Parallel()
	c := newCluster(t, cachedConfig(t))
	start(t, c)
	port := c.Port()

	pid := postmasterPID(t, c.Dir())
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	require.Eventually(t, func() bool { return syscall.Kill(pid, 0) != nil }, 10*time.Second, 10*time.Millisecond)
	// The backends notice the postmaster's death and exit; until they have,
	// postgres refuses to start (shared memory still attached). Start is
	// expected to cope within its time bound.
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		err := c.Start(ctx)
		if err != nil {
			t.Logf("start after crash: %v", err)
		}
		return err == nil
	}, 40*time.Second, 100*time.Millisecond)
	require.Equal(t, port, c.Port())
	_, err := connect(t, c.DSN("postgres"))
	require.NoError(t, err)
}

func TestStartWithStalePIDOfLiveProcess(t *testing.T) {
	t.Parallel()
	c := newCluster(t, cachedConfig(t))
	start(t, c)
	stop(t, c)
	// As after a reboot: postmaster.pid names a PID that now belongs to an
	// unrelated live process (this one).
	pidFile := filepath.Join(c.Dir(), "postmaster.pid")
	content := strconv.Itoa(os.Getpid()) + "\n" + c.Dir() + "\n1700000000\n" + strconv.Itoa(c.Port()) + "\n"
	require.NoError(t, os.WriteFile(pidFile, []byte(content), 0o600))
	start(t, c)
	_, err := connect(t, c.DSN("postgres"))
	require.NoError(t, err)
}

func TestStartAdoptsRunningServer(t *testing.T) {
	t.Parallel()
	cfg := cachedConfig(t)
	c1 := newCluster(t, cfg)
	start(t, c1)
	pid := postmasterPID(t, c1.Dir())

	// A second process (say, a restarted `tenantplane dev`) with the same config.
	c2 := newCluster(t, cfg)
	start(t, c2)
	require.Equal(t, c1.Port(), c2.Port())
	require.Equal(t, pid, postmasterPID(t, c2.Dir()))

	// Other settings: restarted with them.
	cfg.Settings = map[string]string{"fsync": "off", "work_mem": "8MB"}
	c3 := newCluster(t, cfg)
	start(t, c3)
	require.NotEqual(t, pid, postmasterPID(t, c3.Dir()))
	conn, err := connect(t, c3.DSN("postgres"))
	require.NoError(t, err)
	require.Equal(t, "8MB", queryString(t, conn, "SHOW work_mem"))
}

func TestChangedPasswordIsApplied(t *testing.T) {
	t.Parallel()
	cfg := cachedConfig(t)
	c1 := newCluster(t, cfg)
	start(t, c1)
	stop(t, c1)

	cfg.Password = "another password"
	c2 := newCluster(t, cfg)
	start(t, c2)
	_, err := connect(t, c2.DSN("postgres"))
	require.NoError(t, err)
	_, err = connect(t, c1.DSN("postgres"))
	require.Error(t, err)
}

func TestInitCacheSharedByConcurrentStarts(t *testing.T) {
	t.Parallel()
	base, err := os.MkdirTemp("", "pgcluster-cache-test-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(base, 0o755))
	t.Cleanup(func() { os.RemoveAll(base) })
	cache := filepath.Join(base, "cache", "initdb")

	var wg sync.WaitGroup
	clusters := make([]*pgcluster.Cluster, 3)
	errs := make([]error, len(clusters))
	for i := range clusters {
		clusters[i] = newCluster(t, pgcluster.Config{
			Dir: testDir(t), Password: testPassword, Settings: testSettings, InitCache: cache,
		})
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			errs[i] = clusters[i].Start(ctx)
		})
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	require.FileExists(t, filepath.Join(cache, "PG_VERSION"))
	leftovers, err := filepath.Glob(cache + ".tmp-*")
	require.NoError(t, err)
	require.Empty(t, leftovers)
	for _, c := range clusters {
		_, err := connect(t, c.DSN("postgres"))
		require.NoError(t, err)
	}
}

func TestStopNeverStarted(t *testing.T) {
	t.Parallel()
	c := newCluster(t, pgcluster.Config{Dir: testDir(t), Password: "x"})
	stop(t, c)
}

func TestDSN(t *testing.T) {
	t.Parallel()
	c, err := pgcluster.New(pgcluster.Config{Dir: "x", Password: "p@ss/word", Port: 5499})
	require.NoError(t, err)
	require.Equal(t, "postgres://postgres:p%40ss%2Fword@127.0.0.1:5499/app?sslmode=disable", c.DSN("app"))
	cfg, err := pgconn.ParseConfig(c.DSN("app"))
	require.NoError(t, err)
	require.Equal(t, "p@ss/word", cfg.Password)
	require.Equal(t, "app", cfg.Database)
}

func postmasterPID(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	require.NoError(t, err)
	return pid
}

func TestStartInExistingEmptyDirAndMissingParents(t *testing.T) {
	t.Parallel()
	for _, dir := range []string{testDir(t), filepath.Join(testDir(t), "a", "b")} {
		if filepath.Base(dir) == "data" {
			require.NoError(t, os.Mkdir(dir, 0o755)) // as a user (or root) would make it
		}
		cfg := cachedConfig(t)
		cfg.Dir = dir
		c := newCluster(t, cfg)
		start(t, c)
		st, err := os.Stat(dir)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o700), st.Mode().Perm())
		_, err = connect(t, c.DSN("postgres"))
		require.NoError(t, err)
		leftovers, err := filepath.Glob(dir + ".init-*")
		require.NoError(t, err)
		require.Empty(t, leftovers)
	}
}

func TestStartRefusesNonEmptyForeignDir(t *testing.T) {
	t.Parallel()
	cfg := cachedConfig(t)
	require.NoError(t, os.MkdirAll(cfg.Dir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(cfg.Dir, "notes.txt"), []byte("mine"), 0o644))
	c := newCluster(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	require.ErrorContains(t, c.Start(ctx), "neither empty nor a PostgreSQL data directory")
}
