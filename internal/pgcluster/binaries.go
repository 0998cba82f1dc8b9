package pgcluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// EnvBinDir names the environment variable that points FindBinDir at the
// directory holding initdb, pg_ctl and postgres.
const EnvBinDir = "TENANTPLANE_PG_BIN"

// ErrNoBinaries is returned (wrapped) when the PostgreSQL server binaries cannot
// be found; the wrapping error says where they were looked for and how to
// install them. Test for it with errors.Is.
var ErrNoBinaries = errors.New("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found")

// installHint says how to get the binaries.
const installHint = "apt-get install postgresql (Debian, Ubuntu; it puts them in /usr/lib/postgresql/<version>/bin)"

// debianBinGlob is where Debian and Ubuntu install the server binaries, one
// directory per major version; they are not on PATH there.
const debianBinGlob = "/usr/lib/postgresql/*/bin"

// requiredBinaries must all sit in one directory: pg_ctl finds postgres next to itself.
var requiredBinaries = []string{"initdb", "pg_ctl", "postgres"}

// FindBinDir returns the directory holding the PostgreSQL server binaries:
// $TENANTPLANE_PG_BIN if it is set (and then only that), else the directory
// of pg_ctl found on PATH, else the newest /usr/lib/postgresql/<version>/bin.
// The error wraps ErrNoBinaries and is one line saying what to do.
func FindBinDir() (string, error) { return findBinDir(debianBinGlob) }

func findBinDir(debianGlob string) (string, error) {
	if dir := os.Getenv(EnvBinDir); dir != "" {
		if err := checkBinDir(dir); err != nil {
			return "", fmt.Errorf("%w at %s=%s (%v): set it to the directory holding them, or unset it and %s",
				ErrNoBinaries, EnvBinDir, dir, err, installHint)
		}
		return dir, nil
	}
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		// Resolve symlinks: /usr/bin/pg_ctl may point into the real bin dir.
		if real, err := filepath.EvalSymlinks(p); err == nil {
			if dir := filepath.Dir(real); checkBinDir(dir) == nil {
				return dir, nil
			}
		}
	}
	dirs, _ := filepath.Glob(debianGlob) // the pattern is valid
	slices.SortFunc(dirs, func(a, b string) int { return compareVersions(versionOfDebianDir(b), versionOfDebianDir(a)) })
	for _, dir := range dirs {
		if checkBinDir(dir) == nil {
			return dir, nil
		}
	}
	return "", fmt.Errorf("%w on PATH or under %s: %s, or set %s to the directory holding them",
		ErrNoBinaries, debianGlob, installHint, EnvBinDir)
}

func checkBinDir(dir string) error {
	var missing []string
	for _, name := range requiredBinaries {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil || st.IsDir() || st.Mode().Perm()&0o111 == 0 {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("no executable %s there", strings.Join(missing, ", "))
	}
	return nil
}

// versionOfDebianDir extracts "15" from /usr/lib/postgresql/15/bin.
func versionOfDebianDir(dir string) string { return filepath.Base(filepath.Dir(dir)) }

// compareVersions orders dotted numeric versions ("9.6" < "15" < "16.1");
// non-numeric parts compare as 0.
func compareVersions(a, b string) int {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := range max(len(pa), len(pb)) {
		var na, nb int
		if i < len(pa) {
			na, _ = strconv.Atoi(pa[i])
		}
		if i < len(pb) {
			nb, _ = strconv.Atoi(pb[i])
		}
		if na != nb {
			return na - nb
		}
	}
	return 0
}

// Version reports the version of the PostgreSQL binaries in binDir, as printed
// by `pg_ctl --version` ("15.18", "17beta1").
func Version(ctx context.Context, binDir string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "pg_ctl"), "--version")
	cmd.Env = childEnv()
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("pgcluster: %s --version: %w", cmd.Path, err)
	}
	// "pg_ctl (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
	fields := strings.Fields(string(out))
	if len(fields) < 3 {
		return "", fmt.Errorf("pgcluster: unexpected output of %s --version: %q", cmd.Path, out)
	}
	return fields[2], nil
}

// majorVersion turns "15.18" into "15" and "17beta1" into "17".
func majorVersion(v string) string {
	end := strings.IndexFunc(v, func(r rune) bool { return r < '0' || r > '9' })
	if end < 0 {
		return v
	}
	return v[:end]
}

// CacheKey names an init cache for Config.InitCache: "<major>-<hash>", where the
// hash covers everything that makes one freshly initialized data directory
// differ from another (the binaries, their version, the initdb options and the
// superuser password). Data directories made from caches with equal keys are
// interchangeable, so callers can put the key in the cache's path.
func CacheKey(ctx context.Context, binDir, password string) (string, error) {
	version, err := Version(ctx, binDir)
	if err != nil {
		return "", err
	}
	abs, err := filepath.Abs(binDir)
	if err != nil {
		return "", fmt.Errorf("pgcluster: %w", err)
	}
	h := sha256.New()
	for _, part := range append([]string{abs, version, passwordFingerprint(password), stateVersion}, initdbOptions()...) {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	return majorVersion(version) + "-" + hex.EncodeToString(h.Sum(nil))[:12], nil
}
