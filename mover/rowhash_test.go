package mover

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// The count and hash do not depend on how the stream is cut, nor on the
// rows' order; a changed row changes the hash.
func TestRowHasher(t *testing.T) {
	t.Parallel()
	stream := []byte("1\talice\t\\N\n2\tbob\tline\\none\n3\tcarol\t\\\\\n")
	whole := newRowHasher()
	_, _ = whole.Write(stream)
	require.Equal(t, int64(3), whole.rows)
	for cut := range len(stream) + 1 {
		h := newRowHasher()
		_, _ = h.Write(stream[:cut])
		_, _ = h.Write(stream[cut:])
		require.Equal(t, whole.summary(), h.summary(), "cut at %d", cut)
	}
	reordered := newRowHasher()
	_, _ = reordered.Write([]byte("3\tcarol\t\\\\\n1\talice\t\\N\n2\tbob\tline\\none\n"))
	require.Equal(t, whole.summary(), reordered.summary())
	changed := newRowHasher()
	_, _ = changed.Write([]byte("1\talice\t\\N\n2\tbob\tline\\ntwo\n3\tcarol\t\\\\\n"))
	require.Equal(t, whole.rows, changed.rows)
	require.NotEqual(t, whole.summary(), changed.summary())
}
