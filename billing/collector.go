package billing

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/migrations"
)

// collectorServers is how many servers the collector samples at once.
const collectorServers = 4

// CollectStorage samples the size of every live tenant's database
// (pg_database_size, through each server's admin DSN), all servers at once,
// and records it as storage_bytes in the current hour; a period bills its
// largest sample. A server that cannot be reached is reported and skipped:
// its tenants are sampled next round. It returns how many databases were
// sampled.
func (s *Service) CollectStorage(ctx context.Context) (int, error) {
	dbs, err := s.catalog.TenantDatabases(ctx)
	if err != nil {
		return 0, err
	}
	byServer := map[string][]catalog.TenantDatabase{}
	for _, d := range dbs {
		byServer[d.Server] = append(byServer[d.Server], d)
	}
	var (
		mu      sync.Mutex
		wg      sync.WaitGroup
		errs    []error
		sampled int
		sem     = make(chan struct{}, collectorServers)
	)
	at := s.now()
	for server, dbs := range byServer {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			n, err := s.collectServer(ctx, server, dbs, at)
			mu.Lock()
			defer mu.Unlock()
			sampled += n
			if err != nil {
				errs = append(errs, fmt.Errorf("server %q: %w", server, err))
			}
		})
	}
	pools, err := s.catalog.ListPoolDatabases(ctx)
	if err != nil {
		mu.Lock() // the servers' goroutines are running
		errs = append(errs, err)
		mu.Unlock()
	}
	for _, p := range pools {
		if p.State != catalog.PoolActive || p.Tenants == 0 {
			continue
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			n, err := s.collectPool(ctx, p, at)
			mu.Lock()
			defer mu.Unlock()
			sampled += n
			if err != nil {
				errs = append(errs, fmt.Errorf("pool database %s on server %q: %w", p.Name, p.Server, err))
			}
		})
	}
	wg.Wait()
	return sampled, errors.Join(errs...)
}

// collectPool samples each pooled tenant of a pool database: the size of
// its rows (the sum of pg_column_size of each of its rows, in every table
// with tenant_id), which leaves out the pool's indexes and free space.
func (s *Service) collectPool(ctx context.Context, p catalog.PoolDatabase, at time.Time) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ConnectTimeout+time.Minute)
	defer cancel()
	ids, err := s.catalog.PoolTenantIDs(ctx, p.ID)
	if err != nil || len(ids) == 0 {
		return 0, err
	}
	conn, err := s.connect(ctx, p.Server, p.Name)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	tables, err := migrations.TenantTables(ctx, conn)
	if err != nil {
		return 0, err
	}
	size := make(map[string]int64, len(ids))
	for _, id := range ids {
		size[id] = 0 // a tenant without rows is sampled as 0
	}
	for _, table := range tables {
		// The admin role owns the tables: its policy shows every tenant's rows.
		rows, err := conn.Query(ctx, `SELECT tenant_id::text, sum(pg_column_size(r.*))::bigint FROM `+pgx.Identifier{"public", table}.Sanitize()+` r
			WHERE tenant_id = ANY($1::uuid[]) GROUP BY tenant_id`, ids)
		if err != nil {
			return 0, fmt.Errorf("table %s: %w", table, err)
		}
		var id string
		var n int64
		if _, err := pgx.ForEachRow(rows, []any{&id, &n}, func() error { size[id] += n; return nil }); err != nil {
			return 0, fmt.Errorf("table %s: %w", table, err)
		}
	}
	usage := make([]catalog.UsageRow, 0, len(size))
	for id, n := range size {
		usage = append(usage, catalog.UsageRow{TenantID: id, Meter: catalog.MeterStorageBytes, Bucket: at, Quantity: n})
	}
	batch := "storage:" + p.Name + "@" + p.Server + ":" + strconv.FormatInt(at.UnixNano(), 10)
	if err := s.catalog.RecordUsageBatch(ctx, batch, usage); err != nil {
		return 0, err
	}
	return len(usage), nil
}

func (s *Service) collectServer(ctx context.Context, server string, dbs []catalog.TenantDatabase, at time.Time) (int, error) {
	logger := s.logger.With("op", "storage", "server", server)
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ConnectTimeout+time.Minute)
	defer cancel()
	conn, err := s.connect(ctx, server, "")
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))

	names := make([]string, len(dbs))
	tenantOf := make(map[string]string, len(dbs))
	for i, d := range dbs {
		names[i] = d.Database
		tenantOf[d.Database] = d.TenantID
	}
	sizes, err := databaseSizes(ctx, conn, names)
	if err != nil {
		return 0, err
	}
	rows := make([]catalog.UsageRow, 0, len(sizes))
	for name, size := range sizes {
		rows = append(rows, catalog.UsageRow{TenantID: tenantOf[name], Meter: catalog.MeterStorageBytes, Bucket: at, Quantity: size})
	}
	// Samples are maxima: recording one twice changes nothing, so each
	// round is a batch of its own.
	batch := "storage:" + server + ":" + strconv.FormatInt(at.UnixNano(), 10)
	if err := s.catalog.RecordUsageBatch(ctx, batch, rows); err != nil {
		return 0, err
	}
	logger.DebugContext(ctx, "storage sampled", "databases", len(rows))
	return len(rows), nil
}

// connect opens a connection to a server's database ("" keeps the DSN's)
// as its admin role, for sampling.
func (s *Service) connect(ctx context.Context, server, database string) (*pgx.Conn, error) {
	dsn, err := s.catalog.ServerDSN(ctx, server)
	if err != nil {
		return nil, err
	}
	pcfg, err := catalog.ServerConfig(dsn)
	if err != nil {
		return nil, err // CollectStorage names the server
	}
	cfg := pcfg.ConnConfig
	if database != "" {
		cfg.Database = database
	}
	cfg.ConnectTimeout = s.cfg.ConnectTimeout
	cfg.RuntimeParams["application_name"] = "tenantplane-billing"
	cfg.RuntimeParams["statement_timeout"] = "30000"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, catalog.WrapError(catalog.CodeUnavailable, err, "server %q is unreachable", server)
	}
	return conn, nil
}

// databaseSizes returns the size of each named database that exists. A
// database dropped during the query fails it; then each is asked alone.
func databaseSizes(ctx context.Context, conn *pgx.Conn, names []string) (map[string]int64, error) {
	const q = `SELECT datname, pg_database_size(oid) FROM pg_database WHERE datname = ANY($1)`
	sizes := map[string]int64{}
	rows, err := conn.Query(ctx, q, names)
	if err == nil {
		var name string
		var size int64
		_, err = pgx.ForEachRow(rows, []any{&name, &size}, func() error {
			sizes[name] = size
			return nil
		})
	}
	if err == nil || ctx.Err() != nil {
		return sizes, err
	}
	sizes = map[string]int64{}
	for _, n := range names {
		var name string
		var size int64
		if err := conn.QueryRow(ctx, q, []string{n}).Scan(&name, &size); err == nil {
			sizes[name] = size
		} else if ctx.Err() != nil {
			return sizes, err
		}
	}
	return sizes, nil
}
