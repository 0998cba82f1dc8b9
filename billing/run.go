package billing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tenantplane/tenantplane/catalog"
)

// A billing run is durable through the catalog, not a job queue: its row says
// it is pending or running, each invoice's row says how far it got, and the
// process working on a run holds a session advisory lock on the run for as
// long as it works. A process that dies (or loses its catalog connection)
// loses the lock with its connection at once, and any process that polls
// (PollInterval) takes the run over and resumes it invoice by invoice.
//
// River is not used for this on purpose: River's maintenance services (the
// rescuer, the periodic enqueuer) run in whichever client of the catalog's
// River schema is elected leader, and a leader that does not know a job kind
// discards it when rescuing. A second River client for billing beside the
// provisioner's would so discard the other's stuck jobs. Until one client
// carries every worker, billing keeps to the catalog.

// runLockClass is the first key of the run advisory locks; the second is the run id.
const runLockClass = `hashtext('tenantplane.billing.run')`

// BillingRunState is where a billing run is.
type BillingRunState string

const (
	BillingRunPending BillingRunState = "pending" // waiting for a process to take it
	BillingRunRunning BillingRunState = "running"
	BillingRunDone    BillingRunState = "done"   // every invoice of the period computed (and sent, when sending)
	BillingRunFailed  BillingRunState = "failed" // stopped with invoices left unfinished; a new run resumes them
)

// Run triggers.
const (
	TriggerAPI      = "api"
	TriggerSchedule = "schedule"
)

// BillingRun is the billing of one period.
type BillingRun struct {
	ID         int64               `json:"id"`
	Period     string              `json:"period"`
	State      BillingRunState     `json:"state"`
	Send       bool                `json:"send"` // sends to Stripe; false: invoices are computed and stored, not sent
	Trigger    string              `json:"trigger"`
	Actor      string              `json:"actor"`
	Invoices   int                 `json:"invoices"` // the period's invoices when the run finished
	Failed     int                 `json:"failed"`   // of them, left unfinished by an error
	LastError  string              `json:"last_error,omitempty"`
	CreatedAt  time.Time           `json:"created_at"`
	StartedAt  *time.Time          `json:"started_at,omitempty"`
	FinishedAt *time.Time          `json:"finished_at,omitempty"`
	Progress   *BillingRunProgress `json:"progress,omitempty"`
	Failures   []BillingRunFailure `json:"failures,omitempty"`
}

// BillingRunProgress counts the invoices of a run's period by state, now.
type BillingRunProgress struct {
	Invoices       int `json:"invoices"`
	Computed       int `json:"computed"`
	InvoiceCreated int `json:"invoice_created"`
	ItemsAdded     int `json:"items_added"`
	Finalized      int `json:"finalized"`
	Failed         int `json:"failed"` // unfinished, with an error from the last attempt
}

// BillingRunFailure is an invoice the last attempt could not finish.
type BillingRunFailure struct {
	Tenant    string       `json:"tenant"`
	InvoiceID string       `json:"invoice_id"`
	State     InvoiceState `json:"state"`
	Error     string       `json:"error"`
}

// NewBillingRun is what starting a run takes.
type NewBillingRun struct {
	Period  time.Time
	Send    bool
	Trigger string
	Actor   string
}

// StartRun records a run of a period, to be done in the background (by this
// process or another), and returns it. The period must have ended. While a
// run of the period is pending or running, it is returned instead (created
// false). Without Stripe, the run computes and stores invoices, not sent.
func (s *Service) StartRun(ctx context.Context, period time.Time, actor string) (BillingRun, bool, error) {
	period = catalog.PeriodOf(period)
	if end := catalog.PeriodEnd(period); end.After(s.now()) {
		return BillingRun{}, false, catalog.Errorf(catalog.CodeInvalid,
			"period %s is still open (it ends %s): only a period that has ended is billed; a tenant's invoice preview shows the open one as it stands",
			catalog.FormatPeriod(period), end.Format(time.RFC3339))
	}
	run, created, err := s.store.CreateBillingRun(ctx, NewBillingRun{Period: period, Send: s.stripe != nil, Trigger: TriggerAPI, Actor: actor})
	if err != nil {
		return BillingRun{}, false, err
	}
	if created {
		s.logger.InfoContext(ctx, "billing run created", "op", "run", "run_id", run.ID, "period", run.Period, "send", run.Send, "actor", actor)
		s.kick()
	}
	return run, created, nil
}

// GetRun returns a run with the live progress of its period's invoices and
// up to 50 of their failures.
func (s *Service) GetRun(ctx context.Context, id int64) (BillingRun, error) {
	return s.store.GetBillingRun(ctx, id)
}

// ListRuns returns a page of runs, newest first, of one period (YYYY-MM) or
// of all when period is "": at most limit after cursor, and the next page's
// cursor ("" on the last).
func (s *Service) ListRuns(ctx context.Context, period string, limit int, cursor string) ([]BillingRun, string, error) {
	return s.store.ListBillingRuns(ctx, period, limit, cursor)
}

