package fanout

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/riverqueue/river"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/jobs"
	"github.com/tenantplane/tenantplane/internal/stall"
	"github.com/tenantplane/tenantplane/internal/startstop"
	"github.com/tenantplane/tenantplane/migrations"
)

// Config configures a Service. Zero fields take the documented defaults.
type Config struct {
	// Logger receives structured logs. Default: slog.Default().
	Logger *slog.Logger
	// Jobs is the process's one River client, which fan-out registers its
	// slot worker and queue into (New); its owner opens it once every part
	// has registered, and starts and stops it, after Stop has told the slots
	// to hand over. controlplane passes its own. Default: nil, and the
	// service makes a registry of its own, opens it in New (jobs.Config's
	// defaults, Logger) and runs it in Start and Stop: for standalone use,
	// such as package tests.
	Jobs *jobs.Registry
	// Migrations is the tenant schema. Default: the embedded set.
	Migrations *migrations.Source
	// Workers is how many tenants this process migrates at once for
	// migration runs, whatever a run's concurrency. Default 16.
	Workers int
	// Lease is how long a run's claim on a tenant lives without a
	// heartbeat: a process that dies has its tenants taken over, and its
	// runs given new workers, this long after. Default 30s.
	Lease time.Duration
	// AbandonAfter is how long a running run made with other tenant
	// migrations than this process's may go without a worker before this
	// process fails it, saying so: the processes that had its migrations are
	// gone (a deploy brought another set). A run so failed no longer keeps a
	// new run from starting, and is resumed from a process that has its
	// migrations. Default 2 Leases; its own processes revive a run after one.
	AbandonAfter time.Duration
	// Limits bound each statement of a run's tenant migrations.
	// Default: migrations.Limits' defaults.
	Limits migrations.Limits
	// ConnectTimeout bounds each connection to a tenant server. Default 5s.
	ConnectTimeout time.Duration
	// StallAfter is how long one tenant's migration runs before its server
	// is probed (a fresh connection, SELECT 1, within 2 s), to tell a server
	// that hangs from a slow migration: one that does not answer has its
	// tenants' migrations stopped and retried later, saying why, and the
	// run's tenants on other servers go on. Default 10s.
	StallAfter time.Duration
	// Refiller, when set, is told when a run starts, so that new tenants
	// are made from a template at the newest version before they are asked
	// for (provisioner.Provisioner satisfies it). Default: none.
	Refiller Refiller
}

// Refiller prepares what new tenants are made from (each server's template
// and warm pool) at the newest tenant schema.
type Refiller interface {
	Refill()
}

// Service runs migration runs: it starts, reports and changes them, works
// their tenants in River jobs, and reads the fleet's schema (drift).
type Service struct {
	db      *catalog.Store // the entities fan-out reads: servers, tenants
	store   *store         // fan-out's own tables
	cfg     Config
	logger  *slog.Logger
	schema  migrations.Source
	jobs    *jobs.Registry
	ownJobs bool            // jobs is the service's own (Config.Jobs was nil): Start and Stop run it
	servers *stall.Watchdog // tenant servers that hang while their tenants migrate

	workerOnce sync.Once
	workerID   string

	wakeMu sync.Mutex
	wakeCh chan struct{}

	supervisor startstop.Loop
	stopMu     sync.Mutex
	stopping   chan struct{} // closed when the process stops: slots hand their run over
}

