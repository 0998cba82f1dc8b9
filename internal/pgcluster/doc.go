// Package pgcluster runs a private PostgreSQL cluster on this machine with the
// server binaries (initdb, pg_ctl, postgres): `tenantplane dev` keeps one under
// .data/, and the test harness (internal/pgtest) starts throwaway ones.
//
// A Cluster owns one data directory. Start initializes it when it is empty,
// then starts the server listening on 127.0.0.1 only, on the port it had last
// time if that is still free; Stop stops it. The superuser is "postgres" with
// Config.Password, required over TCP (scram-sha-256); DSN builds URLs for it.
//
//	c, err := pgcluster.New(pgcluster.Config{
//		Dir:      ".data/postgres",
//		Password: password,
//		Logger:   logger,
//	})
//	if err != nil {
//		return err // errors.Is(err, pgcluster.ErrNoBinaries): tell the user to install PostgreSQL
//	}
//	if err := c.Start(ctx); err != nil {
//		return err // quotes the end of .data/postgres/server.log
//	}
//	defer c.Stop(context.WithoutCancel(ctx))
//	pool, err := pgxpool.New(ctx, c.DSN("postgres"))
//
// Next to PostgreSQL's own files the data directory holds server.log (the
// server's log, appended to), tenantplane.conf (the port, listen address and
// Config.Settings, rewritten by every Start and included from
// postgresql.conf) and tenantplane-cluster.json (the port to reuse and a
// fingerprint of the password, so that a changed Config.Password is applied).
//
// initdb and postgres refuse to run as root. When the process is root they run
// as the "postgres" system user, which then owns the data directory and must be
// able to traverse every directory above it: not inside a t.TempDir() (mode
// 0700, root's), but inside a directory from os.MkdirTemp chmod'ed to 0755.
// Start checks this and says which directory is in the way.
//
// Crashes: if the server was killed, its stale postmaster.pid is handled; if
// this process died and left the server running, the next Start adopts it
// when its settings match (else restarts it).
package pgcluster
