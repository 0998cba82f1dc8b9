package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/spf13/cobra"
)

// Evacuation is an evacuation (or a rebalance's moves) as the admin API
// shows it.
type Evacuation struct {
	ID          apiID   `json:"id"`
	Kind        string  `json:"kind"`
	Server      string  `json:"server"`
	State       string  `json:"state"`
	Concurrency int     `json:"concurrency"`
	PerServer   int     `json:"per_server"`
	Mode        string  `json:"mode"`
	Total       int     `json:"total"`
	Pending     int     `json:"pending"`
	Moving      int     `json:"moving"`
	Moved       int     `json:"moved"`
	Failed      int     `json:"failed"`
	Skipped     int     `json:"skipped"`
	LastError   string  `json:"last_error"`
	Actor       string  `json:"actor"`
	CreatedAt   apiTime `json:"created_at"`
	FinishedAt  apiTime `json:"finished_at"`
	Tenants     []struct {
		Tenant string `json:"tenant"`
		From   string `json:"from"`
		To     string `json:"to"`
		ToPool string `json:"to_pool"` // a pooled tenant's target pool database
		Reason string `json:"reason"`
		State  string `json:"state"`
		MoveID apiID  `json:"move_id"`
		Phase  string `json:"phase"`
		Error  string `json:"error"`
	} `json:"tenants"`
}

// terminalEvacuation reports whether an evacuation in this state changes no
// more by itself (a cancelled one may still have moves to finish).
func terminalEvacuation(e Evacuation) bool {
	return e.State == "done" || e.State == "failed" || (e.State == "cancelled" && !e.FinishedAt.IsZero())
}

func (e Evacuation) name() string {
	if e.Kind == "rebalance" {
		return "rebalance " + string(e.ID)
	}
	return fmt.Sprintf("evacuation %s of %s", e.ID, e.Server)
}

// progress is what the bar shows: tenants moved or failed of the total.
func (e Evacuation) progress() progressSnapshot {
	counts := []string{fmt.Sprintf("moved %d", e.Moved), fmt.Sprintf("failed %d", e.Failed), fmt.Sprintf("moving %d", e.Moving),
		fmt.Sprintf("pending %d", e.Pending)}
	if e.Skipped > 0 {
		counts = append(counts, fmt.Sprintf("skipped %d", e.Skipped))
	}
	return progressSnapshot{
		Label: e.name() + " " + e.State, State: e.State, Total: e.Total, Settled: e.Moved + e.Failed + e.Skipped,
		Left: e.Pending + e.Moving, Ongoing: e.State == "running", Counts: counts,
	}
}

func newEvacuationsCmd() *cobra.Command {
	cmd, o := newAdminGroup("evacuations", "Follow, pause, resume and cancel evacuations and rebalances (start one with: tenantplane servers drain NAME --evacuate)")
	cmd.AddCommand(newEvacuationsListCmd(o), newEvacuationsShowCmd(o),
		newEvacuationActionCmd(o, "pause", "Start no new move; the moves under way go on"),
		newEvacuationActionCmd(o, "resume", "Start moves again"),
		newEvacuationActionCmd(o, "cancel", "Start no new move, ever: the tenants not started stay; the moves under way finish"))
	return cmd
}

func newEvacuationsListCmd(o *adminOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the evacuations and rebalances, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			raw, err := o.callAll(cmd, "/evacuations", nil, "evacuations")
			if err != nil {
				return err
			}
			var page struct {
				Evacuations []Evacuation `json:"evacuations"`
			}
			return o.print(cmd, raw, &page, func() error { return writeEvacuations(cmd.OutOrStdout(), page.Evacuations) })
		},
	}
}

func writeEvacuations(w io.Writer, list []Evacuation) error {
	if len(list) == 0 {
		_, err := fmt.Fprintln(w, "No evacuations; start one with: tenantplane servers drain NAME --evacuate --watch")
		return err
	}
	t := newTable(w, "ID", "KIND", "SERVER", "STATE", "MOVED", "FAILED", "MOVING", "PENDING", "TOTAL", "CREATED", "FINISHED")
	for _, e := range list {
		t.row(string(e.ID), e.Kind, dash(e.Server), e.State, strconv.Itoa(e.Moved), strconv.Itoa(e.Failed), strconv.Itoa(e.Moving),
			strconv.Itoa(e.Pending), strconv.Itoa(e.Total), e.CreatedAt.String(), e.FinishedAt.String())
	}
	return t.flush()
}

