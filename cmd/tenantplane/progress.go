package main

import (
	"fmt"
	"io"
	"os"
	"slices"
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

// progressSnapshot is one look at a long operation that works through a
// known number of items: a migration run's tenants, a billing run's invoices,
// a tenant move's steps. The operation's own type says how its state maps to
// it (Run.progress), so that the bar knows nothing of any of them.
type progressSnapshot struct {
	Label   string   // the operation and its state, first in the text: "run 7 running"
	State   string   // a change of state is printed at once, however soon
	Total   int      // items the operation works through
	Settled int      // items through, whatever their outcome: the bar and the rate
	Left    int      // items still to do, for the ETA
	Ongoing bool     // the operation is at work, so an ETA means something
	Counts  []string // the counts in words, after the label: "done 509", "failed 3"
	NoRate  bool     // the items are steps of uneven length (a move's phases): no rate, no ETA
}

// sameCounts reports whether two snapshots show the same state and counts.
func sameCounts(a, b progressSnapshot) bool {
	return a.Label == b.Label && a.State == b.State && a.Total == b.Total && a.Settled == b.Settled &&
		a.Left == b.Left && a.Ongoing == b.Ongoing && a.NoRate == b.NoRate && slices.Equal(a.Counts, b.Counts)
}

// progress draws an operation's progress: one line redrawn in place on a
// terminal, or a plain line whenever the counts change (at most one every
// plainEvery) otherwise.
type progress struct {
	w        io.Writer
	tty      bool
	now      func() time.Time
	began    time.Time
	first    int // items settled when the watch began, for the rate
	seen     bool
	drawn    bool // a bar is on the terminal's current line
	last     string
	lastAt   time.Time
	lastSnap progressSnapshot
	barWidth int
}

const plainEvery = 2 * time.Second

func newProgress(w io.Writer, tty bool, now func() time.Time) *progress {
	return &progress{w: w, tty: tty, now: now, barWidth: 30}
}

func (p *progress) update(s progressSnapshot) {
	now := p.now()
	if !p.seen {
		p.seen, p.began, p.first = true, now, s.Settled
	}
	rate := p.rate(s, now)
	if p.tty {
		fmt.Fprintf(p.w, "\r%s\x1b[K", progressLine(s, rate, p.barWidth))
		p.drawn = true
		return
	}
	line := progressText(s, rate)
	if !sameCounts(s, p.lastSnap) && (now.Sub(p.lastAt) >= plainEvery || s.State != p.lastSnap.State || p.last == "") {
		fmt.Fprintf(p.w, "%s %s\n", now.UTC().Format("15:04:05"), line)
		p.last, p.lastAt, p.lastSnap = line, now, s
	}
}

// rate is items settled per second since the watch began.
func (p *progress) rate(s progressSnapshot, now time.Time) float64 {
	elapsed := now.Sub(p.began).Seconds()
	if elapsed < 0.5 || s.NoRate {
		return 0
	}
	return float64(s.Settled-p.first) / elapsed
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
// [#########...........] 512/1000  run 7 running · done 509 · failed 3 · running 12 · pending 476 · 48.2/s · ETA 10s
func progressLine(s progressSnapshot, rate float64, width int) string {
	filled := 0
	if s.Total > 0 {
		filled = s.Settled * width / s.Total
	}
	bar := strings.Repeat("#", filled) + strings.Repeat(".", width-filled)
	return fmt.Sprintf("[%s] %d/%d  %s", bar, s.Settled, s.Total, progressText(s, rate))
}

// progressText is the label, counts, rate and ETA in words.
func progressText(s progressSnapshot, rate float64) string {
	parts := append([]string{s.Label}, s.Counts...)
	if rate > 0 {
		parts = append(parts, fmt.Sprintf("%.1f/s", rate))
		if s.Left > 0 && s.Ongoing {
			parts = append(parts, "ETA "+(time.Duration(float64(s.Left)/rate*float64(time.Second))).Round(time.Second).String())
		}
	}
	return strings.Join(parts, " · ")
}
