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
	"golang.org/x/sync/singleflight"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/jobs"
	"github.com/tenantplane/tenantplane/internal/startstop"
	"github.com/tenantplane/tenantplane/migrations"
)

// Config configures a Provisioner. As in every tenantplane Config, a zero
// field takes its documented default, and a setting that can be turned off
// is off when negative.
type Config struct {
	// Logger receives structured logs. Default: slog.Default().
	Logger *slog.Logger
	// Watcher, when set, wakes WaitSettled on catalog changes instead of polling.
	Watcher *catalog.Watcher
	// Migrations is the tenant schema. Default: the embedded set.
	Migrations *migrations.Source
	// ConnectTimeout bounds each connection to a tenant server. Default 5s.
	ConnectTimeout time.Duration
	// ServerTimeout bounds the tenant server's part of one provisioning
	// (role, database from the template or the warm pool, grants): a server
	// that hangs fails the tenant with "server X did not answer within ..."
	// (retryable) instead of holding the job until the job client's own
	// timeout. Default 90s.
	ServerTimeout time.Duration
	// DefaultConnBudget is a new server's connection budget when none is given. Default 80.
	DefaultConnBudget int
	// WarmPoolSize is how many ready databases each server keeps for instant
	// tenant creation (TENANTPLANE_WARM_POOL_SIZE). Default 2; negative: no
	// warm pool, every tenant is made from the template.
	WarmPoolSize int
	// DeleteGrace is how long a deleted tenant can be restored before its
	// database is dropped (TENANTPLANE_DELETE_GRACE). Default 7 days;
	// negative: no grace, the database is dropped at once.
	DeleteGrace time.Duration
	// ArchiveDir, when set, keeps a pg_dump of each tenant database before it
	// is dropped (TENANTPLANE_ARCHIVE_DIR).
	ArchiveDir string
	// TenantStatementTimeout is the per-role statement_timeout of tenant roles. Default 30s.
	TenantStatementTimeout time.Duration
	// TenantConnLimit is the per-role CONNECTION LIMIT of tenant roles: at
	// least replicas x the plan's pool size (TENANTPLANE_TENANT_CONN_LIMIT). Default 40.
	TenantConnLimit int
	// Jobs is the process's one River client, which the provisioner
	// registers its workers and queue into (New); its owner opens it once
	// every part has registered, and starts and stops it. controlplane
	// passes its own. Default: nil, and the provisioner makes a registry of
	// its own, opens it in New (jobs.Config's defaults, Logger) and runs it
	// in Start and Stop: for standalone use, such as package tests.
	Jobs *jobs.Registry
	// Workers is how many provisioning jobs run at once in this process. Default 8.
	Workers int

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
	jobs   *jobs.Registry
	// ownJobs: jobs is the provisioner's own (Config.Jobs was nil), opened
	// in New and run by Start and Stop.
	ownJobs bool

	mu         sync.Mutex
	adminPools map[int64]*adminPool // by server id
	templates  singleflight.Group

	refill chan struct{}
	fill   startstop.Loop // the warm-pool refiller (warmpool.go)
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
	if cfg.ServerTimeout == 0 {
		cfg.ServerTimeout = 90 * time.Second
	}
	if cfg.DefaultConnBudget == 0 {
		cfg.DefaultConnBudget = 80
	}
	if cfg.WarmPoolSize == 0 {
		cfg.WarmPoolSize = 2
	}
	if cfg.DeleteGrace == 0 {
		cfg.DeleteGrace = 7 * 24 * time.Hour
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
	p := &Provisioner{
		store:      store,
		cfg:        cfg,
		logger:     cfg.Logger,
		schema:     schema,
		adminPools: map[int64]*adminPool{},
		refill:     make(chan struct{}, 1),
	}
	p.jobs = cfg.Jobs
	if p.jobs == nil {
		p.jobs, p.ownJobs = jobs.NewRegistry(), true
	}
	river.AddWorker(p.jobs.Workers(), &provisionWorker{p: p})
	river.AddWorker(p.jobs.Workers(), &dropWorker{p: p})
	p.jobs.AddQueue(river.QueueDefault, cfg.Workers)
	if p.ownJobs {
		if err := p.jobs.Open(store.Pool(), jobs.Config{Logger: cfg.Logger}); err != nil {
			return nil, fmt.Errorf("provisioner: %w", err)
		}
	}
	return p, nil
}

// river is the client the provisioner inserts its jobs with.
func (p *Provisioner) river() *river.Client[pgx.Tx] { return p.jobs.Client() }

// Start runs the warm-pool refiller until Stop, and the provisioning
// workers when the job registry is the provisioner's own (Config.Jobs). A
// Provisioner that runs refuses a second Start with startstop.ErrStarted.
func (p *Provisioner) Start(ctx context.Context) error {
	// The refiller goes first: its Loop refuses a second Start before
	// anything else is started twice.
	if err := p.fill.Start(ctx, p.refillLoop); err != nil {
		return fmt.Errorf("provisioner: %w", err)
	}
	if p.ownJobs {
		if err := p.jobs.Start(ctx); err != nil {
			return errors.Join(fmt.Errorf("provisioner: %w", err), p.fill.Stop(ctx))
		}
	}
	return nil
}

// Stop stops the refiller and closes the admin pools. With its own job
// registry (Config.Jobs), it first lets running jobs finish (until ctx ends,
// then cancels them: they resume elsewhere); a shared registry must be
// stopped by its owner before the provisioner, whose pools its jobs use.
func (p *Provisioner) Stop(ctx context.Context) error {
	var err error
	if p.fill.Running() {
		// The refiller ends as soon as it is cancelled (its queries are):
		// wait for it whatever ctx, so a second Stop finds nothing running.
		_ = p.fill.Stop(context.WithoutCancel(ctx))
		if p.ownJobs {
			err = p.jobs.Stop(ctx)
		}
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

// Refill asks the refiller to bring each server's template and warm pool to
// the newest tenant schema now, rather than at its next pass: fan-out calls
// it when a run starts (fanout.Refiller), so that new tenants are made at
// the newest version.
func (p *Provisioner) Refill() { p.kickRefill() }

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
	cfg, err := catalog.ServerConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("server %q: %w", serverName, err)
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
	pcfg, err := catalog.ServerConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("server %q: %w", serverName, err)
	}
	cfg := pcfg.ConnConfig
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
