package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// Run is a migration run as the admin API shows it.
type Run struct {
	ID            apiID       `json:"id"`
	State         string      `json:"state"`
	TargetVersion int64       `json:"target_version"`
	NewestVersion int64       `json:"newest_version"`
	Concurrency   int         `json:"concurrency"`
	PerServer     int         `json:"per_server"`
	Canary        int         `json:"canary"`
	MaxFailures   int         `json:"max_failures"`
	Actor         string      `json:"actor"`
	Reason        string      `json:"reason"`
	Counts        RunCounts   `json:"counts"`
	Failed        []RunTenant `json:"failed"`
	Running       []RunTenant `json:"running"`
	CreatedAt     apiTime     `json:"created_at"`
	StartedAt     apiTime     `json:"started_at"`
	FinishedAt    apiTime     `json:"finished_at"`
}

// RunCounts counts a run's tenants by state.
type RunCounts struct {
	Total   int `json:"total"`
	Pending int `json:"pending"`
	Running int `json:"running"`
	Done    int `json:"done"`
	Failed  int `json:"failed"`
	Skipped int `json:"skipped"`
}

// settled is how many tenants are through: done, failed or skipped.
func (c RunCounts) settled() int { return c.Done + c.Failed + c.Skipped }

// RunTenant is one tenant of a run.
type RunTenant struct {
	Slug        string  `json:"slug"`
	Server      string  `json:"server"`
	Canary      bool    `json:"canary"`
	State       string  `json:"state"`
	FromVersion int64   `json:"from_version"`
	ToVersion   int64   `json:"to_version"`
	Version     *int64  `json:"version"`
	Dirty       bool    `json:"dirty"`
	Attempts    int     `json:"attempts"`
	Error       string  `json:"error"`
	Note        string  `json:"note"`
	Worker      string  `json:"worker"`
	StartedAt   apiTime `json:"started_at"`
	FinishedAt  apiTime `json:"finished_at"`
}

func (r RunTenant) version() string {
	v := "-"
	if r.Version != nil {
		v = strconv.FormatInt(*r.Version, 10)
	}
	if r.Dirty {
		v += " (dirty)"
	}
	return v
}

// progress is what a progress bar shows of the run.
func (r Run) progress() progressSnapshot {
	c := r.Counts
	counts := []string{fmt.Sprintf("done %d", c.Done), fmt.Sprintf("failed %d", c.Failed),
		fmt.Sprintf("running %d", c.Running), fmt.Sprintf("pending %d", c.Pending)}
	if c.Skipped > 0 {
		counts = append(counts, fmt.Sprintf("skipped %d", c.Skipped))
	}
	return progressSnapshot{
		Label: fmt.Sprintf("run %s %s", r.ID, r.State), State: r.State,
		Total: c.Total, Settled: c.settled(), Left: c.Pending + c.Running, Ongoing: r.State == "running",
		Counts: counts,
	}
}

// terminal reports whether a run in this state changes no more by itself.
// Paused and halted runs wait for an operator.
func terminalRun(state string) bool {
	switch state {
	case "done", "failed", "cancelled", "halted", "paused":
		return true
	}
	return false
}

func newFanoutCmd() *cobra.Command {
	cmd, o := newAdminGroup("fanout", "Roll the tenant schema out to every tenant database: start, watch, pause, resume, cancel")
	cmd.Long = `Roll the tenant schema out to every tenant database.

A run takes every active and suspended tenant (or those named) to one version
of the tenant migrations: a canary wave first (one tenant per server unless
--canary says otherwise), then the rest, at most --concurrency at once and
--per-server on one server. When more than --max-failures tenants fail, or a
canary does, the run halts: the tenants being migrated finish, no others
start. Each migration step is a transaction, so a failed tenant stays at its
previous version and resume tries it again.`
	cmd.AddCommand(newFanoutStartCmd(o), newFanoutStatusCmd(o), newFanoutListCmd(o), newFanoutTenantsCmd(o))
	for _, a := range []struct{ action, done, short string }{
		{"pause", "Paused", "Pause a run: the tenants being migrated finish, no others start"},
		{"resume", "Resumed", "Resume a paused, halted or failed run; its failed tenants are tried again"},
		{"cancel", "Cancelled", "Cancel a run: the tenants being migrated finish, the pending ones are skipped"},
	} {
		cmd.AddCommand(newFanoutActionCmd(o, a.action, a.done, a.short))
	}
	return cmd
}