// New returns a Service working through the catalog store. Start runs its supervisor.
func New(db *catalog.Store, cfg Config) (*Service, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	schema := migrations.Embedded()
	if cfg.Migrations != nil {
		schema = *cfg.Migrations
	}
	if cfg.Workers == 0 {
		cfg.Workers = 16
	}
	if cfg.Lease == 0 {
		cfg.Lease = 30 * time.Second
	}
	if cfg.AbandonAfter == 0 {
		cfg.AbandonAfter = 2 * cfg.Lease
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	if cfg.StallAfter == 0 {
		cfg.StallAfter = 10 * time.Second
	}
	s := &Service{db: db, store: newStore(db), cfg: cfg, logger: cfg.Logger, schema: schema, jobs: cfg.Jobs,
		servers: stall.New(stall.Config{StallAfter: cfg.StallAfter, ProbeTimeout: 2 * time.Second, Logger: cfg.Logger,
			Cause: func(name string) error {
				return fmt.Errorf("%w: server %s did not answer a probe", errServerDown, name)
			}})}
	if s.jobs == nil {
		s.jobs, s.ownJobs = jobs.NewRegistry(), true
	}
	river.AddWorker(s.jobs.Workers(), &slotWorker{s: s})
	s.jobs.AddQueue(queueName(schema.Hash()), cfg.Workers)
	if s.ownJobs {
		if err := s.jobs.Open(db.Pool(), jobs.Config{Logger: cfg.Logger}); err != nil {
			return nil, fmt.Errorf("fanout: %w", err)
		}
	}
	return s, nil
}

// Schema is the tenant schema the service migrates tenants with.
func (s *Service) Schema() migrations.Source { return s.schema }

// Start runs the supervisor that revives unattended runs, until Stop, and
// the slot workers when the job registry is the service's own (Config.Jobs).
func (s *Service) Start(ctx context.Context) error {
	s.stopMu.Lock()
	s.stopping = make(chan struct{})
	s.stopMu.Unlock()
	if err := s.supervisor.Start(ctx, s.superviseRuns); err != nil {
		return err
	}
	if s.ownJobs {
		if err := s.jobs.Start(ctx); err != nil {
			_ = s.supervisor.Stop(ctx)
			return fmt.Errorf("fanout: %w", err)
		}
	}
	return nil
}

// Stop stops the supervisor and tells the slots to hand their runs over
// once their current tenant is done: River's graceful stop waits for its
// jobs, and a slot would otherwise wait for its run to end. With its own job
// registry it then stops it; a shared one is stopped by its owner after
// this Stop.
func (s *Service) Stop(ctx context.Context) error {
	// The channel stays closed (until a new Start): a slot River fetches
	// after this, before the job client stops, must see it closed too, or
	// it would work the whole run while the stop waits for it.
	s.stopMu.Lock()
	if s.stopping != nil {
		select {
		case <-s.stopping: // stopped already
		default:
			close(s.stopping)
		}
	}
	s.stopMu.Unlock()
	err := s.supervisor.Stop(ctx)
	if s.ownJobs {
		if jerr := s.jobs.Stop(ctx); err == nil {
			err = jerr
		}
	}
	s.servers.Wait() // probes end within their 2 s
	return err
}

// stoppingCh is closed once the service stops (and stays so until it
// starts again); nil (never closed) when it was never started.
func (s *Service) stoppingCh() <-chan struct{} {
	s.stopMu.Lock()
	defer s.stopMu.Unlock()
	return s.stopping
}

// queueName is the River queue of the runs of one tenant schema: only
// processes built with the same migrations work on them.
func queueName(schemaHash string) string { return "fanout_" + schemaHash }

// worker names this process in the rows it claims: host, pid and a random
// part (a restarted process is another worker).
func (s *Service) worker() string {
	s.workerOnce.Do(func() {
		host, _ := os.Hostname()
		b := make([]byte, 3)
		_, _ = rand.Read(b)
		s.workerID = fmt.Sprintf("%s:%d:%s", host, os.Getpid(), hex.EncodeToString(b))
	})
	return s.workerID
}

// woken returns a channel closed at the next wake.
func (s *Service) woken() <-chan struct{} {
	s.wakeMu.Lock()
	defer s.wakeMu.Unlock()
	if s.wakeCh == nil {
		s.wakeCh = make(chan struct{})
	}
	return s.wakeCh
}

// wake tells this process's idle slots that a tenant finished: one of them
// may claim now. Slots of other processes find out at their next poll.
func (s *Service) wake() {
	s.wakeMu.Lock()
	defer s.wakeMu.Unlock()
	if s.wakeCh != nil {
		close(s.wakeCh)
		s.wakeCh = nil
	}
}
