package pgtest

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tenantplane/tenantplane/internal/pgcluster"
)

const (
	// EnvDatabaseURL names an existing server to use as the Shared one.
	EnvDatabaseURL = "TENANTPLANE_TEST_DATABASE_URL"
	// EnvKeep, when set, leaves the clusters of failed tests running.
	EnvKeep = "TENANTPLANE_PGTEST_KEEP"
	// EnvDir overrides where the clusters' data directories go.
	EnvDir = "TENANTPLANE_PGTEST_DIR"

	// password of the superuser of harness clusters: they hold throwaway
	// data and listen on 127.0.0.1 only.
	password = "postgres"
	// startTimeout bounds starting a cluster (copying the init cache, or
	// initdb for the first process on the machine, and pg_ctl start).
	startTimeout = 60 * time.Second
	stopTimeout  = 30 * time.Second
	// keepFile marks a cluster directory left running on purpose (EnvKeep),
	// so that sweepOrphans leaves it alone.
	keepFile = "KEPT"
)

// settings trade durability for speed: a crash loses test data only.
var settings = map[string]string{
	"fsync":              "off",
	"synchronous_commit": "off",
	"full_page_writes":   "off",
	"max_connections":    "300",
	"shared_buffers":     "32MB",
}

// Server is a PostgreSQL server for tests: a private cluster, or the external
// server of TENANTPLANE_TEST_DATABASE_URL. Its methods are safe for concurrent use.
type Server struct {
	label    string             // for messages: "shared", "NewServer(TestX)"
	shared   bool               // Stop and Start would break other tests
	cluster  *pgcluster.Cluster // nil: external server
	baseDir  string             // the cluster's directory; removed with it
	external *url.URL           // the external server's URL
	adminDSN string             // where CREATE / DROP DATABASE run

	mu        sync.Mutex
	stopped   bool // by Stop, or for good by destroy
	destroyed bool
	managed   bool // ManagedRole exists
	templates map[string]*templateState
	// strategy is the STRATEGY clause of CREATE DATABASE for this server.
	strategy      string
	strategyKnown bool
}

var (
	mainActive atomic.Bool // Main is running the tests

	sharedOnce   sync.Once
	sharedServer *Server
	sharedErr    error

	// running holds the clusters to stop when the tests end.
	runningMu sync.Mutex
	running   = map[*Server]struct{}{}

	// startMu is held for reading while a cluster starts and for writing by
	// shutdown, which so waits for starts in flight (an interrupt arrives at
	// any time) and then sets closed, so that no cluster starts after it.
	startMu sync.RWMutex
	closed  bool
)

// Main runs the tests of m, then stops every cluster the harness started and
// removes their data, and exits with m's code. Call it from TestMain:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// An interrupt (^C) or SIGTERM stops the clusters too, then exits.
//
// Without the PostgreSQL server binaries it runs no test: it says once what
// is missing and how to install it, and exits 1, where every test would
// otherwise fail with the same message. With TENANTPLANE_TEST_DATABASE_URL
// the tests run (only NewServer needs the binaries then).
func Main(m *testing.M) {
	mainActive.Store(true)
	if err := checkBinaries(); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		os.Exit(1)
	}
	sweepOnce()

	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		select {
		case sig := <-sigc:
			fmt.Fprintf(os.Stderr, "pgtest: %v: stopping PostgreSQL clusters\n", sig)
			shutdown(false)
			os.Exit(2)
		case <-done:
		}
	})

	code := m.Run()

	signal.Stop(sigc)
	close(done)
	wg.Wait()
	shutdown(code != 0)
	os.Exit(code)
}

// checkBinaries fails when the tests need the server binaries and they are
// missing. Listing the tests (go test -list) needs none.
func checkBinaries() error {
	if os.Getenv(EnvDatabaseURL) != "" {
		return nil
	}
	if !flag.Parsed() {
		flag.Parse() // m.Run would; the testing flags are registered by now
	}
	if f := flag.Lookup("test.list"); f != nil && f.Value.String() != "" {
		return nil
	}
	_, err := findBinDir()
	return err
}

