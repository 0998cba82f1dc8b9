package datarights

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgcluster"
)

// Restore modes.
const (
	RestoreNewTenant = "new_tenant" // into a new tenant, made for it
	RestoreInPlace   = "in_place"   // into the backup's own tenant, suspended meanwhile
)

// Restore is a backup put back into a tenant database.
type Restore struct {
	ID         int64            `json:"id"`
	BackupID   int64            `json:"backup_id"`
	Source     string           `json:"source"` // the backup's tenant
	Tenant     string           `json:"tenant"` // restored into
	Mode       string           `json:"mode"`
	State      string           `json:"state"`
	Tables     map[string]int64 `json:"tables"` // rows per table, read back once restored
	Attempts   int              `json:"attempts"`
	LastError  string           `json:"last_error"`
	Actor      string           `json:"actor"`
	CreatedAt  time.Time        `json:"created_at"`
	FinishedAt *time.Time       `json:"finished_at"`
}

const restoreSelect = `SELECT r.id, r.backup_id, st.slug, t.slug, r.mode, r.state, r.tables, r.attempts, r.last_error,
	r.actor, r.created_at, r.finished_at
	FROM restores r JOIN tenants st ON st.id = r.source_tenant_id JOIN tenants t ON t.id = r.tenant_id `

func scanRestore(row pgx.Row) (r Restore, err error) {
	err = row.Scan(&r.ID, &r.BackupID, &r.Source, &r.Tenant, &r.Mode, &r.State, &r.Tables, &r.Attempts, &r.LastError,
		&r.Actor, &r.CreatedAt, &r.FinishedAt)
	return r, err
}

type restoreArgs struct {
	RestoreID int64 `json:"restore_id"`
}

func (restoreArgs) Kind() string { return "tenantplane.restore" }

func (a restoreArgs) id() int64 { return a.RestoreID }

// RestoreSpec is what a restore takes.
type RestoreSpec struct {
	// As is the slug of a new tenant to restore into; "" restores in place.
	As string `json:"as"`
}

// StartRestore records a restore of backup id of tenant slug and queues
// its job: 202 with the restore, which GetRestore follows. With spec.As, a
// new tenant of that slug (the source's plan, on its server, state
// provisioning until the restore is done) receives the backup; without it,
// the tenant itself does, suspended for the restore (and resumed after, if
// it was active), and only from a backup of its current schema version.
func (s *Service) StartRestore(ctx context.Context, slug string, backupID int64, spec RestoreSpec, who string) (Restore, error) {
	b, err := s.GetBackup(ctx, slug, backupID)
	if err != nil {
		return Restore{}, err
	}
	if b.State != StateDone {
		return Restore{}, catalog.Errorf(catalog.CodeConflict, "backup %d is %s: only a finished backup can be restored", b.ID, b.State)
	}
	src, err := s.store.GetTenant(ctx, slug)
	if err != nil {
		return Restore{}, err
	}
	var id int64
	record := func(ctx context.Context, tx pgx.Tx, into catalog.Tenant, mode string) error {
		err := tx.QueryRow(ctx, `INSERT INTO restores (backup_id, source_tenant_id, tenant_id, mode, actor) VALUES ($1, $2, $3, $4, $5) RETURNING id`,
			b.ID, src.ID, into.ID, mode, who).Scan(&id)
		if err != nil {
			return catalog.Classify(err, "restore")
		}
		if err := catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: who, Action: "tenant.restore_started", TenantID: into.ID, Subject: into.Slug,
			Details: map[string]any{"backup": b.ID, "from_tenant": src.Slug, "mode": mode}}); err != nil {
			return err
		}
		return s.insertJob(ctx, tx, restoreArgs{RestoreID: id})
	}
	if spec.As != "" {
		if err := catalog.ValidateSlug(spec.As); err != nil {
			return Restore{}, err
		}
		name := fmt.Sprintf("%s (restored from backup %d)", src.Name, b.ID)
		if len(name) > 200 {
			name = fmt.Sprintf("%s restored from backup %d", src.Slug, b.ID)
		}
		_, created, err := s.store.CreateTenant(ctx, catalog.NewTenant{Slug: spec.As, Name: name, Plan: src.Plan, Server: src.Server, Actor: who},
			func(ctx context.Context, tx pgx.Tx, t catalog.Tenant) error {
				return record(ctx, tx, t, RestoreNewTenant)
			})
		if err != nil {
			return Restore{}, err
		}
		if !created {
			return Restore{}, catalog.Errorf(catalog.CodeConflict, "tenant %q exists: restore into a slug no tenant has", spec.As)
		}
	} else {
		if src.State != catalog.TenantActive && src.State != catalog.TenantSuspended {
			return Restore{}, catalog.Errorf(catalog.CodeConflict, "tenant %s is %s: a restore in place needs it active or suspended", src.Slug, src.State)
		}
		if src.MoveID != nil {
			return Restore{}, catalog.MovingError(src.Slug, *src.MoveID)
		}
		if b.SchemaVersion == nil || *b.SchemaVersion != src.SchemaVersion {
			return Restore{}, catalog.Errorf(catalog.CodeConflict,
				"backup %d is of schema version %d and tenant %s is at %d: a restore in place needs the same version; restore it as a new tenant (--as)",
				b.ID, deref(b.SchemaVersion), src.Slug, src.SchemaVersion)
		}
		err := s.store.InTx(ctx, func(tx pgx.Tx) error {
			var open int
			if err := tx.QueryRow(ctx, `SELECT count(*) FROM restores WHERE tenant_id = $1 AND state IN ('pending', 'running')`, src.ID).Scan(&open); err != nil {
				return catalog.Classify(err, "restore")
			}
			if open > 0 {
				return catalog.Errorf(catalog.CodeConflict, "tenant %s is being restored already", src.Slug)
			}
			return record(ctx, tx, src, RestoreInPlace)
		})
		if err != nil {
			return Restore{}, err
		}
	}
	return s.GetRestore(ctx, id)
}