func newEvacuationsShowCmd(o *adminOptions) *cobra.Command {
	var watch watchFlags
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Show an evacuation: its counts and each tenant's move",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if watch.on {
				return o.watchEvacuation(cmd, args[0], watch)
			}
			raw, err := o.call(cmd, "GET", pathf("/evacuations/%s", args[0]), nil, nil)
			if err != nil {
				return err
			}
			var e Evacuation
			return o.print(cmd, raw, &e, func() error { return writeEvacuation(cmd.OutOrStdout(), e) })
		},
	}
	watch.registerEvacuation(cmd)
	return cmd
}

func newEvacuationActionCmd(o *adminOptions, action, short string) *cobra.Command {
	return &cobra.Command{
		Use:   action + " ID",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := o.call(cmd, "POST", pathf("/evacuations/%s/"+action, args[0]), nil, nil)
			if err != nil {
				return err
			}
			var e Evacuation
			return o.print(cmd, raw, &e, func() error {
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "%s is %s: moved %d, failed %d, moving %d, pending %d of %d.\n",
					capitalize(e.name()), e.State, e.Moved, e.Failed, e.Moving, e.Pending, e.Total)
				return err
			})
		},
	}
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return string(s[0]-'a'+'A') + s[1:]
}

func (w *watchFlags) registerEvacuation(cmd *cobra.Command) {
	w.register(cmd, "follow the evacuation until it is over: a progress bar in a terminal, a line per change otherwise", time.Second)
}

// watchEvacuation follows an evacuation until it is over; it ends with an
// error when any tenant did not move, so that scripts stop.
func (o *adminOptions) watchEvacuation(cmd *cobra.Command, id string, w watchFlags) error {
	out := cmd.OutOrStdout()
	p := newProgress(out, isTerminal(out), time.Now)
	return o.follow(cmd, w, pathf("/evacuations/%s", id), "evacuation "+id, "tenantplane evacuations show "+id+" --watch", p.end,
		func(raw json.RawMessage) (bool, error) {
			var e Evacuation
			if err := json.Unmarshal(raw, &e); err != nil {
				return false, fmt.Errorf("the admin API's answer is not the JSON expected: %w", err)
			}
			if !terminalEvacuation(e) {
				if !o.json {
					p.update(e.progress())
				}
				return false, nil
			}
			if o.json {
				if err := writeJSON(out, raw); err != nil {
					return true, err
				}
			} else {
				p.update(e.progress())
				p.end()
				if err := writeEvacuation(out, e); err != nil {
					return true, err
				}
			}
			if e.Failed > 0 {
				return true, fmt.Errorf("%s: %d of %d tenants did not move (see each one's error above)", e.name(), e.Failed, e.Total)
			}
			return true, nil
		})
}

