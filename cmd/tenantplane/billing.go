package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tenantplane/tenantplane/billing"
)

// BillingRun is a billing run as the admin API shows it.
type BillingRun struct {
	ID         apiID   `json:"id"`
	Period     string  `json:"period"`
	State      string  `json:"state"`
	Send       bool    `json:"send"`
	Trigger    string  `json:"trigger"`
	Actor      string  `json:"actor"`
	Invoices   int     `json:"invoices"`
	Failed     int     `json:"failed"`
	LastError  string  `json:"last_error"`
	CreatedAt  apiTime `json:"created_at"`
	StartedAt  apiTime `json:"started_at"`
	FinishedAt apiTime `json:"finished_at"`
	Progress   *struct {
		Invoices       int `json:"invoices"`
		Computed       int `json:"computed"`
		InvoiceCreated int `json:"invoice_created"`
		ItemsAdded     int `json:"items_added"`
		Finalized      int `json:"finalized"`
		Failed         int `json:"failed"`
	} `json:"progress"`
	Failures []struct {
		Tenant string `json:"tenant"`
		State  string `json:"state"`
		Error  string `json:"error"`
	} `json:"failures"`
}

// finished reports whether the run changes no more by itself.
func (r BillingRun) finished() bool { return r.State == "done" || r.State == "failed" }

// progressText is one line of a run's progress.
func (r BillingRun) progressText() string {
	if r.Progress == nil {
		return r.State
	}
	p := r.Progress
	if !r.Send {
		return fmt.Sprintf("%s, %d invoices computed (not sent)", r.State, p.Invoices)
	}
	s := fmt.Sprintf("%s, %d/%d invoices finalized", r.State, p.Finalized, p.Invoices)
	if p.Failed > 0 {
		s += fmt.Sprintf(", %d failed", p.Failed)
	}
	return s
}

// Invoice is an invoice (or a preview of one) as the admin API shows it.
type Invoice struct {
	ID              string        `json:"id"`
	Tenant          string        `json:"tenant"`
	Period          string        `json:"period"`
	Plan            string        `json:"plan"`
	PlanVersion     int           `json:"plan_version"`
	Currency        string        `json:"currency"`
	Total           int64         `json:"total"`
	State           string        `json:"state"`
	Sent            bool          `json:"sent"`
	Payment         string        `json:"payment"`
	StripeInvoiceID string        `json:"stripe_invoice_id"`
	LastError       string        `json:"last_error"`
	Lines           []InvoiceLine `json:"lines"`
	Tax             *int64        `json:"tax"`
	TaxNote         string        `json:"tax_note"`
}

// InvoiceLine is one charge of an invoice.
type InvoiceLine struct {
	No          int    `json:"line"`
	Kind        string `json:"kind"`
	Meter       string `json:"meter"`
	Quantity    int64  `json:"quantity"`
	Amount      int64  `json:"amount"`
	Description string `json:"description"`
}

func newBillingCmd() *cobra.Command {
	cmd, o := newAdminGroup("billing", "Bill a period, follow a run, preview and list a tenant's invoices")
	cmd.Long = `Bill a period: every tenant billable in it gets an invoice, priced on its plan
and its usage, sent to Stripe (customer, draft invoice, one item per line,
finalize) with idempotency keys, so running a period again, or after a
crash, charges nobody twice. Without STRIPE_API_KEY on the server, invoices
are computed and stored, marked not sent.`
	cmd.AddCommand(newBillingRunCmd(o), newBillingStatusCmd(o), newBillingRunsCmd(o), newBillingPreviewCmd(o), newBillingInvoicesCmd(o))
	return cmd
}

func newBillingRunCmd(o *adminOptions) *cobra.Command {
	var (
		period string
		watch  watchFlags
	)
	cmd := &cobra.Command{
		Use:     "run --period YYYY-MM",
		Short:   "Bill a period that has ended; with --watch, follow the run to its end",
		Example: "  tenantplane billing run --period 2026-03 --watch",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if period == "" {
				return errors.New("--period is required: the month to bill, YYYY-MM (one that has ended)")
			}
			if _, err := time.Parse("2006-01", period); err != nil {
				return fmt.Errorf("--period %q must be a month written YYYY-MM, e.g. 2026-03", period)
			}
			raw, err := o.call(cmd, "POST", "/billing/runs", nil, map[string]string{"period": period})
			if err != nil {
				return err
			}
			var run BillingRun
			if err := json.Unmarshal(raw, &run); err != nil {
				return fmt.Errorf("the admin API's answer is not the JSON expected: %w", err)
			}
			if !watch.on || o.json {
				if err := o.print(cmd, raw, &run, func() error { return writeBillingRunStarted(cmd.OutOrStdout(), run) }); err != nil || !watch.on {
					return err
				}
			} else if err := writeBillingRunStarted(cmd.OutOrStdout(), run); err != nil {
				return err
			}
			return o.watchBilling(cmd, string(run.ID), watch)
		},
	}
	cmd.Flags().StringVar(&period, "period", "", "the month to bill, YYYY-MM")
	watch.register(cmd, "follow the run until it ends, a line per change", time.Second)
	return cmd
}

