package datarights

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/riverqueue/river"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"

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

// TestCountCopyRows: the rows of each COPY block of a plain dump, by
// table of schema public (a quoted name unquoted, an empty table at 0,
// schema_migrations and other schemas left out), whatever a row's length.
func TestCountCopyRows(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 200_000)
	dump := "--\n-- Data for Name: users\n--\n\nCOPY public.users (id, email) FROM stdin;\n1\ta@example.com\n2\t" + long + "\n\\.\n\n" +
		"COPY public.\"Odd \"\"Name\"\"\" (id) FROM stdin;\n7\n\\.\n" +
		"COPY public.empty (id) FROM stdin;\n\\.\n" +
		"COPY public.schema_migrations (version, dirty) FROM stdin;\n1\tf\n\\.\n" +
		"COPY other.things (id) FROM stdin;\n1\n2\n\\.\n" +
		"SELECT pg_catalog.setval('public.users_id_seq', 2, true);\n"
	counts, err := countCopyRows(strings.NewReader(dump))
	require.NoError(t, err)
	delete(counts, "\x00other")
	require.Equal(t, map[string]int64{"users": 2, `Odd "Name"`: 1, "empty": 0}, counts)
	require.NoError(t, verifyCounts(map[string]int64{"users": 2, `Odd "Name"`: 1, "empty": 0, "extra": 3}, counts))
	require.EqualError(t, verifyCounts(map[string]int64{"users": 1, `Odd "Name"`: 1}, counts),
		"restore verification failed: table empty is missing (the backup has 0 rows of it); table users has 1 rows, the backup 2")

	_, err = countCopyRows(strings.NewReader("COPY public.users (id) FROM stdin;\n1\n"))
	require.ErrorContains(t, err, "ends before its end marker")
}

// TestExclusiveRunsAJobOnceAtATime: while one run of a job holds its lock, a
// second (River's rescue of a job that runs long) is snoozed, not run; once
// the first is over the next one runs.
func TestExclusiveRunsAJobOnceAtATime(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	key, err := catalog.ParseKey(catalog.NewKey())
	require.NoError(t, err)
	cipher, err := catalog.NewCipher(key)
	require.NoError(t, err)
	store, err := catalog.Open(ctx, pgtest.NewDB(t), cipher, catalog.StoreConfig{})
	require.NoError(t, err)
	t.Cleanup(store.Close)
	s := &Service{store: store}
	inside, release := make(chan struct{}), make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- s.exclusive(ctx, "tenantplane.backup:1", func() error {
			close(inside)
			<-release
			return nil
		})
	}()
	<-inside
	ran := false
	err = s.exclusive(ctx, "tenantplane.backup:1", func() error { ran = true; return nil })
	var snooze *river.JobSnoozeError
	require.ErrorAs(t, err, &snooze)
	require.False(t, ran)
	require.NoError(t, s.exclusive(ctx, "tenantplane.backup:2", func() error { return nil }), "another job's lock is its own")
	close(release)
	require.NoError(t, <-first)
	require.NoError(t, s.exclusive(ctx, "tenantplane.backup:1", func() error { ran = true; return nil }))
	require.True(t, ran)
}
