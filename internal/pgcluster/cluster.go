package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	// superuser is the role initdb creates and DSN connects as.
	superuser = "postgres"
	// listenAddress: the cluster is reachable from this machine only.
	listenAddress = "127.0.0.1"
	// startTimeout bounds Start (initdb or cache copy, then the server start)
	// when ctx has no earlier deadline.
	startTimeout = 60 * time.Second
	// stopTimeout bounds Stop when ctx has no earlier deadline.
	stopTimeout = 30 * time.Second
	// portAttempts bounds the retries when the chosen port was taken between
	// choosing it and the server binding it.
	portAttempts = 5
	// maxSocketPath is the longest Unix socket path the kernel accepts
	// (sun_path is 108 bytes including the terminating NUL).
	maxSocketPath = 107
	// maxLogSize is the size of server.log beyond which Start moves it to
	// server.log.old.
	maxLogSize = 32 << 20
)

// reservedSettings are set by Start itself; Config.Settings may not override
// them because the cluster must listen on loopback only and on Port.
var reservedSettings = []string{"listen_addresses", "port", "unix_socket_directories"}

var settingName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)

// Config configures a Cluster. New applies the defaults, then validates.
type Config struct {
	// Dir is the data directory. Required. It is created (mode 0700) if
	// missing and initialized if empty. When the process runs as root, the
	// server runs as the "postgres" system user, so Dir is given to that user
	// and every directory above it must be traversable by it.
	Dir string

	// Port is the TCP port on 127.0.0.1. Default 0: reuse the port this data
	// directory had last time if it is free, else pick a free port. A non-zero
	// Port that is taken makes Start fail.
	Port int

	// Password is the password of the superuser "postgres". Required: TCP
	// connections (127.0.0.1) authenticate with scram-sha-256. If the data
	// directory was initialized with another password, Start changes it.
	Password string

	// Settings are extra postgresql.conf settings, such as "fsync": "off" for
	// tests. They are written on every Start. listen_addresses, port and
	// unix_socket_directories are reserved. Default none. With fsync off,
	// initdb also skips its final sync.
	Settings map[string]string

	// BinDir holds initdb, pg_ctl and postgres. Default FindBinDir().
	BinDir string

	// InitCache, if set, is a directory holding a freshly initialized data
	// directory that Start copies into an empty Dir instead of running initdb
	// (a copy takes a fraction of initdb's second or two). Start creates it if
	// missing, under a file lock so that parallel processes (several `go test`
	// binaries) run initdb once between them. Its path should contain
	// CacheKey, so a cache made with other binaries or options is never used.
	// Default "": run initdb.
	InitCache string

	// Logger receives start and stop events. Default: discard.
	Logger *slog.Logger
}

// Cluster is a private PostgreSQL cluster: one data directory and the server
// running on it, controlled with pg_ctl. Its methods are safe for concurrent use.
type Cluster struct {
	cfg    Config
	logger *slog.Logger
	user   runAs

	mu   sync.Mutex // serializes Start and Stop, guards port
	port int
}

