package pgcluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/jackc/pgx/v5/pgconn"
)

// ClientCommand is a PostgreSQL client program (pg_dump, pg_restore) of the
// binaries FindBinDir finds, pointed at database on the server of conn
// (host, port, user). The password goes through the environment, never the
// command line, so it shows in no process listing; a connection attempt
// gives up after 10 s. args follow the connection flags.
func ClientCommand(ctx context.Context, tool string, conn *pgconn.Config, database string, args ...string) (*exec.Cmd, error) {
	bin, err := FindBinDir()
	if err != nil {
		return nil, err
	}
	flags := []string{"--host=" + conn.Host, fmt.Sprintf("--port=%d", conn.Port), "--username=" + conn.User, "--dbname=" + database}
	cmd := exec.CommandContext(ctx, filepath.Join(bin, tool), append(flags, args...)...)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+conn.Password, "PGCONNECT_TIMEOUT=10")
	return cmd, nil
}