// shutdown stops and removes every running cluster, or with EnvKeep after
// failed tests, leaves them running and says how to stop them.
func shutdown(failed bool) {
	startMu.Lock()
	closed = true
	startMu.Unlock()
	runningMu.Lock()
	servers := make([]*Server, 0, len(running))
	for s := range running {
		servers = append(servers, s)
	}
	runningMu.Unlock()
	for _, s := range servers {
		if failed && keepOnFailure() {
			fmt.Fprintln(os.Stderr, s.keep())
			continue
		}
		if err := s.destroy(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		}
	}
}

func keepOnFailure() bool { return os.Getenv(EnvKeep) != "" }

// Shared returns the process-wide server, starting it on first use: a private
// cluster that Main stops after the tests, or, if TENANTPLANE_TEST_DATABASE_URL
// is set, that existing server (its user must be able to CREATE DATABASE).
// Tests share it, so they must not Stop it: take a NewServer for that.
func Shared(t testing.TB) *Server {
	t.Helper()
	s, err := sharedServerFor(t.Logf)
	if err != nil {
		t.Fatalf("pgtest: shared server: %v", err)
	}
	return s
}

// sharedServerFor returns the shared server, starting it on first use; logf
// tells how long that took.
func sharedServerFor(logf func(format string, args ...any)) (*Server, error) {
	sharedOnce.Do(func() { sharedServer, sharedErr = startShared(logf) })
	return sharedServer, sharedErr
}

func startShared(logf func(format string, args ...any)) (*Server, error) {
	if raw := os.Getenv(EnvDatabaseURL); raw != "" {
		return externalServer(raw)
	}
	if !mainActive.Load() {
		return nil, errors.New("the test package needs `func TestMain(m *testing.M) { pgtest.Main(m) }`, " +
			"which stops the shared cluster after the tests (or set " + EnvDatabaseURL + ")")
	}
	began := time.Now()
	s, err := startCluster("shared")
	if err != nil {
		return nil, err
	}
	s.shared = true
	logf("pgtest: shared PostgreSQL cluster on %s:%d started in %s (%s)",
		s.Host(), s.Port(), time.Since(began).Round(time.Millisecond), s.cluster.Dir())
	return s, nil
}

func externalServer(raw string) (*Server, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.Host == "" {
		return nil, fmt.Errorf("%s must be a postgres://user:password@host:port/database URL", EnvDatabaseURL)
	}
	return &Server{label: "external", shared: true, external: u, adminDSN: raw, templates: map[string]*templateState{}}, nil
}

// NewServer starts a private cluster for this test only, stopped and removed
// when the test ends. It is for tests of several servers, or of a server
// going away (Stop, Start); other tests share Shared.
func NewServer(t testing.TB) *Server {
	t.Helper()
	s, err := startCluster("NewServer(" + t.Name() + ")")
	if err != nil {
		t.Fatalf("pgtest: NewServer: %v", err)
	}
	s.destroyAfter(t)
	return s
}