// New checks cfg and applies its defaults. It starts nothing.
func New(cfg Config) (*Cluster, error) {
	if cfg.Dir == "" {
		return nil, errors.New("pgcluster: Config.Dir is required")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("pgcluster: Config.Dir: %w", err)
	}
	cfg.Dir = dir
	if cfg.Password == "" {
		return nil, errors.New("pgcluster: Config.Password is required: connections to 127.0.0.1 authenticate with scram-sha-256")
	}
	if cfg.Port < 0 || cfg.Port > 65535 {
		return nil, fmt.Errorf("pgcluster: Config.Port %d is not a TCP port", cfg.Port)
	}
	for name, value := range cfg.Settings {
		if !settingName.MatchString(name) {
			return nil, fmt.Errorf("pgcluster: Config.Settings: %q is not a setting name", name)
		}
		if slices.Contains(reservedSettings, strings.ToLower(name)) {
			return nil, fmt.Errorf("pgcluster: Config.Settings: %s is set by the cluster itself (use Config.Port for the port)", name)
		}
		if strings.ContainsAny(value, "\x00\r\n") {
			return nil, fmt.Errorf("pgcluster: Config.Settings: value of %s contains a NUL or line break", name)
		}
	}
	cfg.Settings = maps.Clone(cfg.Settings)
	if cfg.BinDir == "" {
		if cfg.BinDir, err = FindBinDir(); err != nil {
			return nil, fmt.Errorf("pgcluster: %w", err)
		}
	} else if err := checkBinDir(cfg.BinDir); err != nil {
		return nil, fmt.Errorf("pgcluster: Config.BinDir %s: %w: %v", cfg.BinDir, ErrNoBinaries, err)
	}
	if cfg.InitCache != "" {
		if cfg.InitCache, err = filepath.Abs(cfg.InitCache); err != nil {
			return nil, fmt.Errorf("pgcluster: Config.InitCache: %w", err)
		}
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	u, err := lookupServerUser()
	if err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	return &Cluster{cfg: cfg, logger: logger.With("pgdata", cfg.Dir), user: u, port: cfg.Port}, nil
}

// Dir is the data directory (absolute).
func (c *Cluster) Dir() string { return c.cfg.Dir }

// Port is the TCP port the cluster listens on: Config.Port before the first
// Start (so 0 by default), then the port the last Start used.
func (c *Cluster) Port() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.port
}

