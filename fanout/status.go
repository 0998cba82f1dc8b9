package fanout

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/migrations"
)

// StatusOptions bound reading the schema of every tenant database.
type StatusOptions struct {
	// Concurrency is how many databases are read at once. Default 16.
	Concurrency int
	// PerServer is how many databases of one server are read at once. Default 4.
	PerServer int
	// Timeout bounds reading one database, connection included. Default 5s.
	Timeout time.Duration
}

// SchemaStatus is the tenant schema of the fleet as the tenant databases
// themselves say it (drift): not the catalog's copy, which it is compared with.
type SchemaStatus struct {
	NewestVersion uint      `json:"newest_version"`
	SchemaHash    string    `json:"schema_hash"`
	CheckedAt     time.Time `json:"checked_at"`
	Tenants       int       `json:"tenants"`
	// Histogram counts the databases read by version, lowest first.
	Histogram []VersionCount `json:"histogram"`
	// Behind are the tenants below NewestVersion, and the dirty ones (their
	// last step is not applied).
	Behind []TenantSchema `json:"behind"`
	// Dirty are the tenants whose last migration failed mid-way.
	Dirty []TenantSchema `json:"dirty"`
	// CatalogDisagrees are the tenants whose catalog record says another
	// version or dirty flag than their database.
	CatalogDisagrees []TenantSchema `json:"catalog_disagrees"`
	// Unreachable are the tenants whose database could not be read.
	Unreachable []TenantSchema `json:"unreachable"`
}

// VersionCount is one bar of the histogram.
type VersionCount struct {
	Version int64 `json:"version"`
	Tenants int   `json:"tenants"`
}

// TenantSchema is one tenant database's schema, and the catalog's copy.
type TenantSchema struct {
	Slug           string `json:"slug"`
	State          string `json:"state"`
	Server         string `json:"server"`
	Database       string `json:"database"`
	Version        *int64 `json:"version"` // nil when it could not be read
	Dirty          bool   `json:"dirty"`
	CatalogVersion int64  `json:"catalog_version"`
	CatalogDirty   bool   `json:"catalog_dirty"`
	Error          string `json:"error,omitempty"`
}