// writeEvacuation prints an evacuation's summary and its tenants.
func writeEvacuation(w io.Writer, e Evacuation) error {
	msg := fmt.Sprintf("%s is %s: moved %d, failed %d, moving %d, pending %d", capitalize(e.name()), e.State, e.Moved, e.Failed, e.Moving, e.Pending)
	if e.Skipped > 0 {
		msg += fmt.Sprintf(", skipped %d", e.Skipped)
	}
	msg += fmt.Sprintf(" of %d (concurrency %d, %d per server", e.Total, e.Concurrency, e.PerServer)
	if e.Mode != "" {
		msg += ", mode " + e.Mode
	}
	msg += ")."
	if e.LastError != "" {
		msg += " " + sentence(e.LastError)
	}
	if _, err := fmt.Fprintln(w, msg); err != nil {
		return err
	}
	if len(e.Tenants) == 0 {
		return nil
	}
	t := newTable(w, "TENANT", "FROM", "TO", "STATE", "MOVE", "PHASE", "ERROR")
	for _, r := range e.Tenants {
		move := string(r.MoveID)
		if move == "" {
			move = "-"
		}
		to := dash(r.To)
		if r.ToPool != "" {
			to += " (" + r.ToPool + ")"
		}
		t.row(r.Tenant, r.From, to, r.State, move, dash(r.Phase), dash(truncate(r.Error, 100)))
	}
	return t.flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// RebalancePlan is a rebalance's plan as the admin API shows it.
type RebalancePlan struct {
	Plan struct {
		Measure string `json:"measure"`
		Moves   []struct {
			Tenant string  `json:"tenant"`
			From   string  `json:"from"`
			To     string  `json:"to"`
			Score  float64 `json:"score"`
			Why    string  `json:"why"`
		} `json:"moves"`
		Servers []struct {
			Server        string  `json:"server"`
			State         string  `json:"state"`
			Capacity      int     `json:"capacity"`
			TenantsBefore int     `json:"tenants_before"`
			TenantsAfter  int     `json:"tenants_after"`
			ScoreBefore   float64 `json:"score_before"`
			ScoreAfter    float64 `json:"score_after"`
		} `json:"servers"`
		SpreadBefore float64 `json:"spread_before"`
		SpreadAfter  float64 `json:"spread_after"`
	} `json:"plan"`
	Evacuation *Evacuation `json:"evacuation"`
}

func newServersRebalanceCmd(o *adminOptions) *cobra.Command {
	var (
		req struct {
			DryRun      bool   `json:"dry_run"`
			Concurrency int    `json:"concurrency,omitempty"`
			PerServer   int    `json:"per_server,omitempty"`
			Mode        string `json:"mode,omitempty"`
			MaxAttempts int    `json:"max_attempts,omitempty"`
		}
		watch watchFlags
	)
	cmd := &cobra.Command{
		Use:   "rebalance [--dry-run]",
		Short: "Even out the active servers' load (database size and recent requests) by moving tenants",
		Long: `Plan moves that even out the load of the active servers, and carry them out.

The measure is a load score: each tenant's share of the fleet's database bytes
(pg_database_size) and of its api_calls in the current and previous hour, half
each, in points of 100 for the fleet. A server's score is its tenants'; the
spread is the highest active server's score less the lowest's. The plan moves
the one tenant whose move lowers the spread most, again (each tenant once), while a
move lowers it by half a point or more, never past a server's capacity.

--dry-run prints the plan and its expected effect; without it the moves start,
bounded like an evacuation's (tenantplane evacuations show ID follows them).`,
		Example: `  tenantplane servers rebalance --dry-run
  tenantplane servers rebalance --mode copy --watch`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			raw, err := o.call(cmd, "POST", "/servers/rebalance", nil, req)
			if err != nil {
				return err
			}
			var r RebalancePlan
			if err := json.Unmarshal(raw, &r); err != nil {
				return fmt.Errorf("the admin API's answer is not the JSON expected: %w", err)
			}
			if !watch.on || r.Evacuation == nil {
				return o.print(cmd, raw, &r, func() error { return writeRebalance(cmd.OutOrStdout(), r) })
			}
			if !o.json {
				if err := writeRebalance(cmd.OutOrStdout(), r); err != nil {
					return err
				}
			}
			return o.watchEvacuation(cmd, string(r.Evacuation.ID), watch)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&req.DryRun, "dry-run", false, "print the plan and its effect; move nothing")
	f.IntVar(&req.Concurrency, "concurrency", 0, "most moves under way at once (default: the API's, 4)")
	f.IntVar(&req.PerServer, "per-server", 0, "most moves under way at once into one server (default: the API's, 2)")
	f.StringVar(&req.Mode, "mode", "", "online or copy (default: online when possible, else the tenant is reported)")
	f.IntVar(&req.MaxAttempts, "max-attempts", 0, "moves of one tenant tried before it is reported failed (default: the API's, 3)")
	watch.registerEvacuation(cmd)
	return cmd
}

func writeRebalance(w io.Writer, r RebalancePlan) error {
	p := r.Plan
	if _, err := fmt.Fprintf(w, "Measure: %s.\n\n", p.Measure); err != nil {
		return err
	}
	if len(p.Moves) == 0 {
		if _, err := fmt.Fprintf(w, "No move lowers the spread (%.1f points) by half a point or more: nothing to do.\n", p.SpreadBefore); err != nil {
			return err
		}
	} else {
		t := newTable(w, "TENANT", "FROM", "TO", "SCORE", "WHY")
		for _, m := range p.Moves {
			t.row(m.Tenant, m.From, m.To, strconv.FormatFloat(m.Score, 'f', 1, 64), m.Why)
		}
		if err := t.flush(); err != nil {
			return err
		}
		if _, err := fmt.Fprintln(w); err != nil {
			return err
		}
	}
	t := newTable(w, "SERVER", "STATE", "TENANTS", "CAPACITY", "SCORE_BEFORE", "SCORE_AFTER")
	for _, s := range p.Servers {
		t.row(s.Server, s.State, fmt.Sprintf("%d -> %d", s.TenantsBefore, s.TenantsAfter), strconv.Itoa(s.Capacity),
			strconv.FormatFloat(s.ScoreBefore, 'f', 1, 64), strconv.FormatFloat(s.ScoreAfter, 'f', 1, 64))
	}
	if err := t.flush(); err != nil {
		return err
	}
	msg := fmt.Sprintf("\nSpread: %.1f -> %.1f points.", p.SpreadBefore, p.SpreadAfter)
	switch {
	case r.Evacuation != nil:
		msg += fmt.Sprintf(" Moving %d tenants (rebalance %s); follow it with: tenantplane evacuations show %s --watch", len(p.Moves), r.Evacuation.ID, r.Evacuation.ID)
	case len(p.Moves) > 0:
		msg += " A dry run: nothing moved; run it without --dry-run to carry the plan out."
	}
	_, err := fmt.Fprintln(w, msg)
	return err
}
