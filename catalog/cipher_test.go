package catalog_test

import (
	"encoding/hex"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/tenantplane/tenantplane/catalog"
)

func TestParseKey(t *testing.T) {
	t.Parallel()
	raw := strings.Repeat("ab", 32)
	want, _ := hex.DecodeString(raw)
	for _, in := range []string{raw, "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=", "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s"} {
		key, err := catalog.ParseKey(in)
		require.NoError(t, err, in)
		require.Equal(t, want, key)
	}
	for _, bad := range []string{"", "short", "c2hvcnQ=", strings.Repeat("zz", 32)} {
		_, err := catalog.ParseKey(bad)
		require.Error(t, err, bad)
	}
	_, err := catalog.ParseKey(catalog.NewKey())
	require.NoError(t, err)
}

func TestCipher(t *testing.T) {
	t.Parallel()
	key, _ := catalog.ParseKey(catalog.NewKey())
	c, err := catalog.NewCipher(key)
	require.NoError(t, err)
	sealed := c.Seal([]byte("hunter2"), []byte("row-1"))
	require.NotContains(t, string(sealed), "hunter2")
	require.NotEqual(t, sealed, c.Seal([]byte("hunter2"), []byte("row-1")), "nonces must differ")

	plain, err := c.Open(sealed, []byte("row-1"))
	require.NoError(t, err)
	require.Equal(t, "hunter2", string(plain))

	_, err = c.Open(sealed, []byte("row-2"))
	require.Error(t, err, "associated data binds the value to its row")
	other, _ := catalog.NewCipher(make([]byte, 32))
	_, err = other.Open(sealed, []byte("row-1"))
	require.Error(t, err, "another key does not open it")
	sealed[len(sealed)-1] ^= 1
	_, err = c.Open(sealed, []byte("row-1"))
	require.Error(t, err, "tampering is detected")
}