// destroyAfter destroys the server when the test ends, or keeps it when the
// test failed and EnvKeep asks for that.
func (s *Server) destroyAfter(t testing.TB) {
	t.Cleanup(func() {
		if t.Failed() && keepOnFailure() {
			t.Log(s.keep())
			return
		}
		if err := s.destroy(); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
}

// findBinDir finds the binaries and names the init cache, once per process.
var findBinDir = sync.OnceValues(func() (binDir string, err error) {
	return pgcluster.FindBinDir()
})

var initCache = sync.OnceValues(func() (string, error) {
	binDir, err := findBinDir()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	key, err := pgcluster.CacheKey(ctx, binDir, password)
	if err != nil {
		return "", err
	}
	return filepath.Join(cacheRoot(), "initdb-"+key), nil
})

// harnessDirName is the directory of ours in the roots below.
const harnessDirName = "tenantplane-pgtest"

// cacheRoot holds the init cache. It is under os.TempDir(), not t.TempDir():
// when we are root the server runs as the postgres user, which must be able to
// traverse to the data directory (and initdb writes the cache).
func cacheRoot() string { return filepath.Join(os.TempDir(), harnessDirName) }

// minTmpfsFree is the free space below which /dev/shm is not used for
// clusters: a cluster takes about 40 MB plus its databases, and Docker gives
// containers a 64 MB /dev/shm.
const minTmpfsFree = 1 << 30

// clusterRoot holds the clusters' directories: $TENANTPLANE_PGTEST_DIR if set,
// else /dev/shm when it is a tmpfs with room, else the cache root. Memory
// matters because a cluster is about a thousand small files and every CREATE
// DATABASE a few hundred more; on some disks (virtual machines' ext4) each file
// creation costs half a millisecond, which made a cluster copy take over a
// second and a NewDB a few hundred milliseconds, against 60 ms and 15-25 ms
// in tmpfs.
var clusterRoot = sync.OnceValue(func() string {
	if dir := os.Getenv(EnvDir); dir != "" {
		return filepath.Join(dir, harnessDirName)
	}
	const shm = "/dev/shm"
	var st syscall.Statfs_t
	const tmpfsMagic = 0x01021994
	if err := syscall.Statfs(shm, &st); err == nil && st.Type == tmpfsMagic &&
		st.Bavail*uint64(st.Bsize) >= minTmpfsFree && syscall.Access(shm, 0o2|0o1) == nil {
		return filepath.Join(shm, harnessDirName)
	}
	return cacheRoot()
})

func startCluster(label string) (*Server, error) {
	sweepOnce()
	startMu.RLock()
	defer startMu.RUnlock()
	if closed {
		return nil, errors.New("the tests are over (interrupted?): not starting a cluster")
	}
	binDir, err := findBinDir()
	if err != nil {
		return nil, err
	}
	cache, err := initCache()
	if err != nil {
		return nil, err
	}
	root := clusterRoot()
	for _, dir := range []string{cacheRoot(), root} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		// Against a restrictive umask: the postgres user must traverse it.
		// Fails harmlessly if another user made it.
		_ = os.Chmod(dir, 0o755)
	}
	// The PID in the name tells sweepOrphans whose cluster this is.
	base, err := os.MkdirTemp(root, "cluster-"+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(base, 0o755); err != nil {
		os.RemoveAll(base)
		return nil, err
	}
	c, err := pgcluster.New(pgcluster.Config{
		Dir:       filepath.Join(base, "data"),
		Password:  password,
		Settings:  settings,
		BinDir:    binDir,
		InitCache: cache,
	})
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		err = c.Start(ctx)
		cancel()
	}
	if err != nil {
		os.RemoveAll(base)
		return nil, err
	}
	s := &Server{label: label, cluster: c, baseDir: base, adminDSN: c.DSN("postgres"), templates: map[string]*templateState{}}
	runningMu.Lock()
	running[s] = struct{}{}
	runningMu.Unlock()
	return s, nil
}

// destroy stops the cluster for good and removes its data.
func (s *Server) destroy() error {
	s.mu.Lock()
	if s.destroyed || s.cluster == nil {
		s.mu.Unlock()
		return nil
	}
	s.destroyed, s.stopped = true, true
	s.mu.Unlock()
	runningMu.Lock()
	delete(running, s)
	runningMu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	if err := s.cluster.Stop(ctx); err != nil {
		return fmt.Errorf("stop %s cluster (data kept in %s): %w", s.label, s.baseDir, err)
	}
	if err := os.RemoveAll(s.baseDir); err != nil {
		return fmt.Errorf("remove %s cluster: %w", s.label, err)
	}
	return nil
}

// keep leaves the cluster running for inspection and returns how to reach and
// stop it.
func (s *Server) keep() string {
	if s.cluster == nil {
		return ""
	}
	s.mu.Lock()
	s.destroyed = true // by nobody
	s.mu.Unlock()
	runningMu.Lock()
	delete(running, s)
	runningMu.Unlock()
	_ = os.WriteFile(filepath.Join(s.baseDir, keepFile), nil, 0o644)
	binDir, _ := findBinDir()
	stopCmd := fmt.Sprintf("%s stop -D %s", filepath.Join(binDir, "pg_ctl"), s.cluster.Dir())
	if os.Geteuid() == 0 {
		stopCmd = fmt.Sprintf("su postgres -s /bin/sh -c '%s'", stopCmd)
	}
	return fmt.Sprintf("pgtest: %s is set and tests failed: the %s cluster keeps running at %s\n"+
		"\tstop it with: %s && rm -rf %s", EnvKeep, s.label, s.DSN("postgres"), stopCmd, s.baseDir)
}

// sweepOnce stops and removes, once per process, the clusters of test
// processes that died without cleaning up (killed on timeout, ^C before Main
// could react): pg_ctl starts the server detached, so it outlives them.
var sweepOnce = sync.OnceFunc(sweepOrphans)

func sweepOrphans() {
	sweepRoot(clusterRoot())
	if cacheRoot() != clusterRoot() {
		sweepRoot(cacheRoot()) // clusters from runs with another clusterRoot
	}
}

func sweepRoot(root string) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), "cluster-")
		if !ok || !e.IsDir() {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() || processAlive(pid) {
			continue
		}
		base := filepath.Join(root, e.Name())
		if _, err := os.Stat(filepath.Join(base, keepFile)); err == nil {
			continue
		}
		if err := stopOrphan(filepath.Join(base, "data")); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: stop orphaned cluster %s: %v\n", base, err)
			continue
		}
		os.RemoveAll(base)
	}
}

