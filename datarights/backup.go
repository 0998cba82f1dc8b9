package datarights

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgcluster"
)

// Backup states.
const (
	StatePending = "pending"
	StateRunning = "running"
	StateDone    = "done"
	StateFailed  = "failed"
	StateExpired = "expired" // its retention ran out: the file is deleted
	StateErased  = "erased"  // its tenant was erased: the file is deleted
)

// Backup is a pg_dump -Fc of a tenant database, as the catalog records it.
type Backup struct {
	ID            int64      `json:"id"`
	Tenant        string     `json:"tenant"`
	TenantID      string     `json:"tenant_id"`
	Server        string     `json:"server"`
	Trigger       string     `json:"trigger"` // schedule or manual
	State         string     `json:"state"`
	File          string     `json:"file,omitempty"`
	SizeBytes     *int64     `json:"size_bytes"`
	SHA256        string     `json:"sha256,omitempty"`
	SchemaVersion *int64     `json:"schema_version"`
	Attempts      int        `json:"attempts"`
	LastError     string     `json:"last_error"`
	Actor         string     `json:"actor"`
	CreatedAt     time.Time  `json:"created_at"`
	StartedAt     *time.Time `json:"started_at"`
	FinishedAt    *time.Time `json:"finished_at"`
	ExpiresAt     *time.Time `json:"expires_at"`
	DeletedAt     *time.Time `json:"deleted_at"`
}

const backupSelect = `SELECT b.id, t.slug, b.tenant_id, coalesce(s.name, ''), b.trigger, b.state, b.file, b.size_bytes,
	coalesce(b.sha256, ''), b.schema_version, b.attempts, b.last_error, b.actor, b.created_at, b.started_at,
	b.finished_at, b.expires_at, b.deleted_at
	FROM backups b JOIN tenants t ON t.id = b.tenant_id LEFT JOIN servers s ON s.id = b.server_id `

func scanBackup(row pgx.Row) (b Backup, err error) {
	err = row.Scan(&b.ID, &b.Tenant, &b.TenantID, &b.Server, &b.Trigger, &b.State, &b.File, &b.SizeBytes, &b.SHA256,
		&b.SchemaVersion, &b.Attempts, &b.LastError, &b.Actor, &b.CreatedAt, &b.StartedAt, &b.FinishedAt, &b.ExpiresAt, &b.DeletedAt)
	return b, err
}

type backupArgs struct {
	BackupID int64 `json:"backup_id"`
}

func (backupArgs) Kind() string { return "tenantplane.backup" }

func (a backupArgs) id() int64 { return a.BackupID }

// errNoBackupDir refuses backups in a process without a backup directory.
var errNoBackupDir = catalog.Errorf(catalog.CodeConflict, "backups are off: set TENANTPLANE_BACKUP_DIR to the directory that keeps them")

// backupable says whether a tenant's database can be backed up now.
func backupable(t catalog.Tenant) error {
	if t.State != catalog.TenantActive && t.State != catalog.TenantSuspended {
		return catalog.Errorf(catalog.CodeConflict, "tenant %s is %s: only an active or suspended tenant's database is backed up", t.Slug, t.State)
	}
	return nil
}

// StartBackup records a backup of tenant slug taken now and queues its job:
// 202 with the backup. A tenant with a backup pending or running gets that
// one (200: the same call again starts nothing new).
func (s *Service) StartBackup(ctx context.Context, slug, who string) (b Backup, created bool, err error) {
	if s.cfg.BackupDir == "" {
		return Backup{}, false, errNoBackupDir
	}
	t, err := s.store.GetTenant(ctx, slug)
	if err != nil {
		return Backup{}, false, err
	}
	if err := backupable(t); err != nil {
		return Backup{}, false, err
	}
	var id int64
	err = s.store.InTx(ctx, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `INSERT INTO backups (tenant_id, server_id, trigger, actor) VALUES ($1, $2, 'manual', $3)
			ON CONFLICT (tenant_id) WHERE state IN ('pending', 'running') DO NOTHING RETURNING id`, t.ID, nullID(t.ServerID), who).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			return tx.QueryRow(ctx, `SELECT id FROM backups WHERE tenant_id = $1 AND state IN ('pending', 'running')`, t.ID).Scan(&id)
		}
		if err != nil {
			return catalog.Classify(err, "backup")
		}
		created = true
		return s.insertJob(ctx, tx, backupArgs{BackupID: id})
	})
	if err != nil {
		return Backup{}, false, catalog.Classify(err, "backup")
	}
	b, err = s.GetBackup(ctx, slug, id)
	return b, created, err
}