func newFanoutStartCmd(o *adminOptions) *cobra.Command {
	var (
		target, concurrency, perServer, canary, maxFailures int
		tenants                                             []string
		watch                                               watchFlags
	)
	cmd := &cobra.Command{
		Use:   "start",
		Short: "Start a migration run (to the newest version unless --target says otherwise)",
		Example: `  tenantplane fanout start --watch
  tenantplane fanout start --target 12 --concurrency 20 --per-server 5 --canary 3 --max-failures 2 --watch
  tenantplane fanout start --tenants acme,globex`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Only the flags given: the API's defaults apply to the others.
			body := map[string]any{}
			for _, f := range []struct {
				flag, field string
				v           int
			}{
				{"target", "target_version", target}, {"concurrency", "concurrency", concurrency}, {"per-server", "per_server", perServer},
				{"canary", "canary", canary}, {"max-failures", "max_failures", maxFailures},
			} {
				if !cmd.Flags().Changed(f.flag) {
					continue
				}
				if f.v < 0 {
					return fmt.Errorf("--%s must not be negative, got %d", f.flag, f.v)
				}
				body[f.field] = f.v
			}
			if len(tenants) > 0 {
				body["tenants"] = tenants
			}
			raw, err := o.call(cmd, "POST", "/migrations/runs", nil, body)
			if err != nil {
				return err
			}
			var run Run
			if err := json.Unmarshal(raw, &run); err != nil {
				return fmt.Errorf("the admin API's answer is not the JSON expected: %w", err)
			}
			if !watch.on {
				return o.print(cmd, raw, &run, func() error { return writeRunStarted(cmd.OutOrStdout(), run) })
			}
			if !o.json {
				if err := writeRunStarted(cmd.OutOrStdout(), run); err != nil {
					return err
				}
			}
			return o.watch(cmd, string(run.ID), watch)
		},
	}
	f := cmd.Flags()
	f.IntVar(&target, "target", 0, "version to take the tenants to, up or down (default: the newest)")
	f.IntVar(&concurrency, "concurrency", 0, "tenants migrated at once in total (default 10)")
	f.IntVar(&perServer, "per-server", 0, "tenants of one server migrated at once (default: --concurrency)")
	f.IntVar(&canary, "canary", 0, "tenants that go first, alone (default: one per server; 0: no canary wave)")
	f.IntVar(&maxFailures, "max-failures", 0, "failed tenants tolerated before the run halts")
	f.StringSliceVar(&tenants, "tenants", nil, "only these tenants (slugs, comma-separated; default: every active and suspended one)")
	watch.registerFanout(cmd)
	return cmd
}

func newFanoutStatusCmd(o *adminOptions) *cobra.Command {
	var watch watchFlags
	cmd := &cobra.Command{
		Use:   "status RUN",
		Short: "Show a run: its counts, the tenants being migrated and every failed tenant with its error",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if watch.on {
				return o.watch(cmd, args[0], watch)
			}
			raw, err := o.call(cmd, "GET", pathf("/migrations/runs/%s", args[0]), nil, nil)
			if err != nil {
				return err
			}
			var run Run
			return o.print(cmd, raw, &run, func() error { return writeRun(cmd.OutOrStdout(), run) })
		},
	}
	watch.registerFanout(cmd)
	return cmd
}