// kick wakes the run loop.
func (s *Service) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// doOpenRuns works every pending or running run no other process holds.
func (s *Service) doOpenRuns(ctx context.Context) error {
	runs, err := s.store.OpenBillingRuns(ctx)
	if err != nil {
		return err
	}
	for _, r := range runs {
		if ctx.Err() != nil {
			return nil
		}
		if _, err := s.ProcessRun(ctx, r.ID); err != nil && !errors.Is(err, errHeld) && ctx.Err() == nil {
			s.logger.WarnContext(ctx, "billing run failed", "op", "run", "run_id", r.ID, "period", r.Period, "error", err)
		}
	}
	return nil
}

// errHeld says another process holds the run.
var errHeld = catalog.Errorf(catalog.CodeConflict, "another process is working on this billing run")

// ProcessRun does a run in the calling goroutine, unless another process
// holds it (a CodeConflict error), and returns it as it finished. A run
// already finished is returned as is. When ctx ends first, the run stays
// running for a process to resume.
func (s *Service) ProcessRun(ctx context.Context, id int64) (BillingRun, error) {
	conn, err := s.catalog.Pool().Acquire(ctx)
	if err != nil {
		return BillingRun{}, catalog.WrapError(catalog.CodeUnavailable, err, "catalog database is unavailable")
	}
	var held bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(`+runLockClass+`, $1::int)`, id).Scan(&held); err != nil {
		conn.Release()
		return BillingRun{}, catalog.WrapError(catalog.CodeUnavailable, err, "catalog database is unavailable")
	}
	if !held {
		conn.Release()
		return BillingRun{}, errHeld
	}
	// The lock lives with this connection: watch it, and stop working the
	// moment it is gone (another process may take the run over).
	runCtx, cancel := context.WithCancelCause(ctx)
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		watchLock(runCtx, conn, cancel)
	}()
	defer func() {
		cancel(nil)
		<-watchDone
		unlockCtx, c := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer c()
		if _, err := conn.Exec(unlockCtx, `SELECT pg_advisory_unlock(`+runLockClass+`, $1::int)`, id); err != nil {
			// A broken connection released the lock already; do not reuse it.
			_ = conn.Conn().Close(unlockCtx)
		}
		conn.Release()
	}()

	run, err := s.store.GetBillingRun(runCtx, id)
	if err != nil || (run.State != BillingRunPending && run.State != BillingRunRunning) {
		return run, err
	}
	return s.process(runCtx, run)
}

// watchLock pings the lock's connection every few seconds and cancels the
// run when it fails.
func watchLock(ctx context.Context, conn *pgxpool.Conn, cancel context.CancelCauseFunc) {
	tick := time.NewTicker(3 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			pctx, c := context.WithTimeout(ctx, 5*time.Second)
			err := conn.Ping(pctx)
			c()
			if err != nil && ctx.Err() == nil {
				cancel(fmt.Errorf("lost the catalog connection holding the run: %w", err))
				return
			}
		}
	}
}

// process computes the period's invoices, then sends those not finalized.
func (s *Service) process(ctx context.Context, run BillingRun) (BillingRun, error) {
	logger := s.logger.With("op", "run", "run_id", run.ID, "period", run.Period)
	start := time.Now()
	if err := s.store.StartBillingRun(ctx, run.ID); err != nil {
		return run, err
	}
	period, err := catalog.ParsePeriod(run.Period)
	if err != nil {
		return run, err
	}
	finish := func(lastError string) (BillingRun, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		done, err := s.store.FinishBillingRun(fctx, run.ID, lastError)
		if err != nil {
			return run, err
		}
		s.metrics.runs.WithLabelValues(string(done.State)).Inc()
		logger.InfoContext(ctx, "billing run finished", "state", done.State, "invoices", done.Invoices, "failed", done.Failed,
			"duration_ms", time.Since(start).Milliseconds(), "error", lastError)
		return s.store.GetBillingRun(fctx, run.ID)
	}
	if run.Send && s.stripe == nil {
		return finish("this run sends to Stripe, but this process has no STRIPE_API_KEY: set it, then start a new run")
	}

	// Compute: every billable tenant without an invoice for the period.
	tenants, err := s.store.BillableTenants(ctx, period)
	if err != nil {
		return s.interrupted(ctx, run, err, finish)
	}
	computed := 0
	for i := 0; i < len(tenants); i += s.cfg.ComputeBatch {
		n, err := s.computeInvoices(ctx, run.ID, period, tenants[i:min(i+s.cfg.ComputeBatch, len(tenants))])
		if err != nil {
			return s.interrupted(ctx, run, err, finish)
		}
		computed += n
	}
	logger.InfoContext(ctx, "invoices computed", "tenants", len(tenants), "computed", computed, "duration_ms", time.Since(start).Milliseconds())
	if !run.Send {
		return finish("")
	}
	if err := s.sendAll(ctx, run, logger); err != nil {
		return s.interrupted(ctx, run, err, finish)
	}
	return finish("")
}

// interrupted ends a run that stopped on err: when the process is stopping
// (or lost its lock), or the catalog did not answer, the run stays running
// for the next poll (of this process or another) to resume; otherwise it
// fails with the reason.
func (s *Service) interrupted(ctx context.Context, run BillingRun, err error, finish func(string) (BillingRun, error)) (BillingRun, error) {
	if ctx.Err() != nil || catalog.CatalogDown(err) {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
			err = cause
		}
		s.logger.WarnContext(ctx, "billing run interrupted; it will be resumed", "op", "run", "run_id", run.ID, "error", err)
		return run, err
	}
	return finish(err.Error())
}

// sendAll sends every invoice of the run's period that is not finalized,
// Concurrency at a time. A failed invoice records its error and the run goes
// on; MaxConsecutiveFailures in a row stop it (Stripe is down, or the key is
// wrong), as does the end of ctx.
func (s *Service) sendAll(ctx context.Context, run BillingRun, logger *slog.Logger) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	type job struct {
		inv  Invoice
		cust BillingCustomer
	}
	work := make(chan job)
	var (
		wg          sync.WaitGroup
		consecutive atomic.Int64
		sent        atomic.Int64
		failed      atomic.Int64
	)
	for range s.cfg.Concurrency {
		wg.Go(func() {
			for j := range work {
				inv := j.inv
				if ctx.Err() != nil {
					continue
				}
				err := s.send(ctx, inv, j.cust)
				if err == nil {
					consecutive.Store(0)
					sent.Add(1)
					continue
				}
				if ctx.Err() != nil {
					continue // stopping: the invoice resumes where it was
				}
				if catalog.CatalogDown(err) {
					// Not the invoice's fault, nor Stripe's: the run stops
					// and is resumed once the catalog answers, the invoice
					// where its row says it got (each step is idempotent).
					cancel(err)
					continue
				}
				failed.Add(1)
				msg := stepError(err)
				logger.WarnContext(ctx, "invoice not sent", "tenant", inv.Tenant, "invoice_id", inv.ID, "error", msg)
				if err := s.store.SetInvoiceError(ctx, inv.ID, run.ID, msg); err != nil {
					cancel(err)
				}
				if consecutive.Add(1) >= int64(s.cfg.MaxConsecutiveFailures) {
					cancel(fmt.Errorf("stopped after %d invoices in a row failed, the last with: %s", s.cfg.MaxConsecutiveFailures, msg))
				}
			}
		})
	}
	after := ""
	var listErr error
	for ctx.Err() == nil {
		batch, err := s.store.InvoicesToSend(ctx, run.Period, after, 200)
		if err != nil {
			listErr = err
			break
		}
		if len(batch) == 0 {
			break
		}
		customers, err := s.customersOf(ctx, batch)
		if err != nil {
			listErr = err
			break
		}
		ids := make([]string, len(batch))
		for i, inv := range batch {
			ids[i] = inv.ID
		}
		started, err := s.store.MarkSendStarted(ctx, ids)
		if err != nil {
			listErr = err
			break
		}
		for _, inv := range batch {
			if at, ok := started[inv.ID]; ok {
				inv.SendStartedAt = &at
			}
			select {
			case work <- job{inv, customers[inv.TenantID]}:
			case <-ctx.Done():
			}
		}
		after = batch[len(batch)-1].ID
	}
	close(work)
	wg.Wait()
	logger.InfoContext(ctx, "invoices sent", "sent", sent.Load(), "failed", failed.Load())
	if listErr != nil {
		return listErr
	}
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause // our own stop (too many failures), or the parent's cause
	}
	return ctx.Err()
}

func (s *Service) customersOf(ctx context.Context, invs []Invoice) (map[string]BillingCustomer, error) {
	ids := make([]string, 0, len(invs))
	for _, inv := range invs {
		ids = append(ids, inv.TenantID)
	}
	return s.store.BillingCustomers(ctx, ids)
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// schedule starts the run of the period that ended last, once BillingGrace
// has passed and no run of it exists, unless that period began before
// billing was installed (an upgrade does not bill a past month by itself). Replicas racing to it make one: the
// catalog keeps one scheduled run per period.
func (s *Service) schedule(ctx context.Context) error {
	now := s.now()
	last := catalog.PeriodOf(now).AddDate(0, -1, 0)
	if now.Before(catalog.PeriodEnd(last).Add(s.cfg.BillingGrace)) {
		return nil
	}
	from, err := s.store.ScheduleFrom(ctx)
	if err != nil || last.Before(from) {
		return err // before billing was installed: an operator's call
	}
	exists, err := s.store.HasBillingRun(ctx, last)
	if err != nil || exists {
		return err
	}
	run, created, err := s.store.CreateBillingRun(ctx, NewBillingRun{Period: last, Send: s.stripe != nil, Trigger: TriggerSchedule, Actor: "schedule"})
	if err != nil {
		return err
	}
	if created {
		s.logger.InfoContext(ctx, "billing run scheduled", "op", "schedule", "run_id", run.ID, "period", run.Period, "send", run.Send)
		s.kick()
	}
	return nil
}
