package datarights

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/jobs"
	"github.com/tenantplane/tenantplane/internal/startstop"
)

// Tenants makes, drops, suspends and resumes tenant databases: the
// provisioner implements it, controlplane wires it.
type Tenants interface {
	// PrepareTarget makes tenant t's role and an empty database on server,
	// migrated to version (none at 0), with the role's grants on its rows.
	// Idempotent: run again after a restore, it grants the restored tables.
	PrepareTarget(ctx context.Context, t catalog.Tenant, server catalog.Server, version int64) error
	// DropDatabase drops tenant t's database and role on server, if there.
	DropDatabase(ctx context.Context, t catalog.Tenant, server catalog.Server) error
	// ErasePooledRows deletes a pooled tenant's rows from its pool
	// database, keeping no archive, and says how many it deleted.
	ErasePooledRows(ctx context.Context, t catalog.Tenant) (int64, error)
	Suspend(ctx context.Context, slug, actor, reason string) (catalog.Tenant, error)
	Resume(ctx context.Context, slug, actor, reason string) (catalog.Tenant, error)
}

// Customers erases what billing holds of a tenant that the law does not
// require it to keep: billing implements it, controlplane wires it.
type Customers interface {
	// EraseCustomer deletes the tenant's Stripe customer (when there is
	// one) and its billing details; invoices and usage totals stay. It says
	// what it removed and what it kept, and is a no-op the second time.
	EraseCustomer(ctx context.Context, tenantID string) (removed, kept []Artefact, err error)
}

// Config configures a Service. A zero field takes its documented default.
type Config struct {
	// Logger receives structured logs. Default: slog.Default().
	Logger *slog.Logger
	// Jobs is the process's one River client. Default: nil, and the service
	// makes a registry of its own, opened in New and run by Start and Stop.
	Jobs *jobs.Registry
	// Tenants makes and drops databases (the provisioner). Required.
	Tenants Tenants
	// Customers erases billing's customer (billing). Default: nil, nothing
	// to erase there.
	Customers Customers
	// BackupDir holds the backups (TENANTPLANE_BACKUP_DIR). Default: none,
	// and no backup is taken, scheduled or asked for.
	BackupDir string
	// ExportDir holds the exports (TENANTPLANE_EXPORT_DIR). Default:
	// BackupDir/exports; with neither, exports are refused.
	ExportDir string
	// ArchiveDir is the provisioner's archive of deleted tenants
	// (TENANTPLANE_ARCHIVE_DIR), which an erasure empties of the tenant.
	ArchiveDir string
	// ExportTTL is how long an export can be downloaded
	// (TENANTPLANE_EXPORT_TTL). Default 7 days.
	ExportTTL time.Duration
	// Workers is how many backups, restores and exports this process runs
	// at once. Default 2.
	Workers int
	// PerServer is how many backups run on one tenant server at once,
	// across every process. Default 1.
	PerServer int
	// ScheduleEvery is how often the schedule looks for tenants whose backup
	// is due, and for expired backups and exports. Default 30s; negative:
	// never (backups only on request, nothing expires by itself).
	ScheduleEvery time.Duration
	// MaxAttempts is how often a backup or an export is tried before it is
	// reported failed. Default 5.
	MaxAttempts int
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Registerer, when set, gets the metrics: tenantplane_data_jobs_total
	// {kind: backup, restore, export; outcome: done, retried, failed},
	// tenantplane_backup_bytes_total and tenantplane_data_expired_total{kind}.
	Registerer prometheus.Registerer
}

type metrics struct {
	jobs        *prometheus.CounterVec
	backupBytes prometheus.Counter
	expired     *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tenantplane_data_jobs_total",
			Help: "Backups, restores and exports by outcome: done, retried (an attempt failed), failed (the last attempt failed)."},
			[]string{"kind", "outcome"}),
		backupBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "tenantplane_backup_bytes_total",
			Help: "Bytes of the backups taken."}),
		expired: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tenantplane_data_expired_total",
			Help: "Backups and exports deleted at the end of their retention."}, []string{"kind"}),
	}
	if reg != nil {
		reg.MustRegister(m.jobs, m.backupBytes, m.expired)
	}
	return m
}