func newFanoutListCmd(o *adminOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the latest runs, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			raw, err := o.call(cmd, "GET", "/migrations/runs", nil, nil)
			if err != nil {
				return err
			}
			var page struct {
				Runs []Run `json:"runs"`
			}
			return o.print(cmd, raw, &page, func() error { return writeRuns(cmd.OutOrStdout(), page.Runs) })
		},
	}
}

func newFanoutTenantsCmd(o *adminOptions) *cobra.Command {
	var state string
	cmd := &cobra.Command{
		Use:   "tenants RUN",
		Short: "List a run's tenants (--state pending, running, done, failed or skipped)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := map[string][]string{}
			if state != "" {
				q["state"] = []string{state}
			}
			raw, err := o.callAll(cmd, pathf("/migrations/runs/%s/tenants", args[0]), q, "tenants")
			if err != nil {
				return err
			}
			var page struct {
				Tenants []RunTenant `json:"tenants"`
			}
			return o.print(cmd, raw, &page, func() error { return writeRunTenants(cmd.OutOrStdout(), page.Tenants) })
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "only tenants in this state")
	return cmd
}

func newFanoutActionCmd(o *adminOptions, action, done, short string) *cobra.Command {
	var watch watchFlags
	cmd := &cobra.Command{
		Use:   action + " RUN",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := o.call(cmd, "POST", pathf("/migrations/runs/%s/"+action, args[0]), nil, nil)
			if err != nil {
				return err
			}
			var run Run
			err = o.print(cmd, raw, &run, func() error {
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "%s run %s; it is now %s.\n", done, run.ID, run.State)
				return err
			})
			if err != nil || !watch.on {
				return err
			}
			return o.watch(cmd, args[0], watch)
		},
	}
	if action == "resume" {
		watch.registerFanout(cmd)
	}
	return cmd
}

// registerFanout adds --watch and --interval to a fan-out command.
func (w *watchFlags) registerFanout(cmd *cobra.Command) {
	w.register(cmd, "follow the run until it ends, pauses or halts: a progress bar in a terminal, a line per change otherwise", 500*time.Millisecond)
}

// watch follows a run until it stops changing by itself. It ends with an
// error when the run halted, failed or was cancelled, so that scripts stop.
func (o *adminOptions) watch(cmd *cobra.Command, id string, w watchFlags) error {
	out := cmd.OutOrStdout()
	p := newProgress(out, isTerminal(out), time.Now)
	return o.follow(cmd, w, pathf("/migrations/runs/%s", id), "run "+id, "tenantplane fanout status "+id+" --watch", p.end,
		func(raw json.RawMessage) (bool, error) {
			var run Run
			if err := json.Unmarshal(raw, &run); err != nil {
				return false, fmt.Errorf("the admin API's answer is not the JSON expected: %w", err)
			}
			if !terminalRun(run.State) {
				if !o.json {
					p.update(run.progress())
				}
				return false, nil
			}
			if o.json {
				if err := writeJSON(out, raw); err != nil {
					return true, err
				}
			} else {
				p.update(run.progress())
				p.end()
				if err := writeRunEnd(out, run, p.elapsed()); err != nil {
					return true, err
				}
			}
			return true, runOutcome(run)
		})
}

// runOutcome is the exit of a watch: nil when the run is done or paused.
func runOutcome(run Run) error {
	switch run.State {
	case "done", "paused":
		return nil
	case "cancelled":
		return fmt.Errorf("run %s was cancelled: %s", run.ID, run.Reason)
	}
	return fmt.Errorf("run %s %s: %s; fix the failed tenants listed above, then: tenantplane fanout resume %s", run.ID, run.State, run.Reason, run.ID)
}

func writeRunStarted(w io.Writer, run Run) error {
	_, err := fmt.Fprintf(w, "Started run %s: %d tenants to version %d (concurrency %d, per server %d, canary %d, max failures %d).\n",
		run.ID, run.Counts.Total, run.TargetVersion, run.Concurrency, run.PerServer, run.Canary, run.MaxFailures)
	if err == nil && run.State == "running" {
		_, err = fmt.Fprintf(w, "Follow it with: tenantplane fanout status %s --watch\n", run.ID)
	}
	return err
}

