package provisioner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"golang.org/x/sync/singleflight"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/migrations"
)

// Config configures a Provisioner. Zero fields take the documented defaults.
type Config struct {
	// Logger receives structured logs. Default: slog.Default().
	Logger *slog.Logger
	// Watcher, when set, wakes WaitSettled on catalog changes instead of polling.
	Watcher *catalog.Watcher
	// Migrations is the tenant schema. Default: the embedded set.
	Migrations *migrations.Source
	// ConnectTimeout bounds each connection to a tenant server. Default 5s.
	ConnectTimeout time.Duration
	// DefaultConnBudget is a new server's connection budget when none is given. Default 80.
	DefaultConnBudget int
	// WarmPoolSize is how many ready databases each server keeps for instant
	// tenant creation (TENANTPLANE_WARM_POOL_SIZE). Default 2; -1 disables the pool.
	WarmPoolSize int
	// DeleteGrace is how long a deleted tenant can be restored before its
	// database is dropped (TENANTPLANE_DELETE_GRACE). Zero drops at once;
	// controlplane passes its default of 7 days.
	DeleteGrace time.Duration
	// ArchiveDir, when set, keeps a pg_dump of each tenant database before it
	// is dropped (TENANTPLANE_ARCHIVE_DIR).
	ArchiveDir string
	// TenantStatementTimeout is the per-role statement_timeout of tenant roles. Default 30s.
	TenantStatementTimeout time.Duration
	// TenantConnLimit is the per-role CONNECTION LIMIT of tenant roles: at
	// least replicas x the plan's pool size (TENANTPLANE_TENANT_CONN_LIMIT). Default 40.
	TenantConnLimit int
	// Workers is how many provisioning jobs run at once in this process. Default 8.
	Workers int
	// JobTimeout bounds one provisioning job. Default 2 minutes.
	JobTimeout time.Duration
	// RescueAfter is how long a job may look running before River takes it
	// over, whatever its process: the bound on a job that hangs in a live
	// process. Must exceed JobTimeout. Default 3 minutes. A process that died
	// has its jobs taken over sooner, ClientDeadAfter after its last beat.
	RescueAfter time.Duration
	// HeartbeatInterval is how often this process records in the catalog
	// that its job client is alive (heartbeat.go). Default 2s.
	HeartbeatInterval time.Duration
	// ClientDeadAfter is how long a process may go without a heartbeat
	// before any other process (or its restart) takes its running jobs
	// back. A process that keeps beating never loses a job this way, however
	// long the job runs. Default 10s; at least 3 HeartbeatIntervals.
	ClientDeadAfter time.Duration
	// FanoutWorkers is how many tenants this process migrates at once for
	// migration runs, whatever a run's concurrency. Default 16.
	FanoutWorkers int
	// FanoutLease is how long a run's claim on a tenant lives without a
	// heartbeat: a process that dies has its tenants taken over, and its
	// runs given new workers, this long after. Default 30s.
	FanoutLease time.Duration
	// FanoutLimits bound each statement of a run's tenant migrations.
	// Default: migrations.Limits' defaults.
	FanoutLimits migrations.Limits

	// Customers, when set, gives each tenant its billing customer before it
	// is activated, as the last provisioning step. controlplane passes
	// billing's, which creates the Stripe customer when billing sends to
	// Stripe. Default: none, and no such step.
	Customers Customers
	// CustomerTimeout bounds the customer step, so a billing provider that
	// hangs fails provisioning (retryably) instead of holding it. controlplane
	// derives it from the Stripe client's limits. Default 25s.
	CustomerTimeout time.Duration

	// afterStep, in tests, runs after each provisioning step; an error stops the job there.
	afterStep func(ctx context.Context, slug, step string) error
}

// Customers makes tenants' billing customers (billing.Service satisfies it).
// EnsureCustomer is called again for a tenant whose provisioning is retried
// or resumed after a crash: it must make one customer per tenant, however
// often it is called, and return nil for a tenant that has one.
type Customers interface {
	EnsureCustomer(ctx context.Context, t catalog.Tenant) error
}

// Provisioner manages the fleet of tenant servers and the databases on them.
// Its work is durable: each tenant's provisioning and deletion is a River job
// in the catalog database, inserted in the same transaction as the change
// that asks for it, so a crash at any point leaves a job that a restarted
// process (or another replica) finishes.
type Provisioner struct {
	store  *catalog.Store
	cfg    Config
	logger *slog.Logger
	schema migrations.Source
	river  *river.Client[pgx.Tx]
	beats  *clientHeartbeat // the river client's liveness, and the rescue of dead clients' jobs

	mu         sync.Mutex
	adminPools map[int64]*adminPool // by server id
	templates  singleflight.Group

	refill   chan struct{}
	stopFill context.CancelFunc
	fillDone chan struct{}

	fanout fanoutState // migration runs (fanout.go)
}

