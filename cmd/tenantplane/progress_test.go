package main

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestProgressLineAndText(t *testing.T) {
	t.Parallel()
	run := Run{ID: "7", State: "running", Counts: RunCounts{Total: 1000, Done: 509, Failed: 3, Running: 12, Pending: 476}}
	require.Equal(t, "[###############...............] 512/1000  run 7 running · done 509 · failed 3 · running 12 · pending 476 · 48.0/s · ETA 10s",
		progressLine(run.progress(), 48, 30))
	require.Equal(t, "run 7 running · done 509 · failed 3 · running 12 · pending 476", progressText(run.progress(), 0), "no rate yet: no ETA")
	run.State, run.Counts = "done", RunCounts{Total: 10, Done: 8, Skipped: 2}
	require.Equal(t, "[##########] 10/10  run 7 done · done 8 · failed 0 · running 0 · pending 0 · skipped 2 · 3.0/s", progressLine(run.progress(), 3, 10))
}

func TestPlainProgressPrintsChangesOnly(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	clock := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	p := newProgress(&buf, false, func() time.Time { return clock })
	run := Run{ID: "3", State: "running", Counts: RunCounts{Total: 4, Pending: 4}}
	p.update(run.progress())
	clock = clock.Add(500 * time.Millisecond)
	p.update(run.progress()) // unchanged: nothing
	run.Counts = RunCounts{Total: 4, Done: 1, Running: 1, Pending: 2}
	p.update(run.progress()) // changed, but within 2s of the last line: nothing
	clock = clock.Add(2 * time.Second)
	p.update(run.progress())
	run.State, run.Counts = "done", RunCounts{Total: 4, Done: 4}
	clock = clock.Add(100 * time.Millisecond)
	p.update(run.progress()) // a new state always prints
	p.end()
	require.Equal(t, ""+
		"12:00:00 run 3 running · done 0 · failed 0 · running 0 · pending 4\n"+
		"12:00:02 run 3 running · done 1 · failed 0 · running 1 · pending 2 · 0.4/s · ETA 8s\n"+
		"12:00:02 run 3 done · done 4 · failed 0 · running 0 · pending 0 · 1.5/s\n",
		buf.String())
}

func TestProgressOfAnyOperation(t *testing.T) {
	t.Parallel()
	s := progressSnapshot{Label: "billing run 4 running", State: "running", Total: 8, Settled: 2, Left: 6, Ongoing: true,
		Counts: []string{"finalized 2"}}
	require.Equal(t, "[##......] 2/8  billing run 4 running · finalized 2 · 2.0/s · ETA 3s", progressLine(s, 2, 8))
}