// SchemaStatus reads the version and dirty flag of every active and
// suspended tenant's database and every active pool database, a bounded number at a time and each within a
// timeout, so one dead server costs a timeout, not the answer.
func (s *Service) SchemaStatus(ctx context.Context, opts StatusOptions) (SchemaStatus, error) {
	if opts.Concurrency <= 0 {
		opts.Concurrency = 16
	}
	if opts.PerServer <= 0 {
		opts.PerServer = 4
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	var tenants []catalog.Tenant
	for _, state := range []catalog.TenantState{catalog.TenantActive, catalog.TenantSuspended} {
		cursor := ""
		for {
			page, err := s.db.ListTenants(ctx, catalog.TenantFilter{State: state, Limit: 1000, Cursor: cursor})
			if err != nil {
				return SchemaStatus{}, err
			}
			for _, t := range page.Tenants {
				if t.Server != "" && t.Database != "" {
					tenants = append(tenants, t)
				}
			}
			if cursor = page.NextCursor; cursor == "" {
				break
			}
		}
	}
	// Pool databases are read as databases of their own, named by their
	// name (tp_pool_<id>) in place of a slug: their pooled tenants have none.
	pools, err := s.db.ListPoolDatabases(ctx)
	if err != nil {
		return SchemaStatus{}, err
	}
	for _, p := range pools {
		if p.State == catalog.PoolActive {
			tenants = append(tenants, catalog.Tenant{Slug: p.Name, State: catalog.TenantActive, Server: p.Server, Database: p.Name,
				SchemaVersion: p.SchemaVersion, SchemaDirty: p.SchemaDirty})
		}
	}

	// One parsed admin config per server: the catalog is asked once, not per tenant.
	configs := map[string]*pgx.ConnConfig{}
	configErrs := map[string]error{}
	for _, t := range tenants {
		if _, ok := configs[t.Server]; ok || configErrs[t.Server] != nil {
			continue
		}
		dsn, err := s.db.ServerDSN(ctx, t.Server)
		if err != nil {
			if catalog.CodeOf(err) == catalog.CodeUnavailable {
				return SchemaStatus{}, err
			}
			configErrs[t.Server] = err
			continue
		}
		pcfg, err := catalog.ServerConfig(dsn)
		if err != nil {
			configErrs[t.Server] = fmt.Errorf("server %q has a malformed DSN", t.Server)
			continue
		}
		cfg := pcfg.ConnConfig
		cfg.ConnectTimeout = min(s.cfg.ConnectTimeout, opts.Timeout)
		cfg.RuntimeParams["application_name"] = "tenantplane-status"
		cfg.RuntimeParams["statement_timeout"] = fmt.Sprint(opts.Timeout.Milliseconds())
		configs[t.Server] = cfg
	}

	results := make([]TenantSchema, len(tenants))
	total := make(chan struct{}, opts.Concurrency)
	perServer := map[string]chan struct{}{}
	for srv := range configs {
		perServer[srv] = make(chan struct{}, opts.PerServer)
	}
	var wg sync.WaitGroup
	for i, t := range tenants {
		results[i] = TenantSchema{Slug: t.Slug, State: string(t.State), Server: t.Server, Database: t.Database,
			CatalogVersion: t.SchemaVersion, CatalogDirty: t.SchemaDirty}
		cfg := configs[t.Server]
		if cfg == nil {
			results[i].Error = catalog.DescribeServerError(configErrs[t.Server])
			continue
		}
		sem := perServer[t.Server]
		wg.Go(func() {
			sem <- struct{}{}
			total <- struct{}{}
			defer func() { <-total; <-sem }()
			rctx, cancel := context.WithTimeout(ctx, opts.Timeout)
			defer cancel()
			v, dirty, err := readTenantSchema(rctx, cfg, t.Database)
			if err != nil {
				results[i].Error = "reading the schema version: " + catalog.DescribeServerError(err)
				if ctx.Err() == nil && rctx.Err() != nil {
					results[i].Error = "reading the schema version: timed out"
				}
				return
			}
			results[i].Version, results[i].Dirty = &v, dirty
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return SchemaStatus{}, catalog.WrapError(catalog.CodeUnavailable, err, "reading the tenant databases did not finish in time")
	}

	st := SchemaStatus{
		NewestVersion: s.schema.Latest(), SchemaHash: s.schema.Hash(), CheckedAt: time.Now().UTC(), Tenants: len(results),
		Histogram: []VersionCount{}, Behind: []TenantSchema{}, Dirty: []TenantSchema{}, CatalogDisagrees: []TenantSchema{},
		Unreachable: []TenantSchema{},
	}
	byVersion := map[int64]int{}
	for _, r := range results {
		if r.Version == nil {
			st.Unreachable = append(st.Unreachable, r)
			continue
		}
		byVersion[*r.Version]++
		if *r.Version < int64(st.NewestVersion) || r.Dirty {
			st.Behind = append(st.Behind, r)
		}
		if r.Dirty {
			st.Dirty = append(st.Dirty, r)
		}
		if *r.Version != r.CatalogVersion || r.Dirty != r.CatalogDirty {
			st.CatalogDisagrees = append(st.CatalogDisagrees, r)
		}
	}
	for v, n := range byVersion {
		st.Histogram = append(st.Histogram, VersionCount{Version: v, Tenants: n})
	}
	slices.SortFunc(st.Histogram, func(a, b VersionCount) int { return cmp.Compare(a.Version, b.Version) })
	for _, list := range [][]TenantSchema{st.Behind, st.Dirty, st.CatalogDisagrees, st.Unreachable} {
		slices.SortFunc(list, func(a, b TenantSchema) int { return cmp.Compare(a.Slug, b.Slug) })
	}
	return st, nil
}

// readTenantSchema reads golang-migrate's version and dirty flag from one
// tenant database (0, false when it has none).
func readTenantSchema(ctx context.Context, admin *pgx.ConnConfig, database string) (int64, bool, error) {
	cfg := admin.Copy()
	cfg.Database = database
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return 0, false, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	v, dirty, err := migrations.ReadVersion(ctx, conn)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // no schema_migrations: never migrated
		return 0, false, nil
	}
	return v, dirty, err
}

// ForceSchema sets a dirty tenant database's schema version, clearing the
// dirty flag, after an operator repaired it by hand so that the database
// really is at version. It is refused (CodeConflict) for a clean database,
// and while a run is migrating the tenant; version must be one of the
// tenant migrations (0: none). The catalog's copy follows, with an audit event.
func (s *Service) ForceSchema(ctx context.Context, slug string, version int64, actor, reason string) (catalog.Tenant, error) {
	t, err := s.db.GetTenant(ctx, slug)
	if err != nil {
		return catalog.Tenant{}, err
	}
	if t.Server == "" || t.Database == "" || t.State == catalog.TenantDeleted {
		return catalog.Tenant{}, catalog.Errorf(catalog.CodeConflict, "tenant %q has no database", slug)
	}
	if version < 0 || version > int64(^uint32(0)) || !s.schema.Has(uint(version)) {
		return catalog.Tenant{}, catalog.Errorf(catalog.CodeInvalid, "version %d is not a version of the tenant migrations (%s; 0 is no schema)",
			version, versionList(s.schema.Versions()))
	}
	if run, err := s.store.TenantRunning(ctx, t.ID); err != nil {
		return catalog.Tenant{}, err
	} else if run != 0 {
		return catalog.Tenant{}, catalog.Errorf(catalog.CodeConflict, "run %d is migrating tenant %q now: pause or cancel it first", run, slug)
	}
	cfg, err := s.connConfig(ctx, t.Server, t.Database, "tenantplane-fanout")
	if err != nil {
		return catalog.Tenant{}, err
	}
	from, fromDirty, err := migrations.Force(ctx, cfg, s.schema, uint(version))
	var clean migrations.ErrClean
	if errors.As(err, &clean) {
		return catalog.Tenant{}, catalog.Errorf(catalog.CodeConflict, "tenant %q's schema is clean at version %d: force only clears the dirty flag of a failed migration", slug, clean.Version)
	}
	if err != nil {
		return catalog.Tenant{}, catalog.WrapError(catalog.CodeUnavailable, err, "tenant %q on %s: %v", slug, t.Server, err)
	}
	fromVersion := int64(from)
	out, err := s.db.ForceTenantSchema(ctx, t.ID, fromVersion, fromDirty, version, actor, reason)
	if err != nil {
		return catalog.Tenant{}, err
	}
	s.logger.WarnContext(ctx, "tenant schema forced", "tenant", slug, "tenant_id", t.ID, "server", t.Server,
		"from_version", fromVersion, "schema_version", version, "actor", actor, "reason", reason)
	return out, nil
}