func deref(p *int64) int64 {
	if p == nil {
		return 0
	}
	return *p
}

// GetRestore returns restore id.
func (s *Service) GetRestore(ctx context.Context, id int64) (Restore, error) {
	r, err := scanRestore(s.store.Pool().QueryRow(ctx, restoreSelect+`WHERE r.id = $1`, id))
	if err != nil {
		return Restore{}, catalog.Classify(err, fmt.Sprintf("restore %d", id))
	}
	return r, nil
}

type restoreRow struct {
	Restore
	tenantID, sourceID string
	resumeAfter        bool
	file               string
	version            int64
}

func (s *Service) claimRestore(ctx context.Context, id int64) (r restoreRow, gone bool, err error) {
	err = s.store.InTx(ctx, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `UPDATE restores r SET state = 'running', attempts = r.attempts + 1
			FROM backups b WHERE r.id = $1 AND b.id = r.backup_id AND r.state IN ('pending', 'running')
			RETURNING r.tenant_id, r.source_tenant_id, r.resume_after, b.file, coalesce(b.schema_version, 0), b.state`, id).
			Scan(&r.tenantID, &r.sourceID, &r.resumeAfter, &r.file, &r.version, new(string))
		if errors.Is(err, pgx.ErrNoRows) {
			gone = true
			return nil
		}
		if err != nil {
			return err
		}
		r.Restore, err = scanRestore(tx.QueryRow(ctx, restoreSelect+`WHERE r.id = $1`, id))
		return err
	})
	return r, gone, catalog.Classify(err, "restore")
}

// runRestore carries out restore id. Each step can run again: the database
// is made if missing, pg_restore replaces its objects in one transaction
// (all or nothing), and the grants and the tenant's state are set last.
func (s *Service) runRestore(ctx context.Context, id int64, last bool) error {
	r, gone, err := s.claimRestore(ctx, id)
	if err != nil || gone {
		return err
	}
	log := s.logger.With("restore", r.ID, "tenant", r.Tenant, "backup", r.BackupID)
	tables, err := s.restore(ctx, r)
	if err != nil {
		if err := s.attemptFailed(ctx, log, "restores", id, last, err, nil); err != nil || !last {
			return err
		}
		if r.Mode == RestoreNewTenant {
			_, _ = s.store.TransitionTenant(context.WithoutCancel(ctx), catalog.Transition{TenantID: r.tenantID,
				From: []catalog.TenantState{catalog.TenantProvisioning}, To: catalog.TenantFailed, Actor: actor,
				Action: "tenant.restore_failed", LastError: "restore of backup failed: " + err.Error()})
		}
		return nil
	}
	raw, _ := json.Marshal(tables)
	_, err = s.store.Pool().Exec(ctx, `UPDATE restores SET state = 'done', tables = $2, last_error = '', finished_at = now() WHERE id = $1`, id, raw)
	if err != nil {
		return catalog.Classify(err, "restore")
	}
	s.metrics.jobs.WithLabelValues("restore", StateDone).Inc()
	log.InfoContext(ctx, "restore done", "tables", len(tables))
	return nil
}

