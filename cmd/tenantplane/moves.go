package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
)

// Move is a tenant move as the admin API shows it.
type Move struct {
	ID              apiID   `json:"id"`
	Kind            string  `json:"kind"`
	Pool            string  `json:"pool"`
	Plan            string  `json:"plan"`
	FromPlan        string  `json:"from_plan"`
	Tenant          string  `json:"tenant"`
	From            string  `json:"from"`
	To              string  `json:"to"`
	Mode            string  `json:"mode"`
	ModeReason      string  `json:"mode_reason"`
	Phase           string  `json:"phase"`
	RowsCopied      int64   `json:"rows_copied"`
	BytesCopied     int64   `json:"bytes_copied"`
	LagBytes        int64   `json:"lag_bytes"`
	WritePauseMS    *int64  `json:"write_pause_ms"`
	KeepUntil       apiTime `json:"keep_until"`
	KeepInStep      bool    `json:"keep_in_step"`
	KeepReason      string  `json:"keep_reason"`
	KeepLagBytes    int64   `json:"keep_lag_bytes"`
	Reverts         apiID   `json:"reverts"`
	CancelRequested bool    `json:"cancel_requested"`
	LastError       string  `json:"last_error"`
	Actor           string  `json:"actor"`
	CreatedAt       apiTime `json:"created_at"`
	UpdatedAt       apiTime `json:"updated_at"`
	FinishedAt      apiTime `json:"finished_at"`
}

// movePhases are the phases of a move that goes through, in order; the bar
// counts them as its steps.
var movePhases = []string{"pending", "copying", "catching_up", "fenced", "verifying", "switched", "done"}

// terminalMove reports whether a move in this phase changes no more by itself.
func terminalMove(phase string) bool {
	return phase == "done" || phase == "aborted" || phase == "reverted"
}

// phase is the move's phase for display, with a cancel under way.
func (m Move) phase() string {
	if m.CancelRequested && !terminalMove(m.Phase) {
		return m.Phase + " (cancelling)"
	}
	return m.Phase
}

// writePause is the longest time the tenant's writes were held, or "-".
func (m Move) writePause() string {
	if m.WritePauseMS == nil {
		return "-"
	}
	return (time.Duration(*m.WritePauseMS) * time.Millisecond).String()
}

// progress is what a progress bar shows of the move: its phases as steps,
// and the data carried so far. A rate of phases means nothing: none is shown.
func (m Move) progress() progressSnapshot {
	step := max(slices.Index(movePhases, m.Phase), 0)
	if terminalMove(m.Phase) {
		step = len(movePhases) - 1
	}
	counts := []string{fmt.Sprintf("%s rows", humanize.Comma(m.RowsCopied)), formatBytes(m.BytesCopied) + " copied"}
	if m.Mode == "online" {
		counts = append(counts, "lag "+formatBytes(m.LagBytes))
	}
	if m.WritePauseMS != nil {
		counts = append(counts, "write pause "+m.writePause())
	}
	return progressSnapshot{
		Label: fmt.Sprintf("move %s %s", m.ID, m.phase()), State: m.Phase,
		Total: len(movePhases) - 1, Settled: step, Left: len(movePhases) - 1 - step, Ongoing: !terminalMove(m.Phase),
		Counts: counts, NoRate: true,
	}
}

func newMovesCmd() *cobra.Command {
	cmd, o := newAdminGroup("moves", "Follow, cancel and revert tenant moves (start one with: tenantplane tenants move SLUG --to SERVER)")
	cmd.Long = `Follow, cancel and revert tenant moves.

A move carries a tenant's database to another server: it copies the data
(copying), streams the changes made since (catching_up, online mode only),
fences the source so no write lands there (fenced), compares both sides table
by table (verifying) and flips the catalog (switched, done). The tenant's
requests are held, not failed, while the fence is up. A cancelled or failed
move ends aborted with the source serving as before; a done one can be
reverted while its source is kept.

Start a move with: tenantplane tenants move SLUG --to SERVER --watch`
	cmd.AddCommand(newMovesListCmd(o), newMovesShowCmd(o), newMovesCancelCmd(o), newMovesRevertCmd(o))
	return cmd
}

