package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/tenantplane/tenantplane/billing"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/datarights"
	"github.com/tenantplane/tenantplane/fanout"
	"github.com/tenantplane/tenantplane/internal/httpapi"
	"github.com/tenantplane/tenantplane/internal/jobs"
	"github.com/tenantplane/tenantplane/internal/stall"
	"github.com/tenantplane/tenantplane/migrations"
	"github.com/tenantplane/tenantplane/mover"
	"github.com/tenantplane/tenantplane/provisioner"
	"github.com/tenantplane/tenantplane/router"
)

// App is one running tenantplane: the tenant API, the admin API and the
// background work, over one catalog.
type App struct {
	cfg      Config
	logger   *slog.Logger
	store    *catalog.Store
	watcher  *catalog.Watcher
	router   *router.Router
	jobs     *jobs.Registry // the one River client: every part's workers
	prov     *provisioner.Provisioner
	fanout   *fanout.Service
	moves    *mover.Service // tenant moves; the admin API's moves routes call it
	billing  *billing.Service
	data     *datarights.Service // backups, restores, exports, erasures
	registry *prometheus.Registry
	// catalogWatch finds a catalog that hangs, for the admin API (catalogGuard).
	catalogWatch *stall.Watchdog
	catalogProbe stall.Probe

	apiServer, adminServer *http.Server
	adminEngine            *gin.Engine // the admin API, beside the console on the admin listener
	apiLn, adminLn         net.Listener
	serveErr               chan error
	stopOnce               sync.Once
	stopErr                error
}