// DSN returns a URL connecting to database as the superuser over TCP, such as
// postgres://postgres:secret@127.0.0.1:5432/app?sslmode=disable.
func (c *Cluster) DSN(database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(superuser, c.cfg.Password),
		Host:     net.JoinHostPort(listenAddress, strconv.Itoa(c.Port())),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Start initializes the data directory if it is empty (copying Config.InitCache
// or running initdb), writes the settings and starts the server with
// `pg_ctl start -w`, returning once it accepts connections. The server listens
// on 127.0.0.1 and on a Unix socket inside the data directory (when the path
// is short enough), and logs to server.log there. If a server from an earlier
// run (of this process or another) is still running on Dir with the same
// settings, Start adopts it. Start is bounded by 60 s unless ctx ends sooner.
func (c *Cluster) Start(ctx context.Context) (err error) {
	defer wrap(&err, "pgcluster: start %s", c.cfg.Dir)
	c.mu.Lock()
	defer c.mu.Unlock()
	ctx, cancel := withDefaultTimeout(ctx, startTimeout)
	defer cancel()
	began := time.Now()

	if err := c.prepareDir(ctx); err != nil {
		return err
	}
	st := readState(c.cfg.Dir)

	if pm, ok := livePostmaster(c.cfg.Dir); ok {
		conf, _ := os.ReadFile(filepath.Join(c.cfg.Dir, confFile))
		if (c.cfg.Port == 0 || c.cfg.Port == pm.port) && string(conf) == c.renderConf(pm.port) {
			c.logger.InfoContext(ctx, "postgres already running, adopting it", "pid", pm.pid, "port", pm.port)
			c.port = pm.port
			return c.finishStart(ctx, st, began) // the server stays: it was not ours to start
		}
		c.logger.InfoContext(ctx, "postgres already running with other settings, restarting it", "pid", pm.pid, "port", pm.port)
		if err := c.pgCtlStop(ctx, "fast"); err != nil {
			return err
		}
	}

	for attempt := 1; ; attempt++ {
		port, err := c.choosePort(st.Port, attempt)
		if err != nil {
			return err
		}
		if err := c.user.writeFile(filepath.Join(c.cfg.Dir, confFile), []byte(c.renderConf(port)), 0o600); err != nil {
			return err
		}
		pgCtlBegan := time.Now()
		serverLog, err := c.pgCtlStart(ctx)
		c.logger.DebugContext(ctx, "pg_ctl start", "port", port, "duration", time.Since(pgCtlBegan).Round(time.Millisecond), "ok", err == nil)
		if err == nil {
			c.port = port
			break
		}
		portTaken := strings.Contains(serverLog, "Address already in use")
		if !portTaken || c.cfg.Port != 0 || attempt == portAttempts || ctx.Err() != nil {
			return err
		}
		c.logger.InfoContext(ctx, "port taken meanwhile, retrying with another", "port", port, "attempt", attempt)
	}
	if err := c.finishStart(ctx, st, began); err != nil {
		// Leave nothing running behind a failed Start.
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = c.pgCtlStop(stopCtx, "fast")
		return err
	}
	return nil
}

// finishStart brings the superuser password in line with Config.Password and
// records the port for the next Start.
func (c *Cluster) finishStart(ctx context.Context, st state, began time.Time) error {
	fp := passwordFingerprint(c.cfg.Password)
	if st.Password != fp {
		if err := c.resetPassword(ctx); err != nil {
			return err
		}
	}
	if err := writeState(c.cfg.Dir, c.user, state{Port: c.port, Password: fp}); err != nil {
		return err
	}
	c.logger.InfoContext(ctx, "postgres started", "port", c.port, "duration", time.Since(began).Round(time.Millisecond))
	return nil
}

// prepareDir creates Dir and initializes it if it is missing or empty. The
// new data directory is made next to Dir and renamed into place, so that a
// process killed half-way leaves no half-made Dir behind.
func (c *Cluster) prepareDir(ctx context.Context) error {
	dir := c.cfg.Dir
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	if err := c.user.checkTraversable(dir); err != nil {
		return err
	}
	initialized, err := isInitialized(dir)
	if err != nil || initialized {
		return err
	}
	began := time.Now()
	tmp, err := os.MkdirTemp(parent, filepath.Base(dir)+".init-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp) // a no-op after the rename
	if err := c.user.mkdir(tmp, 0o700); err != nil {
		return err
	}
	noSync := strings.EqualFold(c.cfg.Settings["fsync"], "off")
	if c.cfg.InitCache == "" {
		c.logger.InfoContext(ctx, "running initdb")
		if err := initdb(ctx, c.cfg.BinDir, tmp, c.cfg.Password, c.user, noSync); err != nil {
			return err
		}
	} else {
		if err := ensureCache(ctx, c.cfg.BinDir, c.cfg.InitCache, c.cfg.Password, c.user, noSync); err != nil {
			return err
		}
		if err := copyDataDir(c.cfg.InitCache, tmp, c.user); err != nil {
			return fmt.Errorf("copy init cache %s: %w", c.cfg.InitCache, err)
		}
	}
	// rename(2) replaces an empty directory, but not a mount point (a
	// container volume, say): then copy.
	if err := os.Rename(tmp, dir); err != nil {
		if _, statErr := os.Stat(dir); statErr != nil {
			return err
		}
		if err := copyDataDir(tmp, dir, c.user); err != nil {
			return fmt.Errorf("copy %s into %s: %w", tmp, dir, err)
		}
		if err := c.user.chown(dir); err != nil {
			return err
		}
		if err := os.Chmod(dir, 0o700); err != nil {
			return err
		}
	}
	c.logger.DebugContext(ctx, "data directory initialized", "init_cache", c.cfg.InitCache, "duration", time.Since(began).Round(time.Millisecond))
	return nil
}

// choosePort picks the port for a start attempt (1-based).
func (c *Cluster) choosePort(recorded, attempt int) (int, error) {
	if c.cfg.Port != 0 {
		if !portFree(c.cfg.Port) {
			return 0, fmt.Errorf("port %d on %s is in use; set Config.Port to another port or to 0 to pick a free one", c.cfg.Port, listenAddress)
		}
		return c.cfg.Port, nil
	}
	if attempt == 1 && recorded != 0 && portFree(recorded) {
		return recorded, nil
	}
	l, err := net.Listen("tcp", net.JoinHostPort(listenAddress, "0"))
	if err != nil {
		return 0, fmt.Errorf("pick a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func portFree(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort(listenAddress, strconv.Itoa(port)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// socketDir is where the server puts its Unix socket: inside the data
// directory, unless the socket path would be too long for the kernel, in
// which case there is no socket (pg_ctl does not need one).
func (c *Cluster) socketDir(port int) string {
	if len(filepath.Join(c.cfg.Dir, ".s.PGSQL."+strconv.Itoa(port))) > maxSocketPath {
		return ""
	}
	return c.cfg.Dir
}

// renderConf is the content of confFile for port.
func (c *Cluster) renderConf(port int) string {
	var b strings.Builder
	b.WriteString("# Written by tenantplane's pgcluster on every start: edits here are lost.\n")
	b.WriteString("# Put settings of your own in postgresql.auto.conf (ALTER SYSTEM).\n")
	fmt.Fprintf(&b, "listen_addresses = %s\n", quoteSetting(listenAddress))
	fmt.Fprintf(&b, "port = %d\n", port)
	fmt.Fprintf(&b, "unix_socket_directories = %s\n", quoteSetting(c.socketDir(port)))
	for _, name := range slices.Sorted(maps.Keys(c.cfg.Settings)) {
		fmt.Fprintf(&b, "%s = %s\n", name, quoteSetting(c.cfg.Settings[name]))
	}
	return b.String()
}

// quoteSetting quotes a postgresql.conf value; the parser understands
// backslash escapes and doubled quotes inside quotes.
func quoteSetting(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `''`).Replace(v) + "'"
}

// pgCtlStart runs pg_ctl start -w. On failure it returns what the server
// logged meanwhile, and the error quotes its last lines.
func (c *Cluster) pgCtlStart(ctx context.Context) (serverLog string, err error) {
	logPath := filepath.Join(c.cfg.Dir, logFile)
	offset := logSize(c.cfg.Dir)
	if offset > maxLogSize { // a long-lived dev cluster: keep one old log
		if err := os.Rename(logPath, logPath+".old"); err == nil {
			offset = 0
		}
	}
	cmd := c.user.command(filepath.Join(c.cfg.BinDir, "pg_ctl"), "start",
		"--pgdata="+c.cfg.Dir, "--log="+logPath,
		"--wait", "--timeout="+strconv.Itoa(secondsLeft(ctx)), "--silent")
	out, err := run(ctx, cmd)
	if err == nil {
		return "", nil
	}
	serverLog = logSince(c.cfg.Dir, offset)
	// pg_ctl may have been killed (ctx) or timed out with the server still
	// coming up; don't leave it behind.
	if _, alive := livePostmaster(c.cfg.Dir); alive {
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = c.pgCtlStop(stopCtx, "immediate")
	}
	return serverLog, fmt.Errorf("pg_ctl start: %w: %s\nlast lines of %s:\n%s",
		err, strings.TrimSpace(string(out)), logPath, lastLines(serverLog, 15))
}

// resetPassword sets the superuser's password over the Unix socket, where
// local connections are trusted.
func (c *Cluster) resetPassword(ctx context.Context) error {
	sockDir := c.socketDir(c.port)
	if sockDir == "" {
		return fmt.Errorf("the data directory's superuser password is not Config.Password (or unknown), and it cannot be reset "+
			"because the path of %s is too long for a Unix socket; use a shorter Config.Dir", c.cfg.Dir)
	}
	cfg, err := pgx.ParseConfig("sslmode=disable connect_timeout=10")
	if err != nil {
		return err
	}
	cfg.Host, cfg.Port, cfg.User, cfg.Password, cfg.Database = sockDir, uint16(c.port), superuser, "", "postgres"
	cfg.Fallbacks = nil
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("reset the superuser password: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	quoted, err := conn.PgConn().EscapeString(c.cfg.Password)
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "ALTER ROLE "+superuser+" PASSWORD '"+quoted+"'"); err != nil {
		return fmt.Errorf("reset the superuser password: %w", err)
	}
	c.logger.InfoContext(ctx, "superuser password set to Config.Password")
	return nil
}

// Stop stops the server with `pg_ctl stop -m fast` (open sessions are
// disconnected) and waits for it to exit. Stopping a cluster that is not
// running returns nil. Stop is bounded by 30 s unless ctx ends sooner.
func (c *Cluster) Stop(ctx context.Context) (err error) {
	defer wrap(&err, "pgcluster: stop %s", c.cfg.Dir)
	c.mu.Lock()
	defer c.mu.Unlock()
	ctx, cancel := withDefaultTimeout(ctx, stopTimeout)
	defer cancel()
	if _, alive := livePostmaster(c.cfg.Dir); !alive {
		return nil
	}
	if err := c.pgCtlStop(ctx, "fast"); err != nil {
		// Sessions that ignore the termination request, or a slow shutdown
		// checkpoint: don't leave a server behind.
		c.logger.WarnContext(ctx, "fast shutdown failed, trying immediate", "err", err)
		immCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err2 := c.pgCtlStop(immCtx, "immediate"); err2 != nil {
			return errors.Join(err, err2)
		}
	}
	c.logger.InfoContext(ctx, "postgres stopped")
	return nil
}

func (c *Cluster) pgCtlStop(ctx context.Context, mode string) error {
	cmd := c.user.command(filepath.Join(c.cfg.BinDir, "pg_ctl"), "stop",
		"--pgdata="+c.cfg.Dir, "--mode="+mode, "--wait", "--timeout="+strconv.Itoa(secondsLeft(ctx)), "--silent")
	out, err := run(ctx, cmd)
	if err != nil {
		if _, alive := livePostmaster(c.cfg.Dir); !alive {
			return nil // it went away by itself meanwhile
		}
		return fmt.Errorf("pg_ctl stop -m %s: %w: %s", mode, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// run runs cmd, returning its combined output. ctx kills it.
func run(ctx context.Context, cmd *exec.Cmd) ([]byte, error) {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// The server pg_ctl starts must not hold our output pipe open; it doesn't
	// (pg_ctl redirects it to the log), but bound Wait anyway.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			_ = cmd.Process.Kill()
		case <-done:
		}
	}()
	err := cmd.Wait()
	close(done)
	if ctx.Err() != nil {
		return out.Bytes(), fmt.Errorf("%w (%v)", context.Cause(ctx), err)
	}
	return out.Bytes(), err
}

// secondsLeft is the pg_ctl --timeout for ctx's deadline, at least 1.
func secondsLeft(ctx context.Context) int {
	deadline, ok := ctx.Deadline()
	if !ok {
		return int(startTimeout / time.Second)
	}
	return max(1, int(time.Until(deadline).Seconds()))
}

func withDefaultTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < d {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// wrap prefixes a non-nil *errp with the operation, pkgsite's derrors.Wrap.
func wrap(errp *error, format string, args ...any) {
	if *errp != nil {
		*errp = fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), *errp)
	}
}

// WriteFile writes a file into the data directory (server.crt, pg_hba.conf),
// owned by the account the server runs as. A running server sees it on its
// next reload or start.
func (c *Cluster) WriteFile(name string, data []byte, perm os.FileMode) error {
	return c.user.writeFile(filepath.Join(c.cfg.Dir, name), data, perm)
}

// BaseBackup makes c's data directory, which must not exist yet or be
// empty, a streaming standby of the server at primaryDSN (a superuser's, or
// a replication role's, URL): pg_basebackup -R, so that Start starts it as
// a standby following that server. It runs as the account the server runs
// as; the new standby keeps the primary's superuser password.
func (c *Cluster) BaseBackup(ctx context.Context, primaryDSN string) (err error) {
	defer wrap(&err, "pgcluster: base backup into %s", c.cfg.Dir)
	ctx, cancel := withDefaultTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := c.user.mkdir(c.cfg.Dir, 0o700); err != nil {
		return err
	}
	cmd := c.user.command(filepath.Join(c.cfg.BinDir, "pg_basebackup"), "-D", c.cfg.Dir, "-R", "-X", "stream", "-d", primaryDSN)
	if out, err := run(ctx, cmd); err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}