func (s *Service) restore(ctx context.Context, r restoreRow) (map[string]int64, error) {
	t, err := s.store.GetTenantByID(ctx, r.tenantID)
	if err != nil {
		return nil, err
	}
	if t.Server == "" {
		return nil, fmt.Errorf("tenant %s has no server", t.Slug)
	}
	srv, err := s.store.GetServer(ctx, t.Server)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(r.file); err != nil {
		return nil, fmt.Errorf("backup file: %w", err)
	}
	inPlace := r.Mode == RestoreInPlace
	if inPlace {
		if t.State == catalog.TenantActive {
			// Recorded before the suspension: a retry after a crash between
			// the two still resumes the tenant at the end.
			if _, err := s.store.Pool().Exec(ctx, `UPDATE restores SET resume_after = true WHERE id = $1`, r.ID); err != nil {
				return nil, catalog.Classify(err, "restore")
			}
			r.resumeAfter = true
			if _, err := s.cfg.Tenants.Suspend(ctx, t.Slug, actor, fmt.Sprintf("restoring backup %d", r.BackupID)); err != nil {
				return nil, err
			}
		}
	} else if err := s.cfg.Tenants.PrepareTarget(ctx, t, srv, r.version); err != nil {
		// A new tenant's database is made at the backup's schema version, so
		// that the restore below replaces exactly the objects it holds.
		return nil, err
	}
	cfg, err := s.tenantConfig(ctx, t)
	if err != nil {
		return nil, err
	}
	// One transaction, all or nothing; --clean replaces the objects of the
	// dump, so a retry after a crash restores again over whatever committed.
	if err := pgRestore(ctx, cfg, r.file, "--no-owner", "--no-acl", "--exit-on-error", "--single-transaction", "--clean", "--if-exists"); err != nil {
		return nil, err
	}
	// Restored as a new tenant, the rows become that tenant's.
	if err := adoptRows(ctx, cfg, t.ID); err != nil {
		return nil, fmt.Errorf("restored rows: %w", err)
	}
	// The tables are the admin's (--no-owner); the tenant role gets its
	// grants on them, as on a provisioned tenant's.
	if err := s.cfg.Tenants.PrepareTarget(ctx, t, srv, r.version); err != nil {
		return nil, err
	}
	// Verified: every table holds as many rows as the backup does.
	tables, err := countRows(ctx, cfg)
	if err != nil {
		return nil, err
	}
	want, err := dumpRowCounts(ctx, r.file)
	if err != nil {
		return nil, err
	}
	if err := verifyCounts(tables, want); err != nil {
		return nil, err
	}
	schema := &catalog.SchemaState{Version: r.version}
	switch {
	case !inPlace:
		_, err = s.store.TransitionTenant(ctx, catalog.Transition{TenantID: t.ID, From: []catalog.TenantState{catalog.TenantProvisioning},
			To: catalog.TenantActive, Actor: actor, Action: "tenant.restored_from_backup", Schema: schema,
			Reason: fmt.Sprintf("backup %d of tenant %s", r.BackupID, r.Source)})
		if catalog.CodeOf(err) == catalog.CodeConflict {
			err = nil // activated by an earlier attempt
		}
	case r.resumeAfter:
		if err = s.store.SetTenantSchema(ctx, t.ID, r.version, false); err == nil {
			_, err = s.cfg.Tenants.Resume(ctx, t.Slug, actor, fmt.Sprintf("restored backup %d", r.BackupID))
			if catalog.CodeOf(err) == catalog.CodeConflict {
				err = nil // resumed by an earlier attempt (or by an operator)
			}
		}
	default:
		err = s.store.SetTenantSchema(ctx, t.ID, r.version, false)
	}
	return tables, err
}

// pgRestore runs pg_restore of file into cfg's database.
func pgRestore(ctx context.Context, cfg *pgx.ConnConfig, file string, args ...string) error {
	cmd, err := pgcluster.ClientCommand(ctx, "pg_restore", &cfg.Config, cfg.Database, append(args, file)...)
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &limitedBuffer{b: &bytes.Buffer{}, max: 0}, &limitedBuffer{b: &stderr, max: 4096}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("pg_restore into %s: %v: %s", cfg.Database, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return nil
}

// countRows counts the rows of every table of the tenant schema.
func countRows(ctx context.Context, cfg *pgx.ConnConfig) (map[string]int64, error) {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %s", cfg.Database, catalog.DescribeServerError(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	names, err := tableNames(ctx, conn)
	if err != nil {
		return nil, err
	}
	out := make(map[string]int64, len(names))
	for _, name := range names {
		var n int64
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM public.`+pgx.Identifier{name}.Sanitize()).Scan(&n); err != nil {
			return nil, err
		}
		out[name] = n
	}
	return out, nil
}

// tableNames lists the tenant's tables: those of schema public but
// golang-migrate's, partitions counted in their parent.
func tableNames(ctx context.Context, q interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}) ([]string, error) {
	rows, err := q.Query(ctx, `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = 'public' AND (c.relkind = 'p' OR (c.relkind = 'r' AND NOT c.relispartition))
		  AND c.relname <> 'schema_migrations' ORDER BY 1`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
