package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// isTerminal reports whether w is a terminal, which gets a progress bar
// redrawn in place rather than a line per change.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// progress draws a run's progress: one line redrawn in place on a
// terminal, or a plain line whenever the counts change (at most one every
// plainEvery) otherwise.
type progress struct {
	w        io.Writer
	tty      bool
	now      func() time.Time
	began    time.Time
	first    int // tenants settled when the watch began, for the rate
	seen     bool
	drawn    bool // a bar is on the terminal's current line
	last     string
	lastAt   time.Time
	lastRun  Run
	barWidth int
}

const plainEvery = 2 * time.Second

func newProgress(w io.Writer, tty bool, now func() time.Time) *progress {
	return &progress{w: w, tty: tty, now: now, barWidth: 30}
}

func (p *progress) update(run Run) {
	now := p.now()
	if !p.seen {
		p.seen, p.began, p.first = true, now, run.Counts.settled()
	}
	rate := p.rate(run, now)
	if p.tty {
		fmt.Fprintf(p.w, "\r%s\x1b[K", progressLine(run, rate, p.barWidth))
		p.drawn = true
		return
	}
	line := progressText(run, rate)
	changed := run.State != p.lastRun.State || run.Counts != p.lastRun.Counts
	if changed && (now.Sub(p.lastAt) >= plainEvery || run.State != p.lastRun.State || p.last == "") {
		fmt.Fprintf(p.w, "%s %s\n", now.UTC().Format("15:04:05"), line)
		p.last, p.lastAt, p.lastRun = line, now, run
	}
}

// rate is tenants settled per second since the watch began.
func (p *progress) rate(run Run, now time.Time) float64 {
	elapsed := now.Sub(p.began).Seconds()
	if elapsed < 0.5 {
		return 0
	}
	return float64(run.Counts.settled()-p.first) / elapsed
}

func (p *progress) elapsed() time.Duration { return p.now().Sub(p.began) }

// end finishes the terminal's line.
func (p *progress) end() {
	if p.tty && p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}

// progressLine is the terminal's bar:
// [#########...........]  512/1000  failed 3 · running 12 · pending 473 · 48.2/s · ETA 10s
func progressLine(run Run, rate float64, width int) string {
	c := run.Counts
	filled := 0
	if c.Total > 0 {
		filled = c.settled() * width / c.Total
	}
	bar := strings.Repeat("#", filled) + strings.Repeat(".", width-filled)
	return fmt.Sprintf("[%s] %d/%d  %s", bar, c.settled(), c.Total, progressText(run, rate))
}

// progressText is the counts, rate and ETA in words.
func progressText(run Run, rate float64) string {
	c := run.Counts
	parts := []string{fmt.Sprintf("run %s %s", run.ID, run.State), fmt.Sprintf("done %d", c.Done), fmt.Sprintf("failed %d", c.Failed),
		fmt.Sprintf("running %d", c.Running), fmt.Sprintf("pending %d", c.Pending)}
	if c.Skipped > 0 {
		parts = append(parts, fmt.Sprintf("skipped %d", c.Skipped))
	}
	if rate > 0 {
		parts = append(parts, fmt.Sprintf("%.1f/s", rate))
		if left := c.Pending + c.Running; left > 0 && run.State == "running" {
			parts = append(parts, "ETA "+(time.Duration(float64(left)/rate*float64(time.Second))).Round(time.Second).String())
		}
	}
	return strings.Join(parts, " · ")
}
