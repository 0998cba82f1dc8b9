package datarights

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantplane/tenantplane/catalog"
)

// Artefact is something of a tenant's that an erasure removed or kept.
type Artefact struct {
	Kind   string `json:"kind"` // database, role, backup, export, archive, api_keys, hostnames, stripe_customer, invoices, ...
	Name   string `json:"name,omitempty"`
	Server string `json:"server,omitempty"`
	Bytes  *int64 `json:"bytes,omitempty"`
	// SHA256 is the hash of a removed file's content, read before it went.
	SHA256 string `json:"sha256,omitempty"`
	Count  *int64 `json:"count,omitempty"`
	Note   string `json:"note,omitempty"`
}

// Erasure is the record of a tenant's erasure.
type Erasure struct {
	Tenant     string     `json:"tenant"`
	TenantID   string     `json:"tenant_id"`
	State      string     `json:"state"` // erasing, done
	Removed    []Artefact `json:"removed"`
	Kept       []Artefact `json:"kept"`
	Actor      string     `json:"actor"`
	Reason     string     `json:"reason"`
	StartedAt  time.Time  `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at"`
	// AlreadyErased is set on the answer to an erasure of a tenant erased
	// before: nothing was done.
	AlreadyErased bool `json:"already_erased,omitempty"`
}

// EraseSpec is what an erasure takes.
type EraseSpec struct {
	// Confirm must repeat the tenant's slug.
	Confirm string `json:"confirm"`
	Reason  string `json:"reason"`
}

func scanErasure(row pgx.Row) (e Erasure, err error) {
	err = row.Scan(&e.Tenant, &e.TenantID, &e.State, &e.Removed, &e.Kept, &e.Actor, &e.Reason, &e.StartedAt, &e.FinishedAt)
	return e, err
}

const erasureSelect = `SELECT slug, tenant_id, state, removed, kept, actor, reason, started_at, finished_at FROM erasures `

// GetErasure returns the record of tenant slug's erasure (CodeNotFound
// when it was never erased).
func (s *Service) GetErasure(ctx context.Context, slug string) (Erasure, error) {
	e, err := scanErasure(s.store.Pool().QueryRow(ctx, erasureSelect+`WHERE slug = $1`, slug))
	if err != nil {
		return Erasure{}, catalog.Classify(err, fmt.Sprintf("erasure of tenant %q", slug))
	}
	return e, nil
}