func writeBillingRunStarted(w io.Writer, run BillingRun) error {
	sends := "sends to Stripe"
	if !run.Send {
		sends = "stores invoices without sending them: the server has no STRIPE_API_KEY"
	}
	_, err := fmt.Fprintf(w, "Billing run %s for %s is %s (%s).\nFollow it with: tenantplane billing status %s --watch\n",
		run.ID, run.Period, run.State, sends, run.ID)
	return err
}

func newBillingStatusCmd(o *adminOptions) *cobra.Command {
	var watch watchFlags
	cmd := &cobra.Command{
		Use:   "status RUN",
		Short: "Show a billing run: its progress and the invoices that failed, with their errors",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if watch.on {
				return o.watchBilling(cmd, args[0], watch)
			}
			raw, err := o.call(cmd, "GET", pathf("/billing/runs/%s", args[0]), nil, nil)
			if err != nil {
				return err
			}
			var run BillingRun
			return o.print(cmd, raw, &run, func() error { return writeBillingRun(cmd.OutOrStdout(), run) })
		},
	}
	watch.register(cmd, "follow the run until it ends, a line per change", time.Second)
	return cmd
}

// watchBilling follows a billing run, a line per change, until it ends. It
// ends with an error when the run failed, so that scripts stop.
func (o *adminOptions) watchBilling(cmd *cobra.Command, id string, w watchFlags) error {
	out, last := cmd.OutOrStdout(), ""
	return o.follow(cmd, w, pathf("/billing/runs/%s", id), "billing run "+id, "tenantplane billing status "+id+" --watch", nil,
		func(raw json.RawMessage) (bool, error) {
			var run BillingRun
			if err := json.Unmarshal(raw, &run); err != nil {
				return false, fmt.Errorf("the admin API's answer is not the JSON expected: %w", err)
			}
			if line := run.progressText(); line != last && !o.json {
				fmt.Fprintf(out, "%s run %s: %s\n", time.Now().UTC().Format("15:04:05"), run.ID, line)
				last = line
			}
			if !run.finished() {
				return false, nil
			}
			if o.json {
				if err := writeJSON(out, raw); err != nil {
					return true, err
				}
			} else if err := writeBillingRun(out, run); err != nil {
				return true, err
			}
			if run.State == "failed" {
				return true, fmt.Errorf("billing run %s failed%s; fix the cause, then run the period again: finished invoices are not sent twice",
					run.ID, prefixed(": ", run.LastError))
			}
			return true, nil
		})
}

func prefixed(prefix, s string) string {
	if s == "" {
		return ""
	}
	return prefix + s
}

func writeBillingRun(w io.Writer, run BillingRun) error {
	t := newTable(w, "RUN:", string(run.ID))
	t.row("PERIOD:", run.Period)
	t.row("STATE:", run.State)
	if run.Send {
		t.row("SENDS:", "to Stripe")
	} else {
		t.row("SENDS:", "no: invoices are stored, not sent (the server has no STRIPE_API_KEY)")
	}
	t.row("TRIGGER:", run.Trigger+" by "+run.Actor)
	if p := run.Progress; p != nil {
		t.row("INVOICES:", fmt.Sprintf("%d: %d finalized, %d computed, %d invoice created, %d items added; %d failed",
			p.Invoices, p.Finalized, p.Computed, p.InvoiceCreated, p.ItemsAdded, p.Failed))
	}
	t.row("STARTED:", run.StartedAt.String())
	t.row("FINISHED:", run.FinishedAt.String())
	if run.LastError != "" {
		t.row("LAST_ERROR:", run.LastError)
	}
	if err := t.flush(); err != nil {
		return err
	}
	if len(run.Failures) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	ft := newTable(w, "TENANT", "STEP_REACHED", "ERROR")
	for _, f := range run.Failures {
		ft.row(f.Tenant, f.State, truncate(f.Error, 120))
	}
	return ft.flush()
}

func newBillingRunsCmd(o *adminOptions) *cobra.Command {
	var period string
	cmd := &cobra.Command{
		Use:   "runs",
		Short: "List the latest billing runs (of one --period), newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			if period != "" {
				q.Set("period", period)
			}
			raw, err := o.call(cmd, "GET", "/billing/runs", q, nil)
			if err != nil {
				return err
			}
			var page struct {
				Runs []BillingRun `json:"runs"`
			}
			return o.print(cmd, raw, &page, func() error { return writeBillingRuns(cmd.OutOrStdout(), page.Runs) })
		},
	}
	cmd.Flags().StringVar(&period, "period", "", "only runs of this month, YYYY-MM")
	return cmd
}