// newTenantsMoveCmd is `tenants move`: it belongs to the tenant commands,
// and shares the moves' output.
func newTenantsMoveCmd(o *adminOptions) *cobra.Command {
	var (
		to, mode string
		watch    watchFlags
	)
	cmd := &cobra.Command{
		Use:   "move SLUG --to SERVER",
		Short: "Move a tenant's database to another server, online when both servers allow it",
		Long: `Move a tenant's database to another server.

Without --mode the move is online (logical replication: writes pause only for
the final catch-up, under a second) when both servers allow it; when they do
not, the call is refused with the reason and the write pause a copy-mode move
would take. --mode copy holds the tenant's writes for the whole copy.

While the move is open, suspend, resume, delete, restore and
rotate-credentials are refused; API keys can still be issued and revoked.`,
		Example: `  tenantplane tenants move acme --to pg-2 --watch
  tenantplane tenants move acme --to pg-2 --mode copy`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if mode != "" && mode != "online" && mode != "copy" {
				return fmt.Errorf("--mode must be online or copy, got %q", mode)
			}
			raw, err := o.call(cmd, "POST", pathf("/tenants/%s/move", args[0]), nil, map[string]string{"to": to, "mode": mode})
			if err != nil {
				return err
			}
			return o.moveStarted(cmd, raw, watch)
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "the server to move the tenant to (required)")
	cmd.Flags().StringVar(&mode, "mode", "", `online or copy (default: online when both servers allow it)`)
	_ = cmd.MarkFlagRequired("to")
	watch.registerMove(cmd)
	return cmd
}

func newMovesListCmd(o *adminOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the moves, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			raw, err := o.callAll(cmd, "/moves", nil, "moves")
			if err != nil {
				return err
			}
			var page struct {
				Moves []Move `json:"moves"`
			}
			return o.print(cmd, raw, &page, func() error { return writeMoves(cmd.OutOrStdout(), page.Moves) })
		},
	}
}

func newMovesShowCmd(o *adminOptions) *cobra.Command {
	var watch watchFlags
	cmd := &cobra.Command{
		Use:   "show MOVE",
		Short: "Show a move: its phase, the data carried, the write pause",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if watch.on {
				return o.watchMove(cmd, args[0], watch)
			}
			raw, err := o.call(cmd, "GET", pathf("/moves/%s", args[0]), nil, nil)
			if err != nil {
				return err
			}
			var m Move
			return o.print(cmd, raw, &m, func() error { return writeMove(cmd.OutOrStdout(), m) })
		},
	}
	watch.registerMove(cmd)
	return cmd
}

func newMovesCancelCmd(o *adminOptions) *cobra.Command {
	var watch watchFlags
	cmd := &cobra.Command{
		Use:   "cancel MOVE",
		Short: "Cancel an open move: it rolls back and the tenant stays where it was",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := o.call(cmd, "POST", pathf("/moves/%s/cancel", args[0]), nil, nil)
			if err != nil {
				return err
			}
			var m Move
			err = o.print(cmd, raw, &m, func() error {
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "Cancelling move %s of tenant %s (%s); it rolls back, the tenant stays on %s.\n",
					m.ID, m.Tenant, m.Phase, m.From)
				return err
			})
			if err != nil || !watch.on {
				return err
			}
			return o.watchMove(cmd, args[0], watch)
		},
	}
	watch.registerMove(cmd)
	return cmd
}

// moveStarted prints a move the API has just started, then follows it when
// asked to (--watch).
func (o *adminOptions) moveStarted(cmd *cobra.Command, raw json.RawMessage, watch watchFlags) error {
	var m Move
	if err := json.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("the admin API's answer is not the JSON expected: %w", err)
	}
	if !watch.on {
		return o.print(cmd, raw, &m, func() error { return writeMoveStarted(cmd.OutOrStdout(), m) })
	}
	if !o.json {
		if err := writeMoveStarted(cmd.OutOrStdout(), m); err != nil {
			return err
		}
	}
	return o.watchMove(cmd, string(m.ID), watch)
}

