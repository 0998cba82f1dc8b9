package provisioner

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/migrations"
)

// Names of what the provisioner keeps on each server besides tenant
// databases. The reconciler knows them by these prefixes.
const (
	templatePrefix = "tp_tpl_"    // tp_tpl_<schema hash>: the template at the newest version
	buildPrefix    = "tp_build_"  // tp_build_<schema hash>: a template being built
	warmPrefix     = "tp_warm_"   // tp_warm_<schema hash>_l<layout>_<random>: a ready database and role waiting for a tenant
	warmBuild      = "tp_wbuild_" // tp_wbuild_<schema hash>_l<layout>_<random>: a warm database being built
)

func (p *Provisioner) templateName() string { return templatePrefix + p.schema.Hash() }

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
		cfg, err := p.dbConfig(ctx, srv.Name, build, "tenantplane-fanout")
		if err != nil {
			return nil, fmt.Errorf("building template on %s: %w", srv.Name, err)
		}
		if _, err := migrations.Migrate(ctx, cfg, p.schema, p.schema.Latest(), migrations.Limits{}); err != nil {
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
