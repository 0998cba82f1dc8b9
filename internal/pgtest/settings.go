package pgtest

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// NewServerWithSettings is NewServer with extra server settings, such as
// "wal_level": "logical" for tests of logical replication. The settings are
// written with ALTER SYSTEM (postgresql.auto.conf) and the cluster is
// restarted once, so that settings which need a restart take effect too.
func NewServerWithSettings(t testing.TB, settings map[string]string) *Server {
	t.Helper()
	s := NewServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	err := s.withConn(ctx, func(conn *pgx.Conn) error {
		for _, name := range slices.Sorted(maps.Keys(settings)) {
			// ALTER SYSTEM takes no parameters: the name is an identifier and
			// the value a quoted literal.
			value := "'" + strings.ReplaceAll(settings[name], "'", "''") + "'"
			if _, err := conn.Exec(ctx, "ALTER SYSTEM SET "+ident(name)+" = "+value); err != nil {
				return fmt.Errorf("ALTER SYSTEM SET %s: %w", name, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("pgtest: NewServerWithSettings: %v", err)
	}
	s.Stop(t)
	s.Start(t)
	return s
}