// writeRunEnd is the summary once a watched run stops changing by itself.
func writeRunEnd(w io.Writer, run Run, took time.Duration) error {
	c := run.Counts
	msg := fmt.Sprintf("Run %s is %s: %d done, %d failed, %d skipped, %d pending of %d (watched for %s).",
		run.ID, run.State, c.Done, c.Failed, c.Skipped, c.Pending, c.Total, took.Round(100*time.Millisecond))
	if run.Reason != "" {
		msg += " " + strings.ToUpper(run.Reason[:1]) + run.Reason[1:] + "."
	}
	if _, err := fmt.Fprintln(w, msg); err != nil {
		return err
	}
	if len(run.Failed) > 0 {
		fmt.Fprintln(w)
		return writeRunTenants(w, run.Failed)
	}
	return nil
}

// writeRun prints a run, a field a line, then its running and failed tenants.
func writeRun(w io.Writer, run Run) error {
	c := run.Counts
	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	t.row("RUN:", string(run.ID))
	t.row("STATE:", run.State)
	t.row("TARGET:", fmt.Sprintf("version %d (newest %d)", run.TargetVersion, run.NewestVersion))
	t.row("TENANTS:", fmt.Sprintf("%d: done %d, failed %d, running %d, pending %d, skipped %d", c.Total, c.Done, c.Failed, c.Running, c.Pending, c.Skipped))
	t.row("LIMITS:", fmt.Sprintf("concurrency %d, per server %d, canary %d, max failures %d", run.Concurrency, run.PerServer, run.Canary, run.MaxFailures))
	if run.Reason != "" {
		t.row("REASON:", run.Reason)
	}
	t.row("BY:", run.Actor)
	t.row("CREATED:", run.CreatedAt.String())
	t.row("FINISHED:", run.FinishedAt.String())
	if err := t.flush(); err != nil {
		return err
	}
	for _, list := range []struct {
		title string
		rows  []RunTenant
	}{{"Running", run.Running}, {"Failed", run.Failed}} {
		if len(list.rows) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s (%d):\n", list.title, len(list.rows))
		if err := writeRunTenants(w, list.rows); err != nil {
			return err
		}
	}
	return nil
}

func writeRuns(w io.Writer, runs []Run) error {
	if len(runs) == 0 {
		_, err := fmt.Fprintln(w, "No migration runs; start one with: tenantplane fanout start --watch")
		return err
	}
	t := newTable(w, "RUN", "STATE", "TARGET", "TENANTS", "DONE", "FAILED", "PENDING", "CREATED", "FINISHED")
	for _, r := range runs {
		c := r.Counts
		t.row(string(r.ID), r.State, strconv.FormatInt(r.TargetVersion, 10), strconv.Itoa(c.Total), strconv.Itoa(c.Done),
			strconv.Itoa(c.Failed), strconv.Itoa(c.Pending+c.Running), r.CreatedAt.String(), r.FinishedAt.String())
	}
	return t.flush()
}

func writeRunTenants(w io.Writer, rows []RunTenant) error {
	if len(rows) == 0 {
		_, err := fmt.Fprintln(w, "No tenants.")
		return err
	}
	t := newTable(w, "SLUG", "SERVER", "STATE", "FROM", "VERSION", "ATTEMPTS", "ERROR")
	for _, r := range rows {
		msg := r.Error
		if msg == "" {
			msg = r.Note
		}
		slug := r.Slug
		if r.Canary {
			slug += " (canary)"
		}
		t.row(slug, r.Server, r.State, strconv.FormatInt(r.FromVersion, 10), r.version(), strconv.Itoa(r.Attempts), truncate(msg, 160))
	}
	return t.flush()
}