// nullID is a server id for the catalog: 0, none, is NULL.
func nullID(id int64) *int64 {
	if id == 0 {
		return nil
	}
	return &id
}

// GetBackup returns backup id of tenant slug.
func (s *Service) GetBackup(ctx context.Context, slug string, id int64) (Backup, error) {
	b, err := scanBackup(s.store.Pool().QueryRow(ctx, backupSelect+`WHERE b.id = $1 AND t.slug = $2`, id, slug))
	if err != nil {
		return Backup{}, catalog.Classify(err, fmt.Sprintf("backup %d of tenant %q", id, slug))
	}
	return b, nil
}

// ListBackups returns tenant slug's backups, newest first, a page at a time.
func (s *Service) ListBackups(ctx context.Context, slug string, limit int, cursor string) ([]Backup, string, error) {
	t, err := s.store.GetTenant(ctx, slug)
	if err != nil {
		return nil, "", err
	}
	return catalog.IDPage(ctx, s.store.Pool(), limit, cursor, "backups", backupSelect+`WHERE b.tenant_id = $1 AND b.id < $2 ORDER BY b.id DESC LIMIT $3`,
		scanBackup, func(b Backup) int64 { return b.ID }, t.ID)
}

// ScheduleBackups queues a backup of every active or suspended tenant whose
// plan's backup is due, and returns how many. Each tenant's backups fall at
// its own point of the interval (a hash of its id), so a fleet's backups
// spread over the interval instead of starting together; a tenant is due
// once per interval, from the first interval that began after it was made.
// Several replicas may run it at once: a tenant has one open backup at most.
func (s *Service) ScheduleBackups(ctx context.Context) (int, error) {
	if s.cfg.BackupDir == "" {
		return 0, nil
	}
	n := 0
	err := s.store.InTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
			WITH slots AS (
				SELECT t.id, t.server_id, t.created_at, iv,
					to_timestamp(floor((extract(epoch FROM $1::timestamptz) - phase) / iv) * iv + phase) AS slot
				FROM tenants t JOIN plans p ON p.name = t.plan,
					LATERAL (SELECT extract(epoch FROM p.backup_interval)::float8 AS iv) i,
					LATERAL (SELECT (abs(hashtext(t.id::text))::bigint % greatest(i.iv::bigint, 1))::float8 AS phase) h
				WHERE t.state IN ('active', 'suspended') AND t.server_id IS NOT NULL AND t.move_id IS NULL
			)
			INSERT INTO backups (tenant_id, server_id, trigger, actor, created_at)
			SELECT id, server_id, 'schedule', 'schedule', $1 FROM slots
			WHERE slot >= created_at
			  AND NOT EXISTS (SELECT 1 FROM backups b WHERE b.tenant_id = slots.id AND b.trigger = 'schedule' AND b.created_at >= slots.slot)
			ORDER BY slot
			ON CONFLICT (tenant_id) WHERE state IN ('pending', 'running') DO NOTHING
			RETURNING id`, s.now())
		if err != nil {
			return err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return err
		}
		for _, id := range ids {
			if err := s.insertJob(ctx, tx, backupArgs{BackupID: id}); err != nil {
				return err
			}
		}
		n = len(ids)
		return nil
	})
	return n, catalog.Classify(err, "backup schedule")
}

// claimBackup marks backup id running, unless PerServer backups run on its
// server already (then it says wait). Claims of one server are serialized
// on its row, which is how the bound holds across processes. A backup
// running already is a retry of its own job (after a crash): it goes on.
func (s *Service) claimBackup(ctx context.Context, id int64) (b Backup, wait, gone bool, err error) {
	err = s.store.InTx(ctx, func(tx pgx.Tx) error {
		var state string
		var serverID *int64
		if err := tx.QueryRow(ctx, `SELECT state, server_id FROM backups WHERE id = $1 FOR UPDATE`, id).Scan(&state, &serverID); err != nil {
			return err
		}
		if state != StatePending && state != StateRunning {
			gone = true
			return nil
		}
		if state == StatePending && serverID != nil {
			if _, err := tx.Exec(ctx, `SELECT 1 FROM servers WHERE id = $1 FOR UPDATE`, *serverID); err != nil {
				return err
			}
			var running int
			if err := tx.QueryRow(ctx, `SELECT count(*) FROM backups WHERE server_id = $1 AND state = 'running'`, *serverID).Scan(&running); err != nil {
				return err
			}
			if running >= s.cfg.PerServer {
				wait = true
				return nil
			}
		}
		// The claim's own time, not its transaction's: that may have begun
		// before the wait for the server's row.
		_, err := tx.Exec(ctx, `UPDATE backups SET state = 'running', attempts = attempts + 1, started_at = coalesce(started_at, clock_timestamp()) WHERE id = $1`, id)
		if err != nil {
			return err
		}
		b, err = scanBackup(tx.QueryRow(ctx, backupSelect+`WHERE b.id = $1`, id))
		return err
	})
	return b, wait, gone, catalog.Classify(err, "backup")
}

// runBackup takes backup id: pg_dump -Fc streamed to a file beside its
// final name, then renamed. A failure is recorded on the backup and the job
// retried; the last attempt's failure marks it failed, with an audit event
// and an error log.
func (s *Service) runBackup(ctx context.Context, id int64, last bool) error {
	if s.cfg.BackupDir == "" {
		return river.JobSnooze(time.Minute) // another process, with a directory, may take it
	}
	b, wait, gone, err := s.claimBackup(ctx, id)
	if err != nil || gone {
		return err
	}
	if wait {
		return river.JobSnooze(5 * time.Second)
	}
	log := s.logger.With("tenant", b.Tenant, "backup", b.ID)
	res, err := s.takeBackup(ctx, b)
	if err != nil {
		// The last attempt's failure is reported in the audit log too,
		// besides the error log and the backup's row.
		return s.attemptFailed(ctx, log, "backups", id, last, err, &catalog.AuditEvent{Actor: actor, Action: "tenant.backup_failed",
			TenantID: b.TenantID, Subject: b.Tenant, Reason: err.Error(), Details: map[string]any{"backup": b.ID, "attempts": b.Attempts}})
	}
	tag, err := s.store.Pool().Exec(ctx, `
		UPDATE backups b SET state = 'done', file = $2, size_bytes = $3, sha256 = $4, schema_version = $5, last_error = '',
			finished_at = clock_timestamp(), expires_at = clock_timestamp() + p.backup_retention
		FROM tenants t JOIN plans p ON p.name = t.plan
		WHERE b.id = $1 AND t.id = b.tenant_id AND b.state = 'running'`, id, res.file, res.size, res.sha256, res.version)
	if err != nil {
		return catalog.Classify(err, "backup")
	}
	if tag.RowsAffected() == 0 {
		// Erased (or expired) while it ran: its file must not outlive that.
		return os.Remove(res.file)
	}
	s.metrics.jobs.WithLabelValues("backup", StateDone).Inc()
	s.metrics.backupBytes.Add(float64(res.size))
	log.InfoContext(ctx, "backup taken", "bytes", res.size, "schema_version", res.version)
	return nil
}

type dumpResult struct {
	file    string
	size    int64
	sha256  string
	version int64
}

// takeBackup dumps backup b's tenant database into BackupDir/<tenant id>/<backup id>.dump.
func (s *Service) takeBackup(ctx context.Context, b Backup) (dumpResult, error) {
	t, err := s.store.GetTenantByID(ctx, b.TenantID)
	if err != nil {
		return dumpResult{}, err
	}
	if err := backupable(t); err != nil {
		return dumpResult{}, err
	}
	cfg, err := s.tenantConfig(ctx, t)
	if err != nil {
		return dumpResult{}, err
	}
	version, err := readVersion(ctx, cfg)
	if err != nil {
		return dumpResult{}, err
	}
	dir := filepath.Join(s.cfg.BackupDir, t.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return dumpResult{}, err
	}
	final := filepath.Join(dir, fmt.Sprintf("%d.dump", b.ID))
	size, sum, err := writeFileAtomically(final, func(w io.Writer) error {
		return pgDump(ctx, cfg, w, "--format=custom")
	})
	if err != nil {
		return dumpResult{}, err
	}
	return dumpResult{file: final, size: size, sha256: sum, version: version}, nil
}

// writeFileAtomically writes final through fill into a temporary file
// beside it, synced and then renamed: a reader never sees half a file. It
// returns the size and the SHA-256 of what was written.
func writeFileAtomically(final string, fill func(w io.Writer) error) (int64, string, error) {
	tmp := final + ".partial"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, "", err
	}
	h := sha256.New()
	cw := &countingWriter{w: io.MultiWriter(f, h)}
	err = fill(cw)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return 0, "", err
	}
	return cw.n, hex.EncodeToString(h.Sum(nil)), nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// pgDump streams pg_dump of cfg's database into w (never holding it in
// memory: the pipe has the size of one read). --enable-row-security: the
// tenant tables' row-level security is forced, so their owner (the admin
// role, which its database_owner policy lets see every row) reads them
// through it; without it pg_dump refuses them.
func pgDump(ctx context.Context, cfg *pgx.ConnConfig, w io.Writer, args ...string) error {
	args = append([]string{"--enable-row-security"}, args...)
	cmd, err := pgcluster.ClientCommand(ctx, "pg_dump", &cfg.Config, cfg.Database, args...)
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = w, &limitedBuffer{b: &stderr, max: 4096}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("pg_dump of %s: %v: %s", cfg.Database, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return nil
}

// limitedBuffer keeps the first max bytes of a tool's messages.
type limitedBuffer struct {
	b   *bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - l.b.Len(); room > 0 {
		l.b.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

// readVersion reads the golang-migrate version of a tenant database (0
// before any migration).
func readVersion(ctx context.Context, cfg *pgx.ConnConfig) (int64, error) {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return 0, fmt.Errorf("connecting to %s: %s", cfg.Database, catalog.DescribeServerError(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return schemaVersion(ctx, conn)
}

func schemaVersion(ctx context.Context, q interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}) (int64, error) {
	var v int64
	err := q.QueryRow(ctx, `SELECT coalesce((SELECT version FROM schema_migrations LIMIT 1), 0)
		WHERE to_regclass('public.schema_migrations') IS NOT NULL`).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	return v, err
}

// Expire deletes the files of the backups and exports whose time is over,
// and records each deletion (state expired, deleted_at, an audit event for
// a backup). It returns how many it deleted.
func (s *Service) Expire(ctx context.Context) (int, error) {
	n := 0
	for _, kind := range []struct{ table, action string }{{"backups", "tenant.backup_expired"}, {"exports", "tenant.export_expired"}} {
		rows, err := s.store.Pool().Query(ctx, `SELECT x.id, x.tenant_id, t.slug, x.file, coalesce(x.sha256, '') FROM `+kind.table+` x
			JOIN tenants t ON t.id = x.tenant_id WHERE x.state = 'done' AND x.expires_at <= $1 ORDER BY x.expires_at LIMIT 500`, s.now())
		if err != nil {
			return n, catalog.Classify(err, kind.table)
		}
		type expired struct {
			id                        int64
			tenantID, slug, file, sum string
		}
		var list []expired
		for rows.Next() {
			var e expired
			if err := rows.Scan(&e.id, &e.tenantID, &e.slug, &e.file, &e.sum); err != nil {
				rows.Close()
				return n, catalog.Classify(err, kind.table)
			}
			list = append(list, e)
		}
		if err := rows.Err(); err != nil {
			return n, catalog.Classify(err, kind.table)
		}
		for _, e := range list {
			if err := os.Remove(e.file); err != nil && !errors.Is(err, os.ErrNotExist) {
				s.logger.WarnContext(ctx, "deleting an expired file", "tenant", e.slug, "file", e.file, "error", err)
				continue
			}
			err := s.store.InTx(ctx, func(tx pgx.Tx) error {
				tag, err := tx.Exec(ctx, `UPDATE `+kind.table+` SET state = 'expired', deleted_at = now() WHERE id = $1 AND state = 'done'`, e.id)
				if err != nil || tag.RowsAffected() == 0 {
					return err
				}
				return catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: actor, Action: kind.action, TenantID: e.tenantID, Subject: e.slug,
					Details: map[string]any{"id": e.id, "file": filepath.Base(e.file), "sha256": e.sum}})
			})
			if err != nil {
				return n, catalog.Classify(err, kind.table)
			}
			s.metrics.expired.WithLabelValues(strings.TrimSuffix(kind.table, "s")).Inc()
			n++
		}
	}
	return n, nil
}