func stopOrphan(dir string) error {
	binDir, err := findBinDir()
	if err != nil {
		return err
	}
	c, err := pgcluster.New(pgcluster.Config{Dir: dir, Password: password, BinDir: binDir})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	return c.Stop(ctx)
}

func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	// A killed process that its parent has not reaped yet is a zombie: dead.
	// /proc/<pid>/stat reads "pid (comm) state ...".
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true // no procfs: trust kill(0)
	}
	if i := strings.LastIndexByte(string(b), ')'); i >= 0 && i+2 < len(b) {
		return b[i+2] != 'Z'
	}
	return true
}

// Host is the server's host name or address: 127.0.0.1 for clusters.
func (s *Server) Host() string {
	if s.external != nil {
		return s.external.Hostname()
	}
	return "127.0.0.1"
}

// Port is the server's TCP port.
func (s *Server) Port() int {
	if s.external != nil {
		if p, err := strconv.Atoi(s.external.Port()); err == nil {
			return p
		}
		return 5432
	}
	return s.cluster.Port()
}

// DSN returns a URL connecting to database as the server's superuser (for an
// external server: as the user of TENANTPLANE_TEST_DATABASE_URL).
func (s *Server) DSN(database string) string {
	if s.external == nil {
		return s.cluster.DSN(database)
	}
	u := *s.external
	u.Path, u.RawPath = "/"+database, ""
	return u.String()
}

// Stop stops the server, so that connections to it fail until Start. Only for
// servers from NewServer: stopping the shared one would break other tests.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if s.shared {
		t.Fatalf("pgtest: Stop on the %s server would break the tests sharing it; use NewServer", s.label)
	}
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	if err := s.cluster.Stop(ctx); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
}

// Start starts a stopped server again, on the same port, with its data.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	if s.shared {
		t.Fatalf("pgtest: Start on the %s server: it is never stopped; use NewServer", s.label)
	}
	s.mu.Lock()
	destroyed := s.destroyed
	s.mu.Unlock()
	if destroyed {
		t.Fatalf("pgtest: Start on the %s server after its test ended", s.label)
	}
	port := s.cluster.Port()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := s.cluster.Start(ctx); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if got := s.cluster.Port(); got != port {
		t.Fatalf("pgtest: %s restarted on port %d instead of %d: another process took the port meanwhile", s.label, got, port)
	}
	s.mu.Lock()
	s.stopped = false
	s.mu.Unlock()
}

func (s *Server) isStopped() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopped
}

// hostPort is for messages.
func (s *Server) hostPort() string { return net.JoinHostPort(s.Host(), strconv.Itoa(s.Port())) }

// Addr is the server's host:port, for a proxy in front of it (faulttest).
func (s *Server) Addr() string { return s.hostPort() }
