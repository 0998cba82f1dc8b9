package jobs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tenantplane/tenantplane/internal/startstop"
)

// A process's River client beats: it records in the catalog (job_clients)
// every HeartbeatInterval that it is alive. Every process, on start and
// after each beat of its own, makes the jobs of dead clients available again.
//
// Why: River rescues a job that looks stuck only after RescueStuckJobsAfter
// (3 minutes here, as it must exceed the job timeout), and only in its
// elected leader. A process killed outright (SIGKILL, OOM, a lost host) left
// its tenants provisioning that long. Its row in job_clients stops being
// refreshed at once, though, so a job whose client has not beaten for
// ClientDeadAfter (several missed beats) is taken back within seconds.
//
// Crash safety: a client is judged by its beats, never by how long its job
// has run, so a replica that is slow but alive keeps its jobs however long
// they take (River's own rescuer, and the job timeout, still bound a job
// that hangs). Beats go over a connection of their own, outside the pool
// the jobs use, so a busy pool never delays one, and every time is the
// catalog's now(), never a process's clock. A process that could not beat
// for ClientDeadAfter (cut off from the catalog) may see a job it still
// runs taken over; that is safe because every job registered here must be
// (a provisioning step is idempotent and activation a conditional
// transition; a fan-out slot holds leases with generations), the same
// argument that makes River's own rescue safe. Only clients whose ID carries
// ClientIDPrefix are judged: a client that does not beat (an older version
// of tenantplane during a rolling upgrade) is left to River's rescuer.

// ClientIDPrefix starts the ID of every River client that beats.
const ClientIDPrefix = "tenantplane_"

// newClientID is a River client ID unique to this process: host, pid and
// random bits, so a restarted process (same host and perhaps the same pid
// in a container) never takes its predecessor's identity.
func newClientID() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "unknown_host"
	}
	host = strings.ReplaceAll(host, ".", "_")
	if len(host) > 60 { // River allows 100 characters in all
		host = host[:60]
	}
	random := make([]byte, 6)
	_, _ = rand.Read(random) // never fails (crypto/rand)
	return fmt.Sprintf("%s%s_%d_%s", ClientIDPrefix, host, os.Getpid(), hex.EncodeToString(random))
}

// heartbeatConfig configures a clientHeartbeat.
type heartbeatConfig struct {
	// Interval is how often the client beats, and looks for dead clients'
	// jobs. Default 2s.
	Interval time.Duration
	// DeadAfter is how long a client may go without a beat before its
	// running jobs are taken back. Default 10s; at least 3 Intervals.
	DeadAfter time.Duration
	// Logger receives the rescued jobs and failed beats. Default slog.Default().
	Logger *slog.Logger
}

// errHeartbeatStarted refuses a second Start.
var errHeartbeatStarted = errors.New("jobs: the client heartbeat was started already; a heartbeat runs once, make a new one")

// clientHeartbeat keeps one River client's row in job_clients fresh, and
// rescues the running jobs of clients that stopped beating. It needs only
// the catalog pool and the client's ID.
type clientHeartbeat struct {
	pool   *pgxpool.Pool
	id     string
	cfg    heartbeatConfig
	logger *slog.Logger

	mu      sync.Mutex
	started bool
	loop    startstop.Loop
	conn    *pgx.Conn // the loop's own; nil until connected
}

func newClientHeartbeat(pool *pgxpool.Pool, id string, cfg heartbeatConfig) (*clientHeartbeat, error) {
	if cfg.Interval == 0 {
		cfg.Interval = 2 * time.Second
	}
	if cfg.DeadAfter == 0 {
		cfg.DeadAfter = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Interval < 0 || cfg.DeadAfter < 3*cfg.Interval {
		return nil, fmt.Errorf("jobs: ClientDeadAfter (%s) must be at least 3 HeartbeatIntervals (%s): a client must miss several beats before it counts as dead",
			cfg.DeadAfter, cfg.Interval)
	}
	if !strings.HasPrefix(id, ClientIDPrefix) {
		return nil, fmt.Errorf("jobs: client ID %q does not start with %q", id, ClientIDPrefix)
	}
	return &clientHeartbeat{pool: pool, id: id, cfg: cfg, logger: cfg.Logger}, nil
}

// Start records the client as alive, takes back the jobs of clients already
// dead, and keeps beating until Stop. It fails when the first beat does:
// start it before the River client, so no job is ever running under a
// client that has no row. A second Start is refused.
func (h *clientHeartbeat) Start(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.started {
		return errHeartbeatStarted
	}
	h.started = true
	// The first beat may have to wait for a busy catalog: without it the
	// process does not start.
	if err := h.beat(ctx, 10*time.Second); err != nil {
		h.closeConn()
		return fmt.Errorf("jobs: recording the job client in the catalog: %w", err)
	}
	h.rescue(ctx)
	return h.loop.Start(ctx, h.run)
}

// Stop ends the beats and removes the client's row. Call it once the River
// client has stopped and handed its jobs back: a row removed earlier would
// let another process take jobs this one is still running.
func (h *clientHeartbeat) Stop(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.loop.Running() {
		return nil // never started, or stopped already
	}
	// A beat in flight ends within its own bound: wait for it whatever ctx.
	_ = h.loop.Stop(context.WithoutCancel(ctx))
	h.closeConn()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := h.pool.Exec(ctx, `DELETE FROM job_clients WHERE id = $1`, h.id); err != nil {
		// The row goes stale by itself; this client has no running job left.
		return fmt.Errorf("jobs: removing the job client from the catalog: %w", err)
	}
	return nil
}

func (h *clientHeartbeat) run(ctx context.Context) {
	ticker := time.NewTicker(h.cfg.Interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		// Beat first: a process that was itself stalled speaks up before it
		// judges the others.
		if err := h.beat(ctx, h.cfg.DeadAfter/3); err != nil {
			if ctx.Err() == nil {
				h.logger.WarnContext(ctx, "job client heartbeat failed; other processes take this one's jobs after "+h.cfg.DeadAfter.String()+" without one",
					"client", h.id, "error", err)
			}
			continue
		}
		h.rescue(ctx)
	}
}

// beat upserts the client's row on the heartbeat's own connection,
// connecting again when it was lost, within timeout. In the loop that is a
// third of DeadAfter: a beat stuck on a dead connection is given up, and
// tried again on a new one, well before the client could look dead.
func (h *clientHeartbeat) beat(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if h.conn == nil || h.conn.IsClosed() {
		h.closeConn()
		cfg := h.pool.Config().ConnConfig.Copy()
		cfg.RuntimeParams["application_name"] = "tenantplane-heartbeat"
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			return err
		}
		h.conn = conn
	}
	_, err := h.conn.Exec(ctx, `INSERT INTO job_clients (id) VALUES ($1)
		ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()`, h.id)
	if err != nil {
		h.closeConn() // a query cut short leaves the connection unusable
	}
	return err
}

