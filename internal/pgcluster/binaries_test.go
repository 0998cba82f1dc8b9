package pgcluster

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Nothing anywhere: one line that says where it looked and what to do.
func TestFindBinDirNowhere(t *testing.T) {
	// No t.Parallel: t.Setenv.
	t.Setenv(EnvBinDir, "")
	t.Setenv("PATH", t.TempDir())
	glob := filepath.Join(t.TempDir(), "*", "bin")
	_, err := findBinDir(glob)
	require.ErrorIs(t, err, ErrNoBinaries)
	msg := err.Error()
	require.False(t, strings.ContainsAny(msg, "\n"), msg)
	for _, want := range []string{"initdb, pg_ctl, postgres", "on PATH", glob, "apt-get install postgresql", EnvBinDir} {
		require.Contains(t, msg, want)
	}
}
