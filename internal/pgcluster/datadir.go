package pgcluster

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
)

// Files this package keeps in the data directory next to PostgreSQL's own.
const (
	// confFile holds the settings we own (port, listen address, Config.Settings).
	// It is rewritten on every Start and included from postgresql.conf.
	confFile = "tenantplane.conf"
	// stateFile records what a later Start must know: the port last used and a
	// fingerprint of the password the superuser has.
	stateFile = "tenantplane-cluster.json"
	// logFile is the server's log (pg_ctl -l); it is appended to across runs.
	logFile = "server.log"
	// stateVersion changes when the layout above changes; it is part of CacheKey.
	stateVersion = "pgcluster/1"
	// initdbTZ makes initdb's timezone deterministic (and skips its slow
	// search of the zoneinfo tree).
	initdbTZ = "UTC"
)

var includeLine = "include_if_exists = '" + confFile + "'\t# added by tenantplane pgcluster\n"

// initdbOptions are the initdb flags besides -D and --pwfile.
func initdbOptions() []string {
	return []string{
		"--username=" + superuser,
		"--auth-local=trust",
		"--auth-host=scram-sha-256",
		"--encoding=UTF8",
		"--locale=C",
		"TZ=" + initdbTZ, // not a flag: stripped in initdb() and passed as environment
	}
}

type state struct {
	Version string `json:"version"`
	Port    int    `json:"port,omitempty"`
	// Password is a fingerprint (not the password) of the superuser's password,
	// so that Start notices when Config.Password changed and resets it.
	Password string `json:"password_fingerprint,omitempty"`
}

func readState(dir string) state {
	var st state
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err == nil {
		_ = json.Unmarshal(b, &st) // a damaged file is as good as none
	}
	return st
}

func writeState(dir string, u runAs, st state) error {
	st.Version = stateVersion
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return u.writeFile(filepath.Join(dir, stateFile), append(b, '\n'), 0o600)
}

func passwordFingerprint(password string) string {
	sum := sha256.Sum256([]byte("tenantplane pgcluster superuser password\x00" + password))
	return hex.EncodeToString(sum[:16])
}

// isInitialized reports whether dir holds a data directory (PG_VERSION is
// written by initdb), or fails when dir holds something else.
func isInitialized(dir string) (bool, error) {
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); err == nil {
		return true, nil
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if len(entries) > 0 {
		return false, fmt.Errorf("%s is neither empty nor a PostgreSQL data directory (no PG_VERSION); "+
			"point Config.Dir at an empty or missing directory", dir)
	}
	return false, nil
}

