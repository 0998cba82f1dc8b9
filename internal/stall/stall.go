// Package stall tells a dependency that hangs from one that is slow, for
// the callers that must answer within a bound whatever the dependency does:
// the router (a tenant database server) and the admin API (the catalog).
//
// A request's use of a dependency is watched. When it has waited StallAfter,
// the dependency is probed (a fresh connection and a trivial query, bounded
// by ProbeTimeout). One that answers is alive, and nothing happens: the slow
// request goes on. One that does not is down: the requests waiting on it are
// cancelled with a cause that says so, and the next ones are refused at
// once, without touching it, while a probe, at most every ProbeInterval and
// only while requests come, checks whether it answers again. The first that
// does puts it back in service. Nobody restarts anything.
//
//	if w.Down(id) { return errDown }
//	ctx, cancel := context.WithCancelCause(ctx)
//	done := w.Watch(id, "pg-1", probe, cancel)
//	defer done()
package stall

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrInconclusive is what a probe returns when it could not try (no place
// in a connection budget, say): the dependency is not judged.
var ErrInconclusive = errors.New("stall: probe inconclusive")

// Probe checks whether a dependency answers within ctx: nil when it does
// (an error of the dependency's own, a refusal or a SQL error, is an
// answer too, and the probe should return nil for it).
type Probe func(ctx context.Context) error

// Config tunes a Watchdog. A zero field takes its default.
type Config struct {
	// StallAfter is how long a request waits before its dependency is probed. Default 1s.
	StallAfter time.Duration
	// ProbeTimeout bounds one probe. Default 700ms.
	ProbeTimeout time.Duration
	// ProbeInterval is the least time between probes of a dependency that is down. Default 500ms.
	ProbeInterval time.Duration
	// Cause is what a request cancelled because its dependency is down
	// ends with (context.Cause). Default an error saying the dependency did not answer.
	Cause func(name string) error
	// Logger receives a line when a dependency goes down and when it is back. Default slog.Default().
	Logger *slog.Logger
}

// Watchdog watches the dependencies of requests, each under a key.
type Watchdog struct {
	cfg Config

	mu    sync.Mutex
	state map[any]*dependency
	wg    sync.WaitGroup // probes running
}

type dependency struct {
	name      string
	down      bool
	probing   bool
	lastProbe time.Time
	probe     Probe                                   // the last one a request gave
	waiting   map[*time.Timer]context.CancelCauseFunc // requests using it
}

// New returns a Watchdog with cfg's defaults applied.
func New(cfg Config) *Watchdog {
	if cfg.StallAfter == 0 {
		cfg.StallAfter = time.Second
	}
	if cfg.ProbeTimeout == 0 {
		cfg.ProbeTimeout = 700 * time.Millisecond
	}
	if cfg.ProbeInterval == 0 {
		cfg.ProbeInterval = 500 * time.Millisecond
	}
	if cfg.Cause == nil {
		cfg.Cause = func(name string) error { return errors.New(name + " did not answer a probe") }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Watchdog{cfg: cfg, state: map[any]*dependency{}}
}

func (w *Watchdog) get(key any, name string) *dependency {
	d := w.state[key]
	if d == nil {
		d = &dependency{name: name, waiting: map[*time.Timer]context.CancelCauseFunc{}}
		w.state[key] = d
	}
	return d
}

// Down reports whether a dependency is down; if it is, and none was
// probed for ProbeInterval, it probes it in the background.
func (w *Watchdog) Down(key any) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	d := w.state[key]
	if d == nil || !d.down {
		return false
	}
	if !d.probing && time.Since(d.lastProbe) >= w.cfg.ProbeInterval && d.probe != nil {
		w.startProbe(d)
	}
	return true
}

// Watch watches a request's use of a dependency until the returned
// function is called: past StallAfter the dependency is probed, and if it
// is down, cancel is called with the Config's Cause.
func (w *Watchdog) Watch(key any, name string, probe Probe, cancel context.CancelCauseFunc) (done func()) {
	w.mu.Lock()
	d := w.get(key, name)
	d.probe = probe
	timer := time.AfterFunc(w.cfg.StallAfter, func() { w.suspect(key) })
	d.waiting[timer] = cancel
	w.mu.Unlock()
	return func() {
		timer.Stop()
		w.mu.Lock()
		delete(d.waiting, timer)
		w.mu.Unlock()
	}
}

// suspect probes a dependency a request has waited on for StallAfter.
func (w *Watchdog) suspect(key any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if d := w.state[key]; d != nil && !d.probing && !d.down {
		w.startProbe(d)
	}
}

// startProbe probes a dependency in the background; w.mu is held.
func (w *Watchdog) startProbe(d *dependency) {
	d.probing = true
	d.lastProbe = time.Now()
	probe := d.probe
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), w.cfg.ProbeTimeout)
		err := probe(ctx)
		cancel()
		w.mu.Lock()
		defer w.mu.Unlock()
		d.probing = false
		switch {
		case err == nil && d.down:
			d.down = false
			w.cfg.Logger.Info("dependency answers again; back in service", "dependency", d.name)
		case err != nil && !errors.Is(err, ErrInconclusive) && !d.down:
			d.down = true
			w.cfg.Logger.Warn("dependency does not answer; its requests answer 503 until it does",
				"dependency", d.name, "error", err, "requests_cancelled", len(d.waiting))
			cause := w.cfg.Cause(d.name)
			for t, cancel := range d.waiting {
				cancel(cause)
				delete(d.waiting, t)
			}
		}
	}()
}

// Wait waits for the probes running to end; each is bounded by ProbeTimeout.
func (w *Watchdog) Wait() { w.wg.Wait() }

// ConnProbe is the Probe of a PostgreSQL server: a fresh connection made
// with cfg (a copy: cfg is not changed) and SELECT 1, within the probe's
// deadline. An error of the server's own (a refusal, a SQL error) is an
// answer. An error for which inconclusive (optional) returns true makes the
// probe ErrInconclusive: the server was not tried.
func ConnProbe(cfg *pgx.ConnConfig, inconclusive func(error) bool) Probe {
	return func(ctx context.Context) error {
		c := cfg.Copy()
		if d, ok := ctx.Deadline(); ok {
			c.ConnectTimeout = max(0, time.Until(d))
		}
		conn, err := pgx.ConnectConfig(ctx, c)
		if err == nil {
			defer conn.Close(context.Background())
			_, err = conn.Exec(ctx, "SELECT 1")
		}
		var pgErr *pgconn.PgError
		switch {
		case err == nil || errors.As(err, &pgErr):
			return nil
		case inconclusive != nil && inconclusive(err):
			return ErrInconclusive
		}
		return err
	}
}