func newMovesRevertCmd(o *adminOptions) *cobra.Command {
	var watch watchFlags
	cmd := &cobra.Command{
		Use:   "revert MOVE",
		Short: "Move a tenant back to the source of a done move, while the source is kept",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := o.call(cmd, "POST", pathf("/moves/%s/revert", args[0]), nil, nil)
			if err != nil {
				return err
			}
			return o.moveStarted(cmd, raw, watch)
		},
	}
	watch.registerMove(cmd)
	return cmd
}

// registerMove adds --watch and --interval to a move command.
func (w *watchFlags) registerMove(cmd *cobra.Command) {
	w.register(cmd, "follow the move until it is done or aborted: a progress line in a terminal, a line per change otherwise", 500*time.Millisecond)
}

// watchMove follows a move until it is done, aborted or reverted. It ends
// with an error when the move aborted, so that scripts stop.
func (o *adminOptions) watchMove(cmd *cobra.Command, id string, w watchFlags) error {
	out := cmd.OutOrStdout()
	p := newProgress(out, isTerminal(out), time.Now)
	return o.follow(cmd, w, pathf("/moves/%s", id), "move "+id, "tenantplane moves show "+id+" --watch", p.end,
		func(raw json.RawMessage) (bool, error) {
			var m Move
			if err := json.Unmarshal(raw, &m); err != nil {
				return false, fmt.Errorf("the admin API's answer is not the JSON expected: %w", err)
			}
			if !terminalMove(m.Phase) {
				if !o.json {
					p.update(m.progress())
				}
				return false, nil
			}
			if o.json {
				if err := writeJSON(out, raw); err != nil {
					return true, err
				}
			} else {
				p.update(m.progress())
				p.end()
				if err := writeMoveEnd(out, m, p.elapsed()); err != nil {
					return true, err
				}
			}
			return true, moveOutcome(m)
		})
}

// moveOutcome is the exit of a watch: an error when the move aborted.
func moveOutcome(m Move) error {
	if m.Phase != "aborted" {
		return nil
	}
	why := m.LastError
	if why == "" && m.CancelRequested {
		why = "cancelled"
	}
	return fmt.Errorf("move %s of tenant %s aborted: %s; the tenant stays on %s", m.ID, m.Tenant, why, m.From)
}

func writeMoveStarted(w io.Writer, m Move) error {
	what := "Moving"
	if m.Reverts != "" {
		what = fmt.Sprintf("Reverting move %s: moving", m.Reverts)
	}
	msg := fmt.Sprintf("%s tenant %s from %s to %s, %s mode (move %s).", what, m.Tenant, m.From, m.To, m.Mode, m.ID)
	switch m.Kind {
	case "promote":
		msg = fmt.Sprintf("Promoting tenant %s from pool database %s on %s to a database of its own on %s (move %s).", m.Tenant, m.Pool, m.From, m.To, m.ID)
	case "demote":
		msg = fmt.Sprintf("Demoting tenant %s from its database on %s into pool database %s on %s (move %s).", m.Tenant, m.From, m.Pool, m.To, m.ID)
	}
	if (m.Kind == "promote" || m.Kind == "demote") && m.Reverts != "" {
		msg = fmt.Sprintf("Reverting move %s: %s", m.Reverts, msg)
	}
	if m.Plan != "" {
		msg += fmt.Sprintf(" It takes plan %s (now %s) when it switches.", m.Plan, m.FromPlan)
	}
	if m.ModeReason != "" {
		msg += " " + sentence(m.ModeReason)
	}
	_, err := fmt.Fprintf(w, "%s\nFollow it with: tenantplane moves show %s --watch\n", msg, m.ID)
	return err
}

