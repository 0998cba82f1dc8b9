package router

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// servers tells a database server that hangs from one that is slow, so that
// the tenants of a hung server answer 503 within two seconds while a slow
// query elsewhere runs to its statement timeout.
//
// A request's database work is watched: when it has waited StallAfter (a
// connection, or an answer), the server is probed on a fresh connection, as
// the same tenant, with a trivial query bounded by ProbeTimeout. A server
// that answers it (with a result or with an error of its own) is alive, and
// nothing happens: the slow request goes on. One that does not is marked
// down: the requests waiting on it are cancelled (503), and its tenants'
// next requests answer 503 at once, without a connection attempt, while a
// probe, at most every ProbeInterval and only when requests come, checks
// whether it answers again. The first that does puts it back in service.
//
// A probe takes a place in the server's connection budget like any
// connection, without waiting for one: a server at its budget is not probed
// (its requests get the budget's 503).
type servers struct {
	stallAfter, probeTimeout, probeInterval time.Duration
	logger                                  *slog.Logger

	mu    sync.Mutex
	state map[int64]*serverState
	wg    sync.WaitGroup // probes running
}

type serverState struct {
	name      string
	down      bool
	probing   bool
	lastProbe time.Time
	probeWith *pgx.ConnConfig                    // the last config seen for the server
	waiting   map[*watch]struct{}                // requests using the server
	cancels   map[*watch]context.CancelCauseFunc // their cancellation
}

// watch is one request's use of a server.
type watch struct {
	serverID int64
	timer    *time.Timer
}

// errServerDown is the cause of a request cancelled because its server stopped answering.
var errServerDown = errors.New("the database server did not answer a probe")

func newServers(stallAfter, probeTimeout, probeInterval time.Duration, logger *slog.Logger) *servers {
	return &servers{stallAfter: stallAfter, probeTimeout: probeTimeout, probeInterval: probeInterval,
		logger: logger, state: map[int64]*serverState{}}
}

func (s *servers) get(id int64, name string) *serverState {
	st := s.state[id]
	if st == nil {
		st = &serverState{name: name, waiting: map[*watch]struct{}{}, cancels: map[*watch]context.CancelCauseFunc{}}
		s.state[id] = st
	}
	return st
}

// down reports whether a server is marked down; if so, and no probe ran
// for ProbeInterval, it starts one.
func (s *servers) down(id int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.state[id]
	if st == nil || !st.down {
		return false
	}
	if !st.probing && time.Since(st.lastProbe) >= s.probeInterval && st.probeWith != nil {
		s.startProbe(id, st, st.probeWith)
	}
	return true
}

// watch starts watching a request's database work on a server; cancel
// ends the request's context. The returned function ends the watch.
func (s *servers) watch(id int64, name string, cfg *pgx.ConnConfig, cancel context.CancelCauseFunc) func() {
	w := &watch{serverID: id}
	s.mu.Lock()
	st := s.get(id, name)
	st.probeWith = cfg
	st.waiting[w] = struct{}{}
	st.cancels[w] = cancel
	s.mu.Unlock()
	w.timer = time.AfterFunc(s.stallAfter, func() { s.suspect(id) })
	return func() {
		w.timer.Stop()
		s.mu.Lock()
		delete(st.waiting, w)
		delete(st.cancels, w)
		s.mu.Unlock()
	}
}

// suspect probes a server a request has waited on for StallAfter.
func (s *servers) suspect(id int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.state[id]
	if st == nil || st.probing || st.down || st.probeWith == nil {
		return
	}
	s.startProbe(id, st, st.probeWith)
}

// startProbe runs one probe of a server in the background; s.mu is held.
func (s *servers) startProbe(id int64, st *serverState, cfg *pgx.ConnConfig) {
	st.probing = true
	st.lastProbe = time.Now()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		alive, err := s.probe(cfg)
		s.mu.Lock()
		defer s.mu.Unlock()
		st.probing = false
		switch {
		case alive && st.down:
			st.down = false
			s.logger.Info("tenant database server answers again; back in service", "server", st.name)
		case !alive && err != nil && !st.down:
			st.down = true
			s.logger.Warn("tenant database server does not answer; its tenants answer 503 until it does",
				"server", st.name, "error", err, "requests_cancelled", len(st.cancels))
			for w, cancel := range st.cancels {
				cancel(errServerDown)
				delete(st.cancels, w)
			}
		}
	}()
}

// probe connects to the server and runs a trivial query within
// ProbeTimeout. A server that answers, even with an error of its own, is
// alive; an inconclusive probe (no budget) reports false with no error.
func (s *servers) probe(cfg *pgx.ConnConfig) (alive bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.probeTimeout)
	defer cancel()
	c := cfg.Copy()
	c.ConnectTimeout = s.probeTimeout
	conn, err := pgx.ConnectConfig(ctx, c)
	if err == nil {
		defer conn.Close(context.Background())
		_, err = conn.Exec(ctx, "SELECT 1")
	}
	var pgErr *pgconn.PgError
	switch {
	case err == nil || errors.As(err, &pgErr):
		return true, nil
	case errors.Is(err, errBudget):
		return false, nil
	}
	return false, err
}

// wait waits for the probes running to end (each is bounded by ProbeTimeout).
func (s *servers) wait() { s.wg.Wait() }
