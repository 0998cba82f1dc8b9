package datarights

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestCopyTextUnescaper: COPY's text escapes become JSON again (a doubled
// backslash one backslash, an escaped newline, return or tab a space),
// whatever the writes' boundaries, and an escape COPY never writes is an
// error.
func TestCopyTextUnescaper(t *testing.T) {
	t.Parallel()
	in := []byte(`{"a":"x\\\\ny\\"z"},\n\t"b":1}` + "\n" + `{"c":"\\\\\\\\"}` + "\n")
	want := `{"a":"x\\ny\"z"}, ` + ` "b":1}` + "\n" + `{"c":"\\\\"}` + "\n"
	for split := 0; split <= len(in); split++ {
		var out bytes.Buffer
		u := &copyTextUnescaper{w: &out}
		for _, part := range [][]byte{in[:split], in[split:]} {
			n, err := u.Write(part)
			require.NoError(t, err)
			require.Equal(t, len(part), n)
		}
		require.Equal(t, want, out.String(), "split at %d", split)
	}
	_, err := (&copyTextUnescaper{w: &bytes.Buffer{}}).Write([]byte(`\x41`))
	require.ErrorIs(t, err, errCopyEscape)
}