// writeMoveEnd is the summary once a watched move is over.
func writeMoveEnd(w io.Writer, m Move, took time.Duration) error {
	var msg string
	switch m.Phase {
	case "aborted":
		msg = fmt.Sprintf("Move %s aborted: tenant %s stays on %s (watched for %s).", m.ID, m.Tenant, m.From, took.Round(100*time.Millisecond))
		if m.LastError != "" {
			msg += " " + sentence(m.LastError)
		}
	default:
		msg = fmt.Sprintf("Move %s is %s: tenant %s moved from %s to %s, %s mode; %s rows, %s copied; writes paused %s (watched for %s).",
			m.ID, m.Phase, m.Tenant, m.From, m.To, m.Mode, humanize.Comma(m.RowsCopied), formatBytes(m.BytesCopied), m.writePause(),
			took.Round(100*time.Millisecond))
		if m.Phase == "done" && !m.KeepUntil.IsZero() {
			msg += fmt.Sprintf("\nThe source is kept until %s; to go back: tenantplane moves revert %s", m.KeepUntil, m.ID)
		}
	}
	_, err := fmt.Fprintln(w, msg)
	return err
}

// writeMove prints a move, a field a line.
func writeMove(w io.Writer, m Move) error {
	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	t.row("MOVE:", string(m.ID))
	t.row("TENANT:", m.Tenant)
	t.row("FROM:", m.From)
	t.row("TO:", m.To)
	mode := m.Mode
	if m.ModeReason != "" {
		mode += " (" + m.ModeReason + ")"
	}
	t.row("MODE:", mode)
	t.row("PHASE:", m.phase())
	t.row("COPIED:", fmt.Sprintf("%s rows, %s", humanize.Comma(m.RowsCopied), formatBytes(m.BytesCopied)))
	if m.Mode == "online" {
		t.row("LAG:", formatBytes(m.LagBytes))
	}
	t.row("WRITE_PAUSE:", m.writePause())
	if m.Reverts != "" {
		t.row("REVERTS:", "move "+string(m.Reverts))
	}
	if m.Plan != "" {
		t.row("PLAN:", m.Plan+" (from "+m.FromPlan+", at the switch)")
	}
	if !m.KeepUntil.IsZero() {
		t.row("KEEP_UNTIL:", m.KeepUntil.String())
	}
	if m.KeepReason != "" {
		keep := m.KeepReason
		if m.KeepInStep {
			keep += fmt.Sprintf(" (%s behind)", formatBytes(m.KeepLagBytes))
		}
		t.row("KEEP:", keep)
	}
	if m.LastError != "" {
		t.row("LAST_ERROR:", m.LastError)
	}
	t.row("BY:", m.Actor)
	t.row("CREATED:", m.CreatedAt.String())
	t.row("FINISHED:", m.FinishedAt.String())
	return t.flush()
}

func writeMoves(w io.Writer, moves []Move) error {
	if len(moves) == 0 {
		_, err := fmt.Fprintln(w, "No moves; start one with: tenantplane tenants move SLUG --to SERVER --watch")
		return err
	}
	withErrors := slices.ContainsFunc(moves, func(m Move) bool { return m.LastError != "" })
	header := []string{"MOVE", "TENANT", "FROM", "TO", "MODE", "PHASE", "ROWS", "BYTES", "WRITE_PAUSE", "CREATED", "FINISHED"}
	if withErrors {
		header = append(header, "LAST_ERROR")
	}
	t := newTable(w, header...)
	for _, m := range moves {
		cells := []string{string(m.ID), m.Tenant, m.From, m.To, m.Mode, m.phase(), humanize.Comma(m.RowsCopied), formatBytes(m.BytesCopied),
			m.writePause(), m.CreatedAt.String(), m.FinishedAt.String()}
		if withErrors {
			cells = append(cells, truncate(m.LastError, 80))
		}
		t.row(cells...)
	}
	return t.flush()
}

// sentence makes s a sentence: a capital first and a full stop last.
func sentence(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return s
	}
	s = strings.ToUpper(s[:1]) + s[1:]
	if !strings.HasSuffix(s, ".") {
		s += "."
	}
	return s
}

// formatBytes writes n in the largest binary unit that keeps it at 1 or more: "1.5 KiB".
func formatBytes(n int64) string { return humanize.IBytes(uint64(max(n, 0))) }
