package provisioner

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tenantplane/tenantplane/catalog"
)

// Names of what the provisioner keeps on each server besides tenant
// databases. The reconciler knows them by these prefixes.
const (
	templatePrefix = "tp_tpl_"   // tp_tpl_<schema hash>: the template at the newest version
	buildPrefix    = "tp_build_" // tp_build_<schema hash>: a template being built
	warmPrefix     = "tp_warm_"  // tp_warm_<schema hash>_<random>: a ready database waiting for a tenant
)

func (p *Provisioner) templateName() string { return templatePrefix + p.schema.Hash() }
func (p *Provisioner) warmPattern() string  { return warmPrefix + p.schema.Hash() + "_" }

// ensureTemplate makes sure the server has a template database at the newest
// tenant schema, building it when missing: migrations run once per server and
// schema, not once per tenant. Builds are serialized per server by an
// advisory lock, so replicas never build one twice.
func (p *Provisioner) ensureTemplate(ctx context.Context, srv catalog.Server) (string, error) {
	name := p.templateName()
	_, err, _ := p.templates.Do(fmt.Sprint(srv.ID, name), func() (any, error) {
		pool, err := p.admin(ctx, srv.ID, srv.Name)
		if err != nil {
			return nil, err
		}
		if ok, err := databaseExists(ctx, pool, name); err != nil || ok {
			return nil, err
		}
		conn, err := pool.Acquire(ctx)
		if err != nil {
			return nil, err
		}
		defer conn.Release()
		if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(hashtext('tenantplane.template'))`); err != nil {
			return nil, err
		}
		defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtext('tenantplane.template'))`) //nolint:errcheck
		if ok, err := databaseExists(ctx, pool, name); err != nil || ok {
			return nil, err
		}
		build := buildPrefix + p.schema.Hash()
		start := time.Now()
		for _, stmt := range []string{
			"DROP DATABASE IF EXISTS " + ident(build) + " WITH (FORCE)",
			"CREATE DATABASE " + ident(build),
			"REVOKE ALL ON DATABASE " + ident(build) + " FROM PUBLIC",
		} {
			if _, err := conn.Exec(ctx, stmt); err != nil {
				return nil, fmt.Errorf("building template on %s: %w", srv.Name, err)
			}
		}
		if _, _, err := p.migrateDB(ctx, srv.Name, build, p.schema.Latest(), SchemaLimits{}); err != nil {
			return nil, fmt.Errorf("building template on %s: %w", srv.Name, err)
		}
		if _, err := conn.Exec(ctx, "ALTER DATABASE "+ident(build)+" RENAME TO "+ident(name)); err != nil {
			return nil, fmt.Errorf("building template on %s: %w", srv.Name, err)
		}
		p.logger.InfoContext(ctx, "template built", "server", srv.Name, "database", name,
			"schema_version", p.schema.Latest(), "duration_ms", time.Since(start).Milliseconds())
		return nil, nil
	})
	return name, err
}

// claimWarm renames a ready database of the warm pool to dbName. It returns
// false when the pool is empty. Two claimers never get the same database:
// the rename succeeds for one of them only.
func (p *Provisioner) claimWarm(ctx context.Context, pool *pgxpool.Pool, dbName string) (bool, error) {
	if p.cfg.WarmPoolSize < 0 {
		return false, nil
	}
	rows, err := pool.Query(ctx, `SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY random()`, p.warmPattern())
	if err != nil {
		return false, err
	}
	candidates, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return false, err
	}
	for _, c := range candidates {
		_, err := pool.Exec(ctx, "ALTER DATABASE "+ident(c)+" RENAME TO "+ident(dbName))
		if err == nil {
			p.kickRefill()
			return true, nil
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (pgErr.Code == "3D000" || pgErr.Code == "55006") {
			continue // taken by another claimer, or still being created
		}
		return false, err
	}
	return false, nil
}

func (p *Provisioner) kickRefill() {
	select {
	case p.refill <- struct{}{}:
	default:
	}
}

// refillLoop keeps each active server's warm pool at WarmPoolSize ready
// databases of the current schema, and drops ready databases of older ones.
func (p *Provisioner) refillLoop(ctx context.Context) {
	defer close(p.fillDone)
	if p.cfg.WarmPoolSize < 0 {
		return
	}
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		servers, err := p.store.ListServers(ctx)
		if err == nil {
			for _, srv := range servers {
				if srv.State != catalog.ServerActive || ctx.Err() != nil {
					continue
				}
				if err := p.refillServer(ctx, srv); err != nil && ctx.Err() == nil {
					p.logger.WarnContext(ctx, "warm pool refill failed", "server", srv.Name, "error", err)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-p.refill:
		}
	}
}

func (p *Provisioner) refillServer(ctx context.Context, srv catalog.Server) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	tpl, err := p.ensureTemplate(ctx, srv)
	if err != nil {
		return err
	}
	pool, err := p.admin(ctx, srv.ID, srv.Name)
	if err != nil {
		return err
	}
	rows, err := pool.Query(ctx, `SELECT datname FROM pg_database WHERE starts_with(datname, $1)`, warmPrefix)
	if err != nil {
		return err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	ready := 0
	for _, n := range names {
		if strings.HasPrefix(n, p.warmPattern()) {
			ready++
			continue
		}
		// A ready database of another schema: not for this binary's tenants.
		if _, err := pool.Exec(ctx, "DROP DATABASE IF EXISTS "+ident(n)+" WITH (FORCE)"); err != nil {
			return err
		}
	}
	for ; ready < p.cfg.WarmPoolSize; ready++ {
		if _, err := pool.Exec(ctx, "CREATE DATABASE "+ident(p.warmPattern()+randomHex(4))+" TEMPLATE "+ident(tpl)); err != nil {
			return err
		}
	}
	return nil
}

func databaseExists(ctx context.Context, pool *pgxpool.Pool, name string) (bool, error) {
	var ok bool
	err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&ok)
	return ok, err
}

// ident quotes an identifier for SQL that cannot take parameters (DDL).
func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

// literal quotes a string constant for DDL that cannot take parameters.
func literal(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