// initdb initializes the empty directory dir. noSync skips initdb's final
// fsync of everything, which is most of its run time.
func initdb(ctx context.Context, binDir, dir, password string, u runAs, noSync bool) (err error) {
	// initdb reads the password from a file, which the server user must be
	// able to read; keep it out of dir, which must be empty.
	pwDir, err := os.MkdirTemp("", "pgcluster-pw-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(pwDir)
	if err := u.chown(pwDir); err != nil {
		return err
	}
	pwFile := filepath.Join(pwDir, "pw")
	if err := u.writeFile(pwFile, []byte(password+"\n"), 0o600); err != nil {
		return err
	}

	args := []string{"--pgdata=" + dir, "--pwfile=" + pwFile}
	env := []string{}
	for _, opt := range initdbOptions() {
		if strings.HasPrefix(opt, "-") {
			args = append(args, opt)
		} else {
			env = append(env, opt)
		}
	}
	if noSync {
		args = append(args, "--no-sync")
	}
	cmd := u.command(filepath.Join(binDir, "initdb"), args...)
	cmd.Env = append(cmd.Env, env...)
	if out, err := run(ctx, cmd); err != nil {
		return fmt.Errorf("initdb: %w\n%s", err, lastLines(string(out), 20))
	}

	if err := appendInclude(dir); err != nil {
		return err
	}
	return writeState(dir, u, state{Password: passwordFingerprint(password)})
}

// appendInclude makes postgresql.conf include our settings file, once.
func appendInclude(dir string) error {
	path := filepath.Join(dir, "postgresql.conf")
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if bytes.Contains(b, []byte(includeLine)) {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString("\n" + includeLine); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ensureCache makes cacheDir a freshly initialized data directory if it is not
// one yet. Concurrent callers, in this process or others, serialize on a file
// lock next to it, so initdb runs once; the directory appears atomically (by
// rename), so its existence means it is complete.
func ensureCache(ctx context.Context, binDir, cacheDir, password string, u runAs, noSync bool) (err error) {
	if _, err := os.Stat(filepath.Join(cacheDir, "PG_VERSION")); err == nil {
		return nil
	}
	parent := filepath.Dir(cacheDir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	unlock, err := lockFile(ctx, cacheDir+".lock")
	if err != nil {
		return fmt.Errorf("init cache lock: %w", err)
	}
	defer unlock()
	if _, err := os.Stat(filepath.Join(cacheDir, "PG_VERSION")); err == nil {
		return nil // another process built it while we waited
	}
	// We hold the lock, so leftovers of builds that died half-way are garbage.
	if old, _ := filepath.Glob(cacheDir + ".tmp-*"); len(old) > 0 {
		for _, p := range old {
			os.RemoveAll(p)
		}
	}
	if err := u.checkTraversable(cacheDir); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(parent, filepath.Base(cacheDir)+".tmp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp) // a no-op after the rename
	if err := u.mkdir(tmp, 0o700); err != nil {
		return err
	}
	if err := initdb(ctx, binDir, tmp, password, u, noSync); err != nil {
		return err
	}
	return os.Rename(tmp, cacheDir)
}

// lockFile takes an exclusive flock on path, polling so that ctx bounds the wait.
func lockFile(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil // closing releases the lock
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, err
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for %s: %w", path, context.Cause(ctx))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// copyDataDir copies the data directory src into the empty directory dst,
// keeping modes and giving everything to the server user. Files are copied by
// a few goroutines: a data directory is about a thousand small files, and the
// cost is per file (creation), not per byte.
func copyDataDir(src, dst string, u runAs) error {
	var g errgroup.Group
	g.SetLimit(4)
	walkErr := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if rel == "." {
				return nil // dst exists, with the right owner and mode
			}
			if err := os.Mkdir(target, info.Mode().Perm()); err != nil {
				return err
			}
			if err := os.Chmod(target, info.Mode().Perm()); err != nil { // umask
				return err
			}
			return u.chown(target)
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(path)
			if err != nil {
				return err
			}
			if err := os.Symlink(link, target); err != nil {
				return err
			}
			return u.chown(target)
		case d.Type().IsRegular():
			g.Go(func() error { return copyFile(path, target, info.Mode().Perm(), u) })
			return nil
		default:
			return fmt.Errorf("unexpected file type %v: %s", d.Type(), path)
		}
	})
	return errors.Join(walkErr, g.Wait())
}

// copyFile copies a regular file with plain system calls: os.File's
// machinery (poller registration, copy_file_range and splice attempts, which
// fail across file systems) costs more than the copy for small files.
func copyFile(src, dst string, perm fs.FileMode, u runAs) (err error) {
	in, err := syscall.Open(src, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return &fs.PathError{Op: "open", Path: src, Err: err}
	}
	defer syscall.Close(in)
	out, err := syscall.Open(dst, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_CLOEXEC, uint32(perm))
	if err != nil {
		return &fs.PathError{Op: "create", Path: dst, Err: err}
	}
	defer func() {
		if cerr := syscall.Close(out); err == nil && cerr != nil {
			err = &fs.PathError{Op: "close", Path: dst, Err: cerr}
		}
	}()
	buf := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(buf)
	for {
		n, err := syscall.Read(in, *buf)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return &fs.PathError{Op: "read", Path: src, Err: err}
		}
		if n == 0 {
			break
		}
		for b := (*buf)[:n]; len(b) > 0; {
			w, err := syscall.Write(out, b)
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			if err != nil {
				return &fs.PathError{Op: "write", Path: dst, Err: err}
			}
			b = b[w:]
		}
	}
	if perm&^0o600 != 0 { // the umask may have cut group or other bits
		if err := syscall.Fchmod(out, uint32(perm)); err != nil {
			return &fs.PathError{Op: "chmod", Path: dst, Err: err}
		}
	}
	if u.root {
		if err := syscall.Fchown(out, u.uid, u.gid); err != nil {
			return &fs.PathError{Op: "chown", Path: dst, Err: err}
		}
	}
	return nil
}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// postmaster describes the server a postmaster.pid file points at.
type postmaster struct {
	pid  int
	port int
}

// livePostmaster reads dir/postmaster.pid and reports whether the process it
// names is alive and really a postmaster of dir. After a crash the file stays
// behind, and its PID may since have been reused by an unrelated process (in
// containers PIDs are small and reused quickly); postgres refuses to start
// over a lock file naming a live process, so such a file is removed here.
func livePostmaster(dir string) (postmaster, bool) {
	pidFile := filepath.Join(dir, "postmaster.pid")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return postmaster{}, false
	}
	lines := strings.Split(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(lines[0]))
	if err != nil || pid <= 0 {
		return postmaster{}, false // being written, or garbage: postgres copes
	}
	pm := postmaster{pid: pid}
	if len(lines) > 3 {
		pm.port, _ = strconv.Atoi(strings.TrimSpace(lines[3]))
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return pm, false // dead: postgres removes the stale file itself
	}
	// The postmaster's working directory is its data directory.
	cwd, err := os.Stat(fmt.Sprintf("/proc/%d/cwd", pid))
	if err != nil {
		if _, err := os.Stat("/proc/self/cwd"); err != nil {
			return pm, true // no procfs: trust kill(0)
		}
		// The process vanished meanwhile, or it belongs to another user and
		// so cannot be our server.
		if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
			return pm, false
		}
	} else if self, err := os.Stat(dir); err == nil && os.SameFile(cwd, self) {
		return pm, true
	}
	os.Remove(pidFile)
	return pm, false
}

// logSize is the current length of the server log, so that errors can quote
// only what the current attempt wrote.
func logSize(dir string) int64 {
	st, err := os.Stat(filepath.Join(dir, logFile))
	if err != nil {
		return 0
	}
	return st.Size()
}

// logSince returns the server log from offset on.
func logSince(dir string, offset int64) string {
	f, err := os.Open(filepath.Join(dir, logFile))
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(io.LimitReader(f, 1<<20))
	return string(b)
}

// lastLines returns the last n lines of s, indented, for error messages.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	for i, l := range lines {
		lines[i] = "\t" + l
	}
	return strings.Join(lines, "\n")
}