// Service runs backups, restores, exports and erasures.
type Service struct {
	store   *catalog.Store
	cfg     Config
	logger  *slog.Logger
	jobs    *jobs.Registry
	ownJobs bool
	loop    startstop.Loop
	metrics *metrics
}

// queue is the River queue of backups, restores and exports.
const queue = "tenantplane_data"

// actor is this package in the audit log.
const actor = "datarights"

// New returns a Service working through store.
func New(store *catalog.Store, cfg Config) (*Service, error) {
	if cfg.Tenants == nil {
		return nil, errors.New("datarights: Config.Tenants is required (the provisioner)")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ExportDir == "" && cfg.BackupDir != "" {
		cfg.ExportDir = filepath.Join(cfg.BackupDir, "exports")
	}
	if cfg.ExportTTL <= 0 {
		cfg.ExportTTL = 7 * 24 * time.Hour
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 2
	}
	if cfg.PerServer <= 0 {
		cfg.PerServer = 1
	}
	if cfg.ScheduleEvery == 0 {
		cfg.ScheduleEvery = 30 * time.Second
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 5
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Service{store: store, cfg: cfg, logger: cfg.Logger.With("component", "datarights"), jobs: cfg.Jobs, metrics: newMetrics(cfg.Registerer)}
	if s.jobs == nil {
		s.jobs, s.ownJobs = jobs.NewRegistry(), true
	}
	river.AddWorker(s.jobs.Workers(), &worker[backupArgs]{s: s, run: s.runBackup})
	river.AddWorker(s.jobs.Workers(), &worker[restoreArgs]{s: s, run: s.runRestore})
	river.AddWorker(s.jobs.Workers(), &worker[exportArgs]{s: s, run: s.runExport})
	s.jobs.AddQueue(queue, cfg.Workers)
	if s.ownJobs {
		if err := s.jobs.Open(store.Pool(), jobs.Config{Logger: cfg.Logger}); err != nil {
			return nil, fmt.Errorf("datarights: %w", err)
		}
	}
	return s, nil
}

// Start runs the schedule (and the job workers when the registry is the
// service's own).
func (s *Service) Start(ctx context.Context) error {
	if s.cfg.ScheduleEvery > 0 {
		if err := s.loop.Start(ctx, s.scheduleLoop); err != nil {
			return err
		}
	}
	if s.ownJobs {
		if err := s.jobs.Start(ctx); err != nil {
			return errors.Join(fmt.Errorf("datarights: %w", err), s.loop.Stop(ctx))
		}
	}
	return nil
}

// Stop stops the schedule; running jobs are the registry's to stop.
func (s *Service) Stop(ctx context.Context) error {
	err := s.loop.Stop(ctx)
	if s.ownJobs {
		err = errors.Join(err, s.jobs.Stop(ctx))
	}
	return err
}

// scheduleLoop queues the backups that are due and deletes the backups and
// exports that expired, every ScheduleEvery.
func (s *Service) scheduleLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.ScheduleEvery)
	defer t.Stop()
	for {
		if n, err := s.ScheduleBackups(ctx); err != nil && ctx.Err() == nil {
			s.logger.WarnContext(ctx, "scheduling backups", "error", err)
		} else if n > 0 {
			s.logger.InfoContext(ctx, "backups scheduled", "count", n)
		}
		if _, err := s.Expire(ctx); err != nil && ctx.Err() == nil {
			s.logger.WarnContext(ctx, "deleting expired backups and exports", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Service) now() time.Time { return s.cfg.Now().UTC() }

// tenantConfig is a connection to tenant t's database as its server's admin
// role, which owns the tables.
func (s *Service) tenantConfig(ctx context.Context, t catalog.Tenant) (*pgx.ConnConfig, error) {
	dsn, err := s.store.ServerDSN(ctx, t.Server)
	if err != nil {
		return nil, err
	}
	pcfg, err := catalog.ServerConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("server %q: %w", t.Server, err)
	}
	cfg := pcfg.ConnConfig.Copy()
	cfg.Database = t.Database
	cfg.ConnectTimeout = 10 * time.Second
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	cfg.RuntimeParams["application_name"] = "tenantplane-datarights"
	return cfg, nil
}

// insertJob queues args in tx, the transaction that records its row.
func (s *Service) insertJob(ctx context.Context, tx pgx.Tx, args river.JobArgs) error {
	client := s.jobs.Client()
	if client == nil {
		return jobs.ErrNotOpen
	}
	_, err := client.InsertTx(ctx, tx, args, &river.InsertOpts{Queue: queue, MaxAttempts: s.cfg.MaxAttempts})
	return err
}

// attemptFailed records a failed attempt of a job's row (table backups,
// restores or exports): pending again to be retried, or failed for good
// on the last attempt; it logs either. It returns the error River should
// see: err to retry, nil once failed for good.
func (s *Service) attemptFailed(ctx context.Context, log *slog.Logger, table string, id int64, last bool, err error, failed *catalog.AuditEvent) error {
	what := strings.TrimSuffix(table, "s")
	state, outcome := StatePending, "retried"
	if last {
		state, outcome = StateFailed, StateFailed
	}
	s.metrics.jobs.WithLabelValues(what, outcome).Inc()
	uerr := s.store.InTx(context.WithoutCancel(ctx), func(tx pgx.Tx) error {
		tag, xerr := tx.Exec(ctx, `UPDATE `+table+` SET state = $2, last_error = $3,
			finished_at = CASE WHEN $2 = 'failed' THEN now() END WHERE id = $1 AND state = 'running'`, id, state, err.Error())
		if xerr != nil || !last || failed == nil || tag.RowsAffected() == 0 {
			return xerr
		}
		// The failure and its report are seen together, or not at all.
		return catalog.InsertAudit(ctx, tx, *failed)
	})
	if uerr != nil {
		log.WarnContext(ctx, "recording a failed "+what, "error", uerr)
	}
	if !last {
		log.WarnContext(ctx, what+" attempt failed; it is retried", "error", err)
		return err
	}
	log.ErrorContext(ctx, what+" failed", "error", err)
	return nil
}

// jobArgs are the arguments of a backup, restore or export job: the id of
// its row.
type jobArgs interface {
	river.JobArgs
	id() int64
}

// worker works one kind of job: run on the job's row, under the row's own
// lock (exclusive), the last attempt told so. A job takes as long as its
// database; a process that dies has its jobs taken back by the heartbeat.
type worker[A jobArgs] struct {
	river.WorkerDefaults[A]
	s   *Service
	run func(ctx context.Context, id int64, last bool) error
}

func (w *worker[A]) Timeout(*river.Job[A]) time.Duration { return 6 * time.Hour }

func (w *worker[A]) Work(ctx context.Context, job *river.Job[A]) error {
	return w.s.exclusive(ctx, fmt.Sprintf("%s:%d", job.Args.Kind(), job.Args.id()), func() error {
		return w.run(ctx, job.Args.id(), job.Attempt >= job.MaxAttempts)
	})
}

// exclusive runs fn while holding a session advisory lock named key on a
// catalog connection of its own, so that one job's work never runs twice at
// once: River's rescuer hands a job that has run past RescueAfter (a backup
// of a large database, say) to another worker while the first still runs.
// That second run finds the lock held and comes back later (a snooze, which
// costs no attempt), by when the first has finished, or died: a process
// that dies loses its connection, and with it the lock.
func (s *Service) exclusive(ctx context.Context, key string, fn func() error) error {
	conn, err := s.store.Pool().Acquire(ctx)
	if err != nil {
		return catalog.Classify(err, "job lock")
	}
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtextextended($1, 0))`, key).Scan(&ok); err != nil {
		conn.Release()
		return catalog.Classify(err, "job lock")
	}
	if !ok {
		conn.Release()
		return river.JobSnooze(30 * time.Second)
	}
	defer func() {
		bg := context.WithoutCancel(ctx)
		var unlocked bool
		if err := conn.QueryRow(bg, `SELECT pg_advisory_unlock(hashtextextended($1, 0))`, key).Scan(&unlocked); err != nil || !unlocked {
			_ = conn.Conn().Close(bg) // the lock goes with the session; the pool drops the closed connection
		}
		conn.Release()
	}()
	return fn()
}