func writeBillingRuns(w io.Writer, runs []BillingRun) error {
	if len(runs) == 0 {
		_, err := fmt.Fprintln(w, "No billing runs.")
		return err
	}
	t := newTable(w, "RUN", "PERIOD", "STATE", "SENT", "INVOICES", "FAILED", "TRIGGER", "FINISHED")
	for _, r := range runs {
		t.row(string(r.ID), r.Period, r.State, strconv.FormatBool(r.Send), strconv.Itoa(r.Invoices), strconv.Itoa(r.Failed), r.Trigger, r.FinishedAt.String())
	}
	return t.flush()
}

func newBillingPreviewCmd(o *adminOptions) *cobra.Command {
	var period string
	cmd := &cobra.Command{
		Use:   "preview TENANT",
		Short: "Show a tenant's invoice of the open period (or --period) as it stands, without calling Stripe",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := url.Values{}
			if period != "" {
				q.Set("period", period)
			}
			raw, err := o.call(cmd, "GET", pathf("/tenants/%s/invoice-preview", args[0]), q, nil)
			if err != nil {
				return err
			}
			var inv Invoice
			return o.print(cmd, raw, &inv, func() error { return writeInvoice(cmd.OutOrStdout(), inv) })
		},
	}
	cmd.Flags().StringVar(&period, "period", "", "the month, YYYY-MM (default: the open one)")
	return cmd
}

func newBillingInvoicesCmd(o *adminOptions) *cobra.Command {
	var lines bool
	cmd := &cobra.Command{
		Use:   "invoices TENANT",
		Short: "List a tenant's invoices, newest first (--lines: with their lines)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := o.callAll(cmd, pathf("/tenants/%s/invoices", args[0]), nil, "invoices")
			if err != nil {
				return err
			}
			var page struct {
				Invoices []Invoice `json:"invoices"`
			}
			return o.print(cmd, raw, &page, func() error {
				if !lines {
					return writeInvoices(cmd.OutOrStdout(), page.Invoices)
				}
				for i, inv := range page.Invoices {
					if i > 0 {
						fmt.Fprintln(cmd.OutOrStdout())
					}
					if err := writeInvoice(cmd.OutOrStdout(), inv); err != nil {
						return err
					}
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&lines, "lines", false, "print each invoice with its lines")
	return cmd
}

func writeInvoices(w io.Writer, invoices []Invoice) error {
	if len(invoices) == 0 {
		_, err := fmt.Fprintln(w, "No invoices.")
		return err
	}
	t := newTable(w, "PERIOD", "PLAN", "TOTAL", "STATE", "SENT", "PAYMENT", "STRIPE_INVOICE")
	for _, inv := range invoices {
		t.row(inv.Period, fmt.Sprintf("%s v%d", inv.Plan, inv.PlanVersion), billing.FormatAmount(inv.Total, inv.Currency), inv.State,
			strconv.FormatBool(inv.Sent), inv.Payment, inv.StripeInvoiceID)
	}
	return t.flush()
}

// writeInvoice prints an invoice with its lines and total.
func writeInvoice(w io.Writer, inv Invoice) error {
	what := "Invoice"
	switch {
	case inv.State == "preview":
		what = "Invoice preview (not stored, not sent)"
	case !inv.Sent:
		what = "Invoice (stored, not sent)"
	}
	if _, err := fmt.Fprintf(w, "%s for %s, %s: %s plan v%d, %s\n\n", what, inv.Tenant, inv.Period, inv.Plan, inv.PlanVersion, inv.State); err != nil {
		return err
	}
	t := newTable(w, "LINE", "DESCRIPTION", "AMOUNT")
	for _, l := range inv.Lines {
		t.row(strconv.Itoa(l.No), l.Description, billing.FormatAmount(l.Amount, inv.Currency))
	}
	if inv.TaxNote == "" {
		t.row("", "TOTAL", billing.FormatAmount(inv.Total, inv.Currency))
		return t.flush()
	}
	// Automatic tax: Stripe adds it on top of the lines.
	t.row("", "SUBTOTAL", billing.FormatAmount(inv.Total, inv.Currency))
	if inv.Tax == nil {
		t.row("", "TAX", inv.TaxNote)
	} else {
		t.row("", "TAX ("+inv.TaxNote+")", billing.FormatAmount(*inv.Tax, inv.Currency))
		t.row("", "TOTAL", billing.FormatAmount(inv.Total+*inv.Tax, inv.Currency))
	}
	return t.flush()
}

func groupDigits(n int64) string {
	s := strconv.FormatInt(n, 10)
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}
