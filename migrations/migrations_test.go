package migrations_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/tenantplane/tenantplane/migrations"
)

func TestEmbedded(t *testing.T) {
	t.Parallel()
	src := migrations.Embedded()
	require.Equal(t, uint(2), src.Latest())
	require.Len(t, src.Hash(), 12)
	require.Equal(t, "embedded", src.Origin())
}

func write(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644))
	}
}

func TestLoadDirectory(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write(t, dir, map[string]string{
		"000001_a.up.sql": "CREATE TABLE a ();", "000001_a.down.sql": "DROP TABLE a;",
		"000003_c.up.sql": "CREATE TABLE c ();",
	})
	src, err := migrations.Load(dir)
	require.NoError(t, err)
	require.Equal(t, []uint{1, 3}, src.Versions())
	require.Equal(t, uint(3), src.Latest())
	require.True(t, src.Has(3))
	require.False(t, src.Has(2))

	// The hash follows the content.
	before := src.Hash()
	write(t, dir, map[string]string{"000003_c.up.sql": "CREATE TABLE c (x int);"})
	src, err = migrations.Load(dir)
	require.NoError(t, err)
	require.NotEqual(t, before, src.Hash())
}

func TestLoadRejectsBadSets(t *testing.T) {
	t.Parallel()
	cases := map[string]map[string]string{
		"duplicate version": {"000001_a.up.sql": "", "0001_b.up.sql": ""},
		"stray file":        {"000001_a.up.sql": "", "notes.txt": ""},
		"down without up":   {"000001_a.up.sql": "", "000002_b.down.sql": ""},
		"empty":             {},
	}
	for name, files := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			write(t, dir, files)
			_, err := migrations.Load(dir)
			require.Error(t, err)
		})
	}
	_, err := migrations.Load("/does/not/exist")
	require.ErrorContains(t, err, "not a readable directory")
}
