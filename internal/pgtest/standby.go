package pgtest

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tenantplane/tenantplane/internal/pgcluster"
)

// NewStandby starts a streaming standby of primary (a server from
// NewServer): PostgreSQL's own physical replication, pg_basebackup then
// streaming, on a port of its own. It is read-only until Promote. With the
// primary, it is the catalog of a failover test: a DATABASE_URL naming both
// hosts with target_session_attrs=read-write follows the promotion.
func NewStandby(t testing.TB, primary *Server) *Server {
	t.Helper()
	if primary.cluster == nil {
		t.Fatalf("pgtest: NewStandby needs a private primary (NewServer)")
	}
	startMu.RLock()
	defer startMu.RUnlock()
	if closed {
		t.Fatalf("pgtest: NewStandby: the tests are over")
	}
	binDir, err := findBinDir()
	if err != nil {
		t.Fatalf("pgtest: NewStandby: %v", err)
	}
	base, err := os.MkdirTemp(clusterRoot(), "cluster-"+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		t.Fatalf("pgtest: NewStandby: %v", err)
	}
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatalf("pgtest: NewStandby: %v", err)
	}
	c, err := pgcluster.New(pgcluster.Config{Dir: filepath.Join(base, "data"), Password: password, Settings: settings, BinDir: binDir})
	if err != nil {
		os.RemoveAll(base)
		t.Fatalf("pgtest: NewStandby: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*startTimeout)
	defer cancel()
	if err := c.BaseBackup(ctx, primary.DSN("postgres")); err != nil {
		os.RemoveAll(base)
		t.Fatalf("pgtest: NewStandby: %v", err)
	}
	if err := c.Start(ctx); err != nil {
		os.RemoveAll(base)
		t.Fatalf("pgtest: NewStandby: %v", err)
	}
	s := &Server{label: "NewStandby(" + t.Name() + ")", cluster: c, baseDir: base, adminDSN: c.DSN("postgres"), templates: map[string]*templateState{}}
	runningMu.Lock()
	running[s] = struct{}{}
	runningMu.Unlock()
	s.destroyAfter(t)
	return s
}

// Promote makes a standby the primary (pg_promote), waiting until it takes writes.
func (s *Server) Promote(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	err := s.withConn(ctx, func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, "SELECT pg_promote(true, 60)")
		return err
	})
	if err != nil {
		t.Fatalf("pgtest: promoting %s: %v", s.label, err)
	}
}