// New migrates the catalog to the newest schema and wires the components. It
// fails when the catalog cannot be reached: a process that cannot read its
// source of truth should not start serving.
func New(ctx context.Context, cfg Config, logger *slog.Logger) (_ *App, err error) {
	if logger == nil {
		logger = slog.Default()
	}
	if err := catalog.Migrate(ctx, cfg.DatabaseURL); err != nil {
		return nil, fmt.Errorf("catalog at %s: %w", redactDSN(cfg.DatabaseURL), err)
	}
	cipher, err := catalog.NewCipher(cfg.SecretKey)
	if err != nil {
		return nil, fmt.Errorf("TENANTPLANE_SECRET_KEY: %w", err)
	}
	store, err := catalog.Open(ctx, cfg.DatabaseURL, cipher, catalog.StoreConfig{})
	if err != nil {
		return nil, err
	}
	// From here on, a New that fails closes the catalog it opened.
	defer func() {
		if err != nil {
			store.Close()
		}
	}()
	schema, err := migrations.Load(cfg.TenantMigrations)
	if err != nil {
		return nil, fmt.Errorf("TENANTPLANE_TENANT_MIGRATIONS: %w", err)
	}
	if err = checkConnLimit(ctx, store, cfg.TenantConnLimit, cfg.Replicas); err != nil {
		return nil, err
	}
	watcher := catalog.NewWatcher(store, logger)
	customers := &stripeCustomers{}
	// One River client for the process: each part registers its workers
	// and queues, then it is opened over the catalog pool.
	jobReg := jobs.NewRegistry()
	prov, err := provisioner.New(store, provisioner.Config{
		Logger: logger, Watcher: watcher, Migrations: &schema, WarmPoolSize: cfg.WarmPoolSize, DeleteGrace: cfg.DeleteGrace, ArchiveDir: cfg.ArchiveDir,
		TenantConnLimit: cfg.TenantConnLimit, Customers: customers, CustomerTimeout: cfg.customerTimeout(), Jobs: jobReg,
	})
	if err != nil {
		return nil, err
	}
	fan, err := fanout.New(store, fanout.Config{Logger: logger, Jobs: jobReg, Migrations: &schema, Refiller: prov})
	if err != nil {
		store.Close()
		return nil, err
	}
	keep := cfg.MoveKeep
	if keep == 0 {
		keep = -1 // TENANTPLANE_MOVE_KEEP=0s: drop the source at once (mover's 0 is its default)
	}
	moves, err := mover.New(store, mover.Config{Logger: logger, Jobs: jobReg, Targets: prov, Keep: keep, Workers: cfg.MoveWorkers})
	if err != nil {
		store.Close()
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	customerEraser := &billingCustomers{}
	data, err := datarights.New(store, datarights.Config{Logger: logger, Jobs: jobReg, Tenants: prov, Customers: customerEraser,
		BackupDir: cfg.BackupDir, ExportDir: cfg.ExportDir, ArchiveDir: cfg.ArchiveDir, ExportTTL: cfg.ExportTTL, ScheduleEvery: cfg.BackupCheck,
		Registerer: reg})
	if err != nil {
		store.Close()
		return nil, err
	}
	if err := jobReg.Open(store.Pool(), jobs.Config{Logger: logger}); err != nil {
		store.Close()
		return nil, err
	}
	bill, err := newBilling(store, prov, reg, cfg, logger)
	if err != nil {
		return nil, err
	}
	if bill.SendsToStripe() {
		customers.billing = bill
	}
	customerEraser.billing = bill
	a := &App{
		cfg:      cfg,
		logger:   logger,
		store:    store,
		watcher:  watcher,
		jobs:     jobReg,
		prov:     prov,
		fanout:   fan,
		moves:    moves,
		billing:  bill,
		data:     data,
		registry: reg,
		serveErr: make(chan error, 2),
	}
	a.catalogWatch = newCatalogWatch(a)
	metrics := httpapi.NewMetrics(reg)
	a.router, err = router.New(router.Config{
		Store: store, Watcher: watcher, Ready: a.ready, Logger: logger, Metrics: metrics, Registerer: reg,
		Pools: router.PoolConfig{CacheSize: cfg.PoolCacheSize, Replicas: cfg.Replicas}, FlushInterval: cfg.UsageFlushInterval,
		HoldTimeout: cfg.MoveHold, TrustedProxies: cfg.TrustedProxies, TenantDomain: cfg.TenantDomain,
	})
	if err != nil {
		return nil, err
	}
	a.apiServer = newHTTPServer(a.router.Handler(), logger)
	a.adminEngine = a.adminHandler(metrics)
	admin, err := a.withConsole(a.adminEngine)
	if err != nil {
		return nil, err
	}
	a.adminServer = newHTTPServer(admin, logger)
	return a, nil
}

func newHTTPServer(h http.Handler, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
}

// Start listens on both addresses and serves in the background. With port 0
// in an address, APIAddr and AdminAddr tell the port chosen.
func (a *App) Start(ctx context.Context) error {
	var err error
	if a.apiLn, err = listen(ctx, "TENANTPLANE_API_ADDR", a.cfg.APIAddr); err != nil {
		return err
	}
	if a.adminLn, err = listen(ctx, "TENANTPLANE_ADMIN_ADDR", a.cfg.AdminAddr); err != nil {
		_ = a.apiLn.Close()
		return err
	}
	if err := a.startWork(ctx); err != nil {
		_ = a.apiLn.Close()
		_ = a.adminLn.Close()
		return err
	}
	for _, start := range []func(context.Context) error{a.watcher.Start, a.router.Start, a.billing.Start} {
		if err := start(ctx); err != nil {
			return errors.Join(err, a.Stop(ctx))
		}
	}
	for _, s := range []struct {
		srv *http.Server
		ln  net.Listener
	}{{a.apiServer, a.apiLn}, {a.adminServer, a.adminLn}} {
		go func() {
			if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.serveErr <- err
			}
		}()
	}
	a.logger.Info("serving", "api_addr", a.APIAddr(), "admin_addr", a.AdminAddr())
	return nil
}

func listen(ctx context.Context, name, addr string) (net.Listener, error) {
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s=%s: cannot listen: %w", name, addr, err)
	}
	return ln, nil
}

// APIAddr is the address the tenant API listens on, once started.
func (a *App) APIAddr() string { return a.apiLn.Addr().String() }

// AdminAddr is the address the admin API listens on, once started.
func (a *App) AdminAddr() string { return a.adminLn.Addr().String() }

// Run starts the app and serves until ctx ends or a server fails, then shuts
// down gracefully.
func (a *App) Run(ctx context.Context) error {
	if err := a.Start(ctx); err != nil {
		a.store.Close()
		return err
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-a.serveErr:
	}
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.ShutdownTimeout)
	defer cancel()
	return errors.Join(runErr, a.Stop(stopCtx))
}

