package pgcluster

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// serverUserName is the account initdb and postgres run as when we are root:
// both refuse to run as root.
const serverUserName = "postgres"

// runAs is the account that owns the data directory and runs the server
// binaries. The zero value means "this process's own user".
type runAs struct {
	root     bool // we are root and switch to uid/gid for the binaries
	uid, gid int
}

var lookupServerUser = sync.OnceValues(func() (runAs, error) {
	if os.Geteuid() != 0 {
		return runAs{uid: os.Geteuid(), gid: os.Getegid()}, nil
	}
	u, err := user.Lookup(serverUserName)
	if err != nil {
		return runAs{}, fmt.Errorf("running as root, and initdb and postgres refuse to run as root; "+
			"they would run as the %q system user, but looking it up failed: %w "+
			"(create it with `useradd --system %s`, or run as a non-root user)", serverUserName, err, serverUserName)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err := errors.Join(err1, err2); err != nil {
		return runAs{}, fmt.Errorf("user %q: %w", serverUserName, err)
	}
	return runAs{root: true, uid: uid, gid: gid}, nil
})

// command builds an exec.Cmd for a server binary, switching to the server
// user when we are root. Its working directory is "/" because our own may not
// be accessible to that user.
func (u runAs) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Dir = "/"
	cmd.Env = childEnv()
	if u.root {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid)}}
	}
	return cmd
}

// chown gives path to the server user; a no-op unless we are root.
func (u runAs) chown(path string) error {
	if !u.root {
		return nil
	}
	return os.Lchown(path, u.uid, u.gid)
}

// mkdir creates dir (and missing parents) and makes dir itself owned by the
// server user with the given mode, whatever the umask.
func (u runAs) mkdir(dir string, perm fs.FileMode) error {
	if err := os.MkdirAll(dir, perm); err != nil {
		return err
	}
	if err := os.Chmod(dir, perm); err != nil {
		return err
	}
	return u.chown(dir)
}

// writeFile writes a file owned by the server user, which must be able to read it.
func (u runAs) writeFile(path string, data []byte, perm fs.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return err
	}
	if err := u.chown(tmp); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// checkTraversable fails with an actionable message when the server user
// cannot reach dir because some ancestor lacks the search (x) permission for
// it. Without this, initdb fails with a bare "Permission denied".
func (u runAs) checkTraversable(dir string) error {
	if !u.root {
		return nil
	}
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		var bit fs.FileMode = 0o001
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			switch {
			case int(sys.Uid) == u.uid:
				bit = 0o100
			case int(sys.Gid) == u.gid:
				bit = 0o010
			}
		}
		if st.Mode().Perm()&bit == 0 {
			return fmt.Errorf("the %s user (uid %d), which runs the server because we are root, cannot enter %s (mode %v); "+
				"put the data directory under a path it can traverse (os.TempDir(), /var/lib/postgresql) or `chmod o+x %s`",
				serverUserName, u.uid, p, st.Mode().Perm(), p)
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// childEnv is our environment without the PG* variables, which would
// otherwise change what pg_ctl, initdb and postgres do (PGDATA, PGPORT, ...).
func childEnv() []string {
	env := os.Environ()
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "PG") {
			out = append(out, kv)
		}
	}
	return out
}