// New returns a Provisioner working through store. Start runs its workers.
func New(store *catalog.Store, cfg Config) (*Provisioner, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	schema := migrations.Embedded()
	if cfg.Migrations != nil {
		schema = *cfg.Migrations
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	if cfg.DefaultConnBudget == 0 {
		cfg.DefaultConnBudget = 80
	}
	if cfg.WarmPoolSize == 0 {
		cfg.WarmPoolSize = 2
	}
	if cfg.TenantStatementTimeout == 0 {
		cfg.TenantStatementTimeout = 30 * time.Second
	}
	if cfg.TenantConnLimit == 0 {
		cfg.TenantConnLimit = 40
	}
	if cfg.Workers == 0 {
		cfg.Workers = 8
	}
	if cfg.CustomerTimeout == 0 {
		cfg.CustomerTimeout = 25 * time.Second
	}
	if cfg.JobTimeout == 0 {
		cfg.JobTimeout = 2 * time.Minute
	}
	if cfg.RescueAfter == 0 {
		cfg.RescueAfter = 3 * time.Minute
	}
	if cfg.RescueAfter <= cfg.JobTimeout {
		return nil, errors.New("provisioner: RescueAfter must exceed JobTimeout")
	}
	if cfg.DeleteGrace < 0 {
		return nil, errors.New("provisioner: DeleteGrace must not be negative")
	}
	applyFanoutDefaults(&cfg)
	p := &Provisioner{
		store:      store,
		cfg:        cfg,
		logger:     cfg.Logger,
		schema:     schema,
		adminPools: map[int64]*adminPool{},
		refill:     make(chan struct{}, 1),
	}
	clientID := newClientID()
	beats, err := newClientHeartbeat(store.Pool(), clientID, heartbeatConfig{
		Interval: cfg.HeartbeatInterval, DeadAfter: cfg.ClientDeadAfter, Logger: cfg.Logger.With("component", "heartbeat"),
	})
	if err != nil {
		return nil, err
	}
	p.beats = beats
	workers := river.NewWorkers()
	river.AddWorker(workers, &provisionWorker{p: p})
	river.AddWorker(workers, &dropWorker{p: p})
	river.AddWorker(workers, &fanoutWorker{p: p})
	client, err := river.NewClient(riverpgxv5.New(store.Pool()), &river.Config{
		ID:                   clientID, // its beats in job_clients say it is alive
		Logger:               cfg.Logger.With("component", "river"),
		Queues:               map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: cfg.Workers}, fanoutQueue(p.schema.Hash()): {MaxWorkers: cfg.FanoutWorkers}},
		Workers:              workers,
		JobTimeout:           cfg.JobTimeout,
		RescueStuckJobsAfter: cfg.RescueAfter,
		FetchCooldown:        time.Millisecond, // pick up a new tenant's job at once
		FetchPollInterval:    500 * time.Millisecond,
		MaxAttempts:          10,
	})
	if err != nil {
		return nil, fmt.Errorf("provisioner: job queue: %w", err)
	}
	p.river = client
	return p, nil
}

// Start runs the provisioning workers and the warm-pool refiller until Stop.
func (p *Provisioner) Start(ctx context.Context) error {
	// The client beats before it fetches a job: a running job whose client
	// has no row counts as a dead process's.
	if err := p.beats.Start(ctx); err != nil {
		return err
	}
	if err := p.river.Start(ctx); err != nil {
		_ = p.beats.Stop(ctx)
		return fmt.Errorf("provisioner: starting job workers: %w", err)
	}
	fillCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p.stopFill, p.fillDone = cancel, make(chan struct{})
	go p.refillLoop(fillCtx)
	p.startFanout(ctx)
	return nil
}

// Stop lets running jobs finish (until ctx ends, then cancels them: they
// resume elsewhere), stops the refiller and closes the admin pools.
func (p *Provisioner) Stop(ctx context.Context) error {
	var err error
	if p.stopFill != nil {
		p.stopFanout()
		p.stopFill()
		<-p.fillDone
		if err = p.river.Stop(ctx); errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			err = p.river.StopAndCancel(context.Background())
		}
		// Only now, with the jobs handed back, may the client look dead.
		err = errors.Join(err, p.beats.Stop(ctx))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, ap := range p.adminPools {
		ap.pool.Close()
		delete(p.adminPools, id)
	}
	return err
}

// Schema is the tenant schema the provisioner builds databases from.
func (p *Provisioner) Schema() migrations.Source { return p.schema }

// adminPool is a small pool on a server's admin DSN.
type adminPool struct {
	pool *pgxpool.Pool
	dsn  string
}

// admin returns the admin pool of a server, opening it on first use (and
// again when the server's DSN changed).
func (p *Provisioner) admin(ctx context.Context, serverID int64, serverName string) (*pgxpool.Pool, error) {
	dsn, err := p.store.ServerDSN(ctx, serverName)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if ap, ok := p.adminPools[serverID]; ok {
		if ap.dsn == dsn {
			return ap.pool, nil
		}
		ap.pool.Close()
		delete(p.adminPools, serverID)
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, catalog.Errorf(catalog.CodeInvalid, "server %q has a malformed DSN", serverName)
	}
	cfg.MaxConns = 4
	cfg.MinConns = 0
	cfg.MaxConnIdleTime = time.Minute
	cfg.ConnConfig.ConnectTimeout = p.cfg.ConnectTimeout
	cfg.ConnConfig.RuntimeParams["application_name"] = "tenantplane-provisioner"
	cfg.ConnConfig.RuntimeParams["lock_timeout"] = "10000"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	p.adminPools[serverID] = &adminPool{pool: pool, dsn: dsn}
	return pool, nil
}

// dbConfig is the configuration of a connection to one database of a
// server as its admin role, named app in pg_stat_activity.
func (p *Provisioner) dbConfig(ctx context.Context, serverName, database, app string) (*pgx.ConnConfig, error) {
	dsn, err := p.store.ServerDSN(ctx, serverName)
	if err != nil {
		return nil, err
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, catalog.Errorf(catalog.CodeInvalid, "server %q has a malformed DSN", serverName)
	}
	cfg.Database = database
	cfg.ConnectTimeout = p.cfg.ConnectTimeout
	cfg.RuntimeParams["application_name"] = app
	return cfg, nil
}

// connectDB opens a connection to one database of a server as its admin.
func (p *Provisioner) connectDB(ctx context.Context, serverName, database string) (*pgx.Conn, error) {
	cfg, err := p.dbConfig(ctx, serverName, database, "tenantplane-provisioner")
	if err != nil {
		return nil, err
	}
	return pgx.ConnectConfig(ctx, cfg)
}