// Stop stops taking requests, lets those in flight finish (until ctx ends),
// then closes the catalog. It is safe to call more than once.
func (a *App) Stop(ctx context.Context) error {
	a.stopOnce.Do(func() {
		a.logger.Info("shutting down")
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, srv := range []*http.Server{a.apiServer, a.adminServer} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = srv.Shutdown(ctx)
			}()
		}
		wg.Wait()
		// The servers take no more requests: flush the last usage counts.
		errs = append(errs, a.router.Stop(ctx), a.billing.Stop(ctx), a.stopWork(ctx))
		a.watcher.Stop()
		a.catalogWatch.Wait()
		a.store.Close()
		a.stopErr = errors.Join(errs...)
		a.logger.Info("stopped")
	})
	return a.stopErr
}

// startWork runs the background work: the provisioner's and fan-out's
// loops and the mover, then the one job client that works for all.
func (a *App) startWork(ctx context.Context) error {
	if err := a.prov.Start(ctx); err != nil {
		return err
	}
	if err := a.fanout.Start(ctx); err != nil {
		return errors.Join(err, a.prov.Stop(ctx))
	}
	if err := a.moves.Start(ctx); err != nil {
		return errors.Join(err, a.fanout.Stop(ctx), a.prov.Stop(ctx))
	}
	if err := a.data.Start(ctx); err != nil {
		return errors.Join(err, a.moves.Stop(ctx), a.fanout.Stop(ctx), a.prov.Stop(ctx))
	}
	if err := a.jobs.Start(ctx); err != nil {
		return errors.Join(err, a.data.Stop(ctx), a.moves.Stop(ctx), a.fanout.Stop(ctx), a.prov.Stop(ctx))
	}
	return nil
}

// stopWork stops the background work: fan-out first, which tells its slots
// to hand their runs over (the job client's graceful stop waits for them),
// then the job client, which lets running jobs finish until ctx ends and
// then cancels them, and only then the provisioner, whose admin pools the
// jobs use.
func (a *App) stopWork(ctx context.Context) error {
	return errors.Join(a.fanout.Stop(ctx), a.moves.Stop(ctx), a.data.Stop(ctx), a.jobs.Stop(ctx), a.prov.Stop(ctx))
}

// stripeCustomers lets provisioning create each tenant's Stripe customer
// before activating it, through billing, when billing sends to Stripe. The
// provisioner is made before billing (billing suspends unpaid tenants
// through it), so billing is set here once made, before any job runs
// (Start); left unset, without Stripe, there is nothing to create.
type stripeCustomers struct{ billing *billing.Service }

func (c *stripeCustomers) EnsureCustomer(ctx context.Context, t catalog.Tenant) error {
	if c.billing == nil {
		return nil
	}
	return c.billing.EnsureCustomer(ctx, t)
}

// billingCustomers lets an erasure remove the tenant's Stripe customer and
// billing details through billing, and says what it removed and kept.
type billingCustomers struct{ billing *billing.Service }

func (c *billingCustomers) EraseCustomer(ctx context.Context, tenantID string) (removed, kept []datarights.Artefact, err error) {
	e, err := c.billing.EraseCustomer(ctx, tenantID)
	if err != nil {
		return nil, nil, err
	}
	if e.StripeCustomerID != "" {
		removed = append(removed, datarights.Artefact{Kind: "stripe_customer", Name: e.StripeCustomerID, Note: "deleted in Stripe"})
	}
	if e.AddressRemoved {
		removed = append(removed, datarights.Artefact{Kind: "billing_address"})
	}
	kept = append(kept, datarights.Artefact{Kind: "invoices", Count: &e.Invoices,
		Note: "kept, with their lines, as tax law requires; Stripe keeps the invoices it finalized"})
	return removed, kept, nil
}

// ready reports whether the app can do its work: the catalog answers.
func (a *App) ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return a.store.Ping(ctx)
}

// checkConnLimit refuses a per-role connection limit below replicas pools
// of a plan: the replicas together would then fail that plan's busiest
// tenants.
func checkConnLimit(ctx context.Context, store *catalog.Store, limit, replicas int) error {
	plans, err := store.ListPlans(ctx)
	if err != nil {
		return err
	}
	for _, p := range plans {
		if need := replicas * p.MaxConns; need > limit {
			return fmt.Errorf("TENANTPLANE_TENANT_CONN_LIMIT=%d is below TENANTPLANE_REPLICAS=%d x plan %q's pool of %d connections; set it to at least %d",
				limit, replicas, p.Name, p.MaxConns, need)
		}
	}
	return nil
}

func redactDSN(dsn string) string {
	r, err := catalog.RedactDSN(dsn)
	if err != nil {
		return "(malformed DSN)"
	}
	return r
}