// Erase removes tenant slug's data: its database and role on every server,
// its backups, exports and archives (each file hashed first), its API keys
// and hostnames, its Stripe customer, and its name. It keeps its invoices
// and usage totals (what tax law asks to keep) and the audit log, and says
// so in the record. The tenant row stays, state deleted, as the tombstone
// of the slug. An erasure that stops halfway (a server down) is finished by
// the next call; one of an erased tenant does nothing and answers the
// record with AlreadyErased.
func (s *Service) Erase(ctx context.Context, slug string, spec EraseSpec, who string) (Erasure, error) {
	if spec.Confirm != slug {
		return Erasure{}, catalog.Errorf(catalog.CodeInvalid, "confirm must repeat the tenant's slug (%q): erasure cannot be undone", slug)
	}
	if !catalog.ValidText(spec.Reason) || len(spec.Reason) > 1000 {
		return Erasure{}, catalog.Errorf(catalog.CodeInvalid, "reason: at most 1000 characters of valid UTF-8 text")
	}
	t, err := s.store.GetTenant(ctx, slug)
	if err != nil {
		return Erasure{}, err
	}
	if e, err := s.GetErasure(ctx, slug); err == nil && e.State == "done" {
		e.AlreadyErased = true
		return e, nil
	}
	if t.MoveID != nil {
		return Erasure{}, catalog.MovingError(t.Slug, *t.MoveID)
	}
	if t.State == catalog.TenantProvisioning {
		return Erasure{}, catalog.Errorf(catalog.CodeConflict, "tenant %s is provisioning: wait until it is active or failed, then erase it", slug)
	}
	log := s.logger.With("tenant", slug)
	// First the record and the tombstone: from here on the tenant is not
	// served (deleted), no backup or export starts, and those under way
	// delete their own file when they finish.
	err = s.store.InTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO erasures (tenant_id, slug, actor, reason) VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id) DO NOTHING`,
			t.ID, t.Slug, who, spec.Reason); err != nil {
			return catalog.Classify(err, "erasure")
		}
		if t.State != catalog.TenantDeleted {
			if _, err := s.store.TransitionTenantTx(ctx, tx, catalog.Transition{TenantID: t.ID,
				From: []catalog.TenantState{catalog.TenantActive, catalog.TenantSuspended, catalog.TenantDeleting, catalog.TenantFailed},
				To:   catalog.TenantDeleted, Actor: who, Action: "tenant.erasing", Reason: spec.Reason, RefuseMoving: true}); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, `UPDATE backups SET state = 'erased', deleted_at = now() WHERE tenant_id = $1 AND state IN ('pending', 'running')`, t.ID)
		if err == nil {
			_, err = tx.Exec(ctx, `UPDATE exports SET state = 'erased', deleted_at = now() WHERE tenant_id = $1 AND state IN ('pending', 'running')`, t.ID)
		}
		return catalog.Classify(err, "erasure")
	})
	if err != nil {
		return Erasure{}, err
	}
	var removed []Artefact
	// The database and role, on every server: a move's kept source, or an
	// older placement, counts as much as the current one.
	servers, err := s.store.ListServers(ctx)
	if err != nil {
		return Erasure{}, err
	}
	for _, srv := range servers {
		a, err := s.dropOn(ctx, t, srv)
		if err != nil {
			return Erasure{}, catalog.WrapError(catalog.CodeUnavailable, err,
				"erasing %s: %s (call it again once the server answers; the erasure goes on from there)", slug, err.Error())
		}
		removed = append(removed, a...)
	}
	if t.PoolID != 0 {
		// A pooled tenant's rows, in the pool database it shares.
		n, err := s.cfg.Tenants.ErasePooledRows(ctx, t)
		if err != nil {
			return Erasure{}, catalog.WrapError(catalog.CodeUnavailable, err,
				"erasing %s: its rows in pool database %s: %s (call it again once the server answers; the erasure goes on from there)", slug, t.Pool, err.Error())
		}
		removed = append(removed, Artefact{Kind: "rows", Name: t.Pool, Server: t.Server,
			Note: fmt.Sprintf("%d rows of the tenant deleted from the shared pool database", n)})
	}
	files, err := s.removeFiles(ctx, t)
	if err != nil {
		return Erasure{}, fmt.Errorf("erasing %s: %w", slug, err)
	}
	removed = append(removed, files...)
	var kept []Artefact
	if s.cfg.Customers != nil {
		r, k, err := s.cfg.Customers.EraseCustomer(ctx, t.ID)
		if err != nil {
			return Erasure{}, catalog.WrapError(catalog.CodeUnavailable, err, "erasing %s: billing: %s (call it again; the erasure goes on from there)",
				slug, err.Error())
		}
		removed, kept = append(removed, r...), append(kept, k...)
	}
	err = s.store.InTx(ctx, func(tx pgx.Tx) error {
		count := func(kind, note, sql string) error {
			tag, err := tx.Exec(ctx, sql, t.ID)
			if err != nil {
				return catalog.Classify(err, kind)
			}
			if n := tag.RowsAffected(); n > 0 {
				removed = append(removed, Artefact{Kind: kind, Count: &n, Note: note})
			}
			return nil
		}
		for _, step := range []struct{ kind, note, sql string }{
			{"api_keys", "stored as hashes; every one deleted", `DELETE FROM api_keys WHERE tenant_id = $1`},
			{"hostnames", "custom hostnames", `DELETE FROM tenant_hostnames WHERE tenant_id = $1`},
			{"usage_events", "the product's event ids and timestamps; the hourly totals stay", `DELETE FROM usage_events WHERE tenant_id = $1`},
			{"tenant_details", "name, credentials and network allowlist cleared; the slug stays as a tombstone",
				`UPDATE tenants SET name = 'erased', credentials_sealed = NULL, network_allow = '{}', updated_at = now() WHERE id = $1 AND name <> 'erased'`},
		} {
			if err := count(step.kind, step.note, step.sql); err != nil {
				return err
			}
		}
		kept = append(kept,
			Artefact{Kind: "usage", Note: "usage totals per meter and hour, tied to the tenant id only: kept for the invoices they priced"},
			Artefact{Kind: "audit_events", Note: "the tenant's audit log (who did what, when), which holds no tenant data"},
			Artefact{Kind: "tenant", Name: t.Slug, Note: "the tenant row, state deleted, as the tombstone of the slug and this record's subject"})
		_, err := tx.Exec(ctx, `UPDATE erasures SET state = 'done', removed = removed || $2::jsonb, kept = $3, finished_at = now() WHERE tenant_id = $1`,
			t.ID, nonNil(removed), nonNil(kept))
		if err != nil {
			return catalog.Classify(err, "erasure")
		}
		return catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: who, Action: "tenant.erased", TenantID: t.ID, Subject: t.Slug, Reason: spec.Reason,
			Details: map[string]any{"removed": len(removed)}})
	})
	if err != nil {
		return Erasure{}, err
	}
	log.InfoContext(ctx, "tenant erased", "removed", len(removed))
	return s.GetErasure(ctx, slug)
}

func nonNil(a []Artefact) []Artefact {
	if a == nil {
		return []Artefact{}
	}
	return a
}

// dropOn drops the tenant's database and role on srv when they are there,
// and says what it dropped (with the database's size).
func (s *Service) dropOn(ctx context.Context, t catalog.Tenant, srv catalog.Server) ([]Artefact, error) {
	if t.Database == "" {
		return nil, nil
	}
	dsn, err := s.store.ServerDSN(ctx, srv.Name)
	if err != nil {
		return nil, err
	}
	pcfg, err := catalog.ServerConfig(dsn)
	if err != nil {
		return nil, err
	}
	cfg := pcfg.ConnConfig.Copy()
	cfg.ConnectTimeout = 10 * time.Second
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("server %s: %s", srv.Name, catalog.DescribeServerError(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var size *int64
	var hasRole bool
	err = conn.QueryRow(ctx, `SELECT (SELECT pg_database_size(oid) FROM pg_database WHERE datname = $1),
		EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $2)`, t.Database, t.Role).Scan(&size, &hasRole)
	if err != nil {
		return nil, fmt.Errorf("server %s: %s", srv.Name, catalog.DescribeServerError(err))
	}
	if size == nil && !hasRole {
		return nil, nil
	}
	var digest string
	if size != nil {
		dbCfg := cfg.Copy()
		dbCfg.Database = t.Database
		if digest, err = databaseDigest(ctx, dbCfg); err != nil {
			return nil, fmt.Errorf("server %s: hashing database %s before it is dropped: %s", srv.Name, t.Database, catalog.DescribeServerError(err))
		}
	}
	if err := s.cfg.Tenants.DropDatabase(ctx, t, srv); err != nil {
		return nil, err
	}
	var out []Artefact
	if size != nil {
		out = append(out, Artefact{Kind: "database", Name: t.Database, Server: srv.Name, Bytes: size, SHA256: digest,
			Note: "dropped WITH (FORCE); sha256 is of its rows (databaseDigest)"})
	}
	if hasRole {
		out = append(out, Artefact{Kind: "role", Name: t.Role, Server: srv.Name})
	}
	return out, nil
}

// databaseDigest is a SHA-256 of a tenant database's rows, whatever their
// order on disk: over the lines "table, row count, sum of the first 60 bits
// of each row's md5" of every table (tableNames), sorted by table. The sums
// are aggregates, so the database streams past; nothing is held.
func databaseDigest(ctx context.Context, cfg *pgx.ConnConfig) (string, error) {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return "", err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	names, err := tableNames(ctx, tx)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, name := range names {
		var rows int64
		var sum string
		err := tx.QueryRow(ctx, `SELECT count(*), coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint), 0)::text
			FROM public.`+pgx.Identifier{name}.Sanitize()+` t`).Scan(&rows, &sum)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\t%d\t%s\n", name, rows, sum)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// removeFiles deletes the tenant's backups, exports and archived dumps,
// each hashed first, and marks the backups and exports erased.
func (s *Service) removeFiles(ctx context.Context, t catalog.Tenant) ([]Artefact, error) {
	var out []Artefact
	for _, kind := range []struct{ table, name string }{{"backups", "backup"}, {"exports", "export"}} {
		rows, err := s.store.Pool().Query(ctx, `SELECT id, file FROM `+kind.table+` WHERE tenant_id = $1 AND file <> '' ORDER BY id`, t.ID)
		if err != nil {
			return nil, catalog.Classify(err, kind.table)
		}
		type entry struct {
			id   int64
			file string
		}
		list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (entry, error) {
			var e entry
			return e, r.Scan(&e.id, &e.file)
		})
		if err != nil {
			return nil, catalog.Classify(err, kind.table)
		}
		for _, e := range list {
			a, err := removeFile(kind.name, e.file)
			if err != nil {
				return nil, err
			}
			if a != nil {
				a.Name = fmt.Sprintf("%s %d", kind.name, e.id)
				out = append(out, *a)
			}
			if _, err := s.store.Pool().Exec(ctx, `UPDATE `+kind.table+`
				SET state = CASE WHEN state = 'expired' THEN state ELSE 'erased' END, deleted_at = coalesce(deleted_at, now()), file = ''
				WHERE id = $1`, e.id); err != nil {
				return nil, catalog.Classify(err, kind.table)
			}
		}
	}
	for _, dir := range []string{s.cfg.BackupDir, s.cfg.ExportDir} {
		if dir != "" {
			// Leftovers of attempts that never finished (.partial files).
			if err := os.RemoveAll(filepath.Join(dir, t.ID)); err != nil {
				return nil, err
			}
		}
	}
	if s.cfg.ArchiveDir != "" {
		archives, err := filepath.Glob(filepath.Join(s.cfg.ArchiveDir, t.Slug+"-*.dump"))
		if err != nil {
			return nil, err
		}
		for _, f := range archives {
			// acme-*.dump also matches acme-corp's: only <slug>-<time>.dump is ours.
			if !archiveName.MatchString(strings.TrimPrefix(filepath.Base(f), t.Slug+"-")) {
				continue
			}
			a, err := removeFile("archive", f)
			if err != nil {
				return nil, err
			}
			if a != nil {
				a.Name = filepath.Base(f)
				out = append(out, *a)
			}
		}
	}
	return out, nil
}

// archiveName is the provisioner's archive file name after "<slug>-".
var archiveName = regexp.MustCompile(`^\d{8}T\d{6}Z\.dump$`)

// removeFile hashes a file and deletes it; a file gone already is nil.
func removeFile(kind, path string) (*Artefact, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	_ = f.Close()
	if err != nil {
		return nil, fmt.Errorf("hashing %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return nil, err
	}
	return &Artefact{Kind: kind, Bytes: &n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}
