// Package jobs is the one River client of a tenantplane process, and its
// liveness. Every part that has durable background work (the provisioner,
// fan-out) registers its workers and queues into one Registry; the
// composition root opens it over the catalog pool once all have registered,
// and starts and stops it. Parts insert their jobs through Client, in the
// transaction of the change that asks for them.
//
//	reg := jobs.NewRegistry()
//	river.AddWorker(reg.Workers(), &provisionWorker{})
//	reg.AddQueue(river.QueueDefault, 8)
//	if err := reg.Open(store.Pool(), jobs.Config{Logger: logger}); err != nil { ... }
//	if err := reg.Start(ctx); err != nil { ... }
//	defer reg.Stop(ctx)
//
// Alongside River, the registry runs the client's heartbeat (heartbeat.go):
// the jobs of a process that died are taken back within seconds, not after
// River's RescueAfter.
package jobs

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
)

// Config configures the River client a Registry opens. Zero fields take the
// documented defaults.
type Config struct {
	// Logger receives River's logs and the heartbeat's. Default: slog.Default().
	Logger *slog.Logger
	// JobTimeout bounds one job (a worker may set its own). Default 2 minutes.
	JobTimeout time.Duration
	// RescueAfter is how long a job may look running before River takes it
	// over, whatever its process: the bound on a job that hangs in a live
	// process. Must exceed JobTimeout. Default 3 minutes. A process that died
	// has its jobs taken over sooner, ClientDeadAfter after its last beat.
	RescueAfter time.Duration
	// MaxAttempts is how often a job is tried before it is discarded
	// (InsertOpts may say otherwise). Default 10.
	MaxAttempts int
	// FetchCooldown is the shortest time between two fetches of a queue.
	// Default 1ms: a new tenant's job is picked up at once.
	FetchCooldown time.Duration
	// FetchPollInterval is how often a queue is polled when no notification
	// woke it. Default 500ms.
	FetchPollInterval time.Duration
	// HeartbeatInterval is how often this process records in the catalog
	// that its job client is alive (heartbeat.go). Default 2s.
	HeartbeatInterval time.Duration
	// ClientDeadAfter is how long a process may go without a heartbeat
	// before any other process (or its restart) takes its running jobs
	// back. A process that keeps beating never loses a job this way, however
	// long the job runs. Default 10s; at least 3 HeartbeatIntervals.
	ClientDeadAfter time.Duration
}

func (c *Config) applyDefaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.JobTimeout == 0 {
		c.JobTimeout = 2 * time.Minute
	}
	if c.RescueAfter == 0 {
		c.RescueAfter = 3 * time.Minute
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 10
	}
	if c.FetchCooldown == 0 {
		c.FetchCooldown = time.Millisecond
	}
	if c.FetchPollInterval == 0 {
		c.FetchPollInterval = 500 * time.Millisecond
	}
}

// Errors of a Registry used out of order.
var (
	ErrOpen    = errors.New("jobs: the registry is open already: register workers and queues before Open, and Open once")
	ErrNotOpen = errors.New("jobs: the registry is not open: Open it (over the catalog pool) before Start or Client")
)

// Registry collects the workers and queues of every part, then builds and
// runs the one River client over them. Its zero value is not usable: make
// one with NewRegistry.
type Registry struct {
	workers *river.Workers

	mu     sync.Mutex
	queues map[string]river.QueueConfig
	cfg    Config
	client *river.Client[pgx.Tx]
	beats  *clientHeartbeat
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{workers: river.NewWorkers(), queues: map[string]river.QueueConfig{}}
}

// Workers is where parts add their workers: river.AddWorker(reg.Workers(), w).
func (r *Registry) Workers() *river.Workers { return r.workers }

// AddQueue has the client work queue name with at most maxWorkers jobs at
// once. A queue added twice keeps the larger bound.
func (r *Registry) AddQueue(name string, maxWorkers int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if q, ok := r.queues[name]; !ok || q.MaxWorkers < maxWorkers {
		r.queues[name] = river.QueueConfig{MaxWorkers: maxWorkers}
	}
}

// Open builds the River client over pool (the catalog's) with the workers
// and queues registered so far, and its heartbeat. After Open, Client
// inserts jobs; Start works them.
func (r *Registry) Open(pool *pgxpool.Pool, cfg Config) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.client != nil {
		return ErrOpen
	}
	cfg.applyDefaults()
	if cfg.RescueAfter <= cfg.JobTimeout {
		return errors.New("jobs: RescueAfter must exceed JobTimeout")
	}
	id := newClientID()
	beats, err := newClientHeartbeat(pool, id, heartbeatConfig{
		Interval: cfg.HeartbeatInterval, DeadAfter: cfg.ClientDeadAfter, Logger: cfg.Logger.With("component", "heartbeat"),
	})
	if err != nil {
		return err
	}
	queues := make(map[string]river.QueueConfig, len(r.queues))
	for name, q := range r.queues {
		queues[name] = q
	}
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{
		ID:                   id, // its beats in job_clients say it is alive
		Logger:               cfg.Logger.With("component", "river"),
		Queues:               queues,
		Workers:              r.workers,
		JobTimeout:           cfg.JobTimeout,
		RescueStuckJobsAfter: cfg.RescueAfter,
		FetchCooldown:        cfg.FetchCooldown,
		FetchPollInterval:    cfg.FetchPollInterval,
		MaxAttempts:          cfg.MaxAttempts,
	})
	if err != nil {
		return fmt.Errorf("jobs: job queue: %w", err)
	}
	r.cfg, r.client, r.beats = cfg, client, beats
	return nil
}

// Client is the River client, for inserting jobs (InsertTx in the
// transaction of the change that asks for them). Nil until Open.
func (r *Registry) Client() *river.Client[pgx.Tx] {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.client
}

// Config is the configuration Open applied, defaults included.
func (r *Registry) Config() Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cfg
}

// Start records the client as alive, then works the registered queues
// until Stop.
func (r *Registry) Start(ctx context.Context) error {
	client, beats := r.Client(), r.heartbeat()
	if client == nil {
		return ErrNotOpen
	}
	// The client beats before it fetches a job: a running job whose client
	// has no row counts as a dead process's.
	if err := beats.Start(ctx); err != nil {
		return err
	}
	if err := client.Start(ctx); err != nil {
		_ = beats.Stop(ctx)
		return fmt.Errorf("jobs: starting the job workers: %w", err)
	}
	return nil
}

// Stop lets running jobs finish until ctx ends, then cancels them (they
// resume elsewhere, or at the next start), and only then stops beating.
// Stopping a registry that was never opened or started does nothing.
func (r *Registry) Stop(ctx context.Context) error {
	client, beats := r.Client(), r.heartbeat()
	if client == nil || !beats.running() {
		return nil
	}
	err := client.Stop(ctx)
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		err = client.StopAndCancel(context.Background())
	}
	// Only now, with the jobs handed back, may the client look dead.
	return errors.Join(err, beats.Stop(ctx))
}

func (r *Registry) heartbeat() *clientHeartbeat {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.beats
}