func (h *clientHeartbeat) closeConn() {
	if h.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = h.conn.Close(ctx)
		h.conn = nil
	}
}

// rescue makes the running jobs of dead clients available again, in one
// statement, and forgets those clients. A failure is logged: the next beat
// tries again.
//
// The update mirrors River's JobRescuer (JobRescueMany): the attempt's error
// is appended and metadata's river:rescue_count counted; a job whose
// cancellation was asked for is cancelled, one out of attempts discarded;
// the others become available at once rather than retryable after a
// backoff, since the job did not fail, its process died, and a retryable
// job would wait for River's leader to schedule it. The WHERE on the state
// and the holder makes it safe to run in every process at once: a job
// rescued and fetched again has a live holder, and is left alone.
func (h *clientHeartbeat) rescue(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.DeadAfter)
	defer cancel()
	rows, err := h.pool.Query(ctx, `
		WITH stuck AS (
			SELECT j.id, j.attempted_by[cardinality(j.attempted_by)] AS holder, c.heartbeat_at
			FROM river_job j
			LEFT JOIN job_clients c ON c.id = j.attempted_by[cardinality(j.attempted_by)]
			WHERE j.state = 'running'
			  AND starts_with(j.attempted_by[cardinality(j.attempted_by)], $1)
			  AND (c.id IS NULL OR c.heartbeat_at < now() - make_interval(secs => $2))
		)
		UPDATE river_job j SET
			state = CASE WHEN j.metadata ? 'cancel_attempted_at' THEN 'cancelled'
			             WHEN j.attempt >= j.max_attempts THEN 'discarded'
			             ELSE 'available' END::river_job_state,
			finalized_at = CASE WHEN j.metadata ? 'cancel_attempted_at' OR j.attempt >= j.max_attempts THEN now() END,
			scheduled_at = CASE WHEN j.metadata ? 'cancel_attempted_at' OR j.attempt >= j.max_attempts THEN j.scheduled_at ELSE now() END,
			errors = array_append(j.errors, jsonb_build_object(
				'at', now(), 'attempt', greatest(j.attempt, 0), 'trace', '',
				'error', 'rescued: its job client ' || stuck.holder || ' stopped beating (last beat: ' || coalesce(stuck.heartbeat_at::text, 'none') || ')')),
			metadata = j.metadata || jsonb_build_object('river:rescue_count',
				coalesce(CASE WHEN jsonb_typeof(j.metadata -> 'river:rescue_count') = 'number'
				              THEN (j.metadata ->> 'river:rescue_count')::int END, 0) + 1)
		FROM stuck
		WHERE j.id = stuck.id AND j.state = 'running' AND j.attempted_by[cardinality(j.attempted_by)] = stuck.holder
		RETURNING j.id, j.kind, j.attempt, j.state::text, stuck.holder`,
		ClientIDPrefix, h.cfg.DeadAfter.Seconds())
	if err != nil {
		h.logger.WarnContext(ctx, "looking for the jobs of dead job clients failed", "error", err)
		return
	}
	type rescued struct {
		ID      int64
		Kind    string
		Attempt int
		State   string
		Holder  string
	}
	jobs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[rescued])
	if err != nil {
		h.logger.WarnContext(ctx, "rescuing the jobs of dead job clients failed", "error", err)
		return
	}
	for _, j := range jobs {
		h.logger.WarnContext(ctx, "job rescued: its process stopped beating", "job_id", j.ID, "kind", j.Kind,
			"attempt", j.Attempt, "now", j.State, "dead_client", j.Holder, "client", h.id)
	}
	// Forget the dead: a running job whose holder has no row is rescued all
	// the same, so this needs no order with the update above.
	if _, err := h.pool.Exec(ctx, `DELETE FROM job_clients WHERE heartbeat_at < now() - make_interval(secs => $1)`,
		h.cfg.DeadAfter.Seconds()); err != nil {
		h.logger.WarnContext(ctx, "removing dead job clients failed", "error", err)
	}
}

// running reports whether the heartbeat was started and not stopped.
func (h *clientHeartbeat) running() bool { return h.loop.Running() }
