package datarights

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantplane/tenantplane/catalog"
)

// Export is a tenant's data as a zip: one JSON-lines file per table
// (tables/<name>.jsonl, a JSON object per row), manifest.json, and on
// request dump.pgdump (pg_dump -Fc of the same snapshot).
type Export struct {
	ID          int64      `json:"id"`
	Tenant      string     `json:"tenant"`
	TenantID    string     `json:"tenant_id"`
	IncludeDump bool       `json:"include_dump"`
	State       string     `json:"state"`
	SizeBytes   *int64     `json:"size_bytes"`
	SHA256      string     `json:"sha256,omitempty"` // of the zip
	Manifest    *Manifest  `json:"manifest,omitempty"`
	Attempts    int        `json:"attempts"`
	LastError   string     `json:"last_error"`
	Actor       string     `json:"actor"`
	CreatedAt   time.Time  `json:"created_at"`
	FinishedAt  *time.Time `json:"finished_at"`
	ExpiresAt   *time.Time `json:"expires_at"`
	DeletedAt   *time.Time `json:"deleted_at"`

	file string
}

// Manifest describes an export's files; it is the zip's manifest.json.
type Manifest struct {
	Tenant        string          `json:"tenant"`
	TenantID      string          `json:"tenant_id"`
	Export        int64           `json:"export"`
	CreatedAt     time.Time       `json:"created_at"`
	SchemaVersion int64           `json:"schema_version"`
	Format        string          `json:"format"`
	Tables        []ManifestTable `json:"tables"`
	Dump          *ManifestFile   `json:"dump,omitempty"`
}

// ManifestTable is one table's file in an export.
type ManifestTable struct {
	Name  string `json:"name"`
	File  string `json:"file"`
	Rows  int64  `json:"rows"`
	Bytes int64  `json:"bytes"`
	// SHA256 is of the file as extracted.
	SHA256 string `json:"sha256"`
}

// ManifestFile is another file of an export.
type ManifestFile struct {
	File   string `json:"file"`
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

const exportSelect = `SELECT x.id, t.slug, x.tenant_id, x.include_dump, x.state, x.size_bytes, coalesce(x.sha256, ''), x.manifest,
	x.attempts, x.last_error, x.actor, x.created_at, x.finished_at, x.expires_at, x.deleted_at, x.file
	FROM exports x JOIN tenants t ON t.id = x.tenant_id `

func scanExport(row pgx.Row) (x Export, err error) {
	err = row.Scan(&x.ID, &x.Tenant, &x.TenantID, &x.IncludeDump, &x.State, &x.SizeBytes, &x.SHA256, &x.Manifest,
		&x.Attempts, &x.LastError, &x.Actor, &x.CreatedAt, &x.FinishedAt, &x.ExpiresAt, &x.DeletedAt, &x.file)
	return x, err
}

type exportArgs struct {
	ExportID int64 `json:"export_id"`
}

func (exportArgs) Kind() string { return "tenantplane.export" }

func (a exportArgs) id() int64 { return a.ExportID }

// ExportSpec is what an export takes.
type ExportSpec struct {
	// IncludeDump adds a pg_dump -Fc of the same snapshot.
	IncludeDump bool `json:"include_dump"`
}

// StartExport records an export of tenant slug and queues its job: 202
// with the export, which GetExport follows.
func (s *Service) StartExport(ctx context.Context, slug string, spec ExportSpec, who string) (Export, error) {
	if s.cfg.ExportDir == "" {
		return Export{}, catalog.Errorf(catalog.CodeConflict, "exports are off: set TENANTPLANE_EXPORT_DIR (or TENANTPLANE_BACKUP_DIR) to where they are kept")
	}
	t, err := s.store.GetTenant(ctx, slug)
	if err != nil {
		return Export{}, err
	}
	if err := backupable(t); err != nil {
		return Export{}, err
	}
	var id int64
	err = s.store.InTx(ctx, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `INSERT INTO exports (tenant_id, include_dump, actor) VALUES ($1, $2, $3) RETURNING id`,
			t.ID, spec.IncludeDump, who).Scan(&id); err != nil {
			return catalog.Classify(err, "export")
		}
		if err := catalog.InsertAudit(ctx, tx, catalog.AuditEvent{Actor: who, Action: "tenant.export_started", TenantID: t.ID, Subject: t.Slug,
			Details: map[string]any{"export": id, "include_dump": spec.IncludeDump}}); err != nil {
			return err
		}
		return s.insertJob(ctx, tx, exportArgs{ExportID: id})
	})
	if err != nil {
		return Export{}, err
	}
	return s.GetExport(ctx, slug, id)
}

// GetExport returns export id of tenant slug.
func (s *Service) GetExport(ctx context.Context, slug string, id int64) (Export, error) {
	x, err := scanExport(s.store.Pool().QueryRow(ctx, exportSelect+`WHERE x.id = $1 AND t.slug = $2`, id, slug))
	if err != nil {
		return Export{}, catalog.Classify(err, fmt.Sprintf("export %d of tenant %q", id, slug))
	}
	return x, nil
}

// ListExports returns tenant slug's exports, newest first, a page at a time.
func (s *Service) ListExports(ctx context.Context, slug string, limit int, cursor string) ([]Export, string, error) {
	t, err := s.store.GetTenant(ctx, slug)
	if err != nil {
		return nil, "", err
	}
	return catalog.IDPage(ctx, s.store.Pool(), limit, cursor, "exports", exportSelect+`WHERE x.tenant_id = $1 AND x.id < $2 ORDER BY x.id DESC LIMIT $3`,
		scanExport, func(x Export) int64 { return x.ID }, t.ID)
}

// OpenExport opens a finished export's zip for download. An export not
// done yet, expired or erased is a CodeConflict saying which.
func (s *Service) OpenExport(ctx context.Context, slug string, id int64) (Export, *os.File, error) {
	x, err := s.GetExport(ctx, slug, id)
	if err != nil {
		return Export{}, nil, err
	}
	if x.State != StateDone {
		return Export{}, nil, catalog.Errorf(catalog.CodeConflict, "export %d is %s: only a finished export can be downloaded", x.ID, x.State)
	}
	f, err := os.Open(x.file)
	if err != nil {
		return Export{}, nil, catalog.WrapError(catalog.CodeUnavailable, err, "export %d: its file cannot be read", x.ID)
	}
	return x, f, nil
}

func (s *Service) runExport(ctx context.Context, id int64, last bool) error {
	var x Export
	err := s.store.InTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE exports SET state = 'running', attempts = attempts + 1 WHERE id = $1 AND state IN ('pending', 'running')`, id)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		x, err = scanExport(tx.QueryRow(ctx, exportSelect+`WHERE x.id = $1`, id))
		return err
	})
	if err != nil || x.ID == 0 {
		return catalog.Classify(err, "export")
	}
	log := s.logger.With("tenant", x.Tenant, "export", x.ID)
	file, size, sum, manifest, err := s.writeExport(ctx, x)
	if err != nil {
		return s.attemptFailed(ctx, log, "exports", id, last, err, nil)
	}
	tag, err := s.store.Pool().Exec(ctx, `UPDATE exports SET state = 'done', file = $2, size_bytes = $3, sha256 = $4, manifest = $5,
		last_error = '', finished_at = now(), expires_at = now() + $6::interval WHERE id = $1 AND state = 'running'`,
		id, file, size, sum, manifest, s.cfg.ExportTTL)
	if err != nil {
		return catalog.Classify(err, "export")
	}
	if tag.RowsAffected() == 0 {
		return os.Remove(file) // erased while it ran
	}
	s.metrics.jobs.WithLabelValues("export", StateDone).Inc()
	log.InfoContext(ctx, "export done", "bytes", size, "tables", len(manifest.Tables))
	return nil
}

// writeExport writes export x's zip into ExportDir/<tenant id>/<export id>.zip.
func (s *Service) writeExport(ctx context.Context, x Export) (file string, size int64, sum string, m Manifest, err error) {
	t, err := s.store.GetTenantByID(ctx, x.TenantID)
	if err != nil {
		return "", 0, "", m, err
	}
	if err := backupable(t); err != nil {
		return "", 0, "", m, err
	}
	cfg, err := s.tenantConfig(ctx, t)
	if err != nil {
		return "", 0, "", m, err
	}
	dir := filepath.Join(s.cfg.ExportDir, t.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", 0, "", m, err
	}
	file = filepath.Join(dir, fmt.Sprintf("%d.zip", x.ID))
	m = Manifest{Tenant: t.Slug, TenantID: t.ID, Export: x.ID, CreatedAt: s.now(), Format: "jsonl: one JSON object per row, as PostgreSQL's row_to_json writes it"}
	size, sum, err = writeFileAtomically(file, func(w io.Writer) error {
		return writeZip(ctx, cfg, w, x.IncludeDump, &m)
	})
	return file, size, sum, m, err
}

// writeZip streams the tenant database of cfg into a zip on w: every table
// read in one REPEATABLE READ snapshot with COPY (row_to_json) TO STDOUT,
// straight into the zip entry, so no table is ever in memory; the pg_dump,
// when asked for, reads the same snapshot.
func writeZip(ctx context.Context, cfg *pgx.ConnConfig, w io.Writer, withDump bool, m *Manifest) error {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connecting to %s: %s", cfg.Database, catalog.DescribeServerError(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var snapshot string
	if withDump {
		if err := tx.QueryRow(ctx, `SELECT pg_export_snapshot()`).Scan(&snapshot); err != nil {
			return err
		}
	}
	if m.SchemaVersion, err = schemaVersion(ctx, tx); err != nil {
		return err
	}
	names, err := tableNames(ctx, tx)
	if err != nil {
		return err
	}
	zw := zip.NewWriter(w)
	// The fastest deflate: an export is read once, and its speed matters
	// more than a few percent of its size.
	zw.RegisterCompressor(zip.Deflate, func(out io.Writer) (io.WriteCloser, error) { return flate.NewWriter(out, flate.BestSpeed) })
	m.Tables = []ManifestTable{}
	for _, name := range names {
		entry := "tables/" + name + ".jsonl"
		mt := ManifestTable{Name: name, File: entry}
		err := zipEntry(zw, entry, zip.Deflate, m.CreatedAt, func(ew io.Writer) (int64, error) {
			tag, err := tx.Conn().PgConn().CopyTo(ctx, &copyTextUnescaper{w: ew},
				`COPY (SELECT row_to_json(t) FROM public.`+pgx.Identifier{name}.Sanitize()+` t) TO STDOUT`)
			return tag.RowsAffected(), err
		}, &mt.Rows, &mt.Bytes, &mt.SHA256)
		if err != nil {
			return fmt.Errorf("table %s: %w", name, err)
		}
		m.Tables = append(m.Tables, mt)
	}
	if withDump {
		d := ManifestFile{File: "dump.pgdump"}
		// Stored, not deflated: pg_dump -Fc compresses already.
		err := zipEntry(zw, d.File, zip.Store, m.CreatedAt, func(ew io.Writer) (int64, error) {
			return 0, pgDump(ctx, cfg, ew, "--format=custom", "--snapshot="+snapshot)
		}, new(int64), &d.Bytes, &d.SHA256)
		if err != nil {
			return err
		}
		m.Dump = &d
	}
	raw, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	mw, err := zw.CreateHeader(&zip.FileHeader{Name: "manifest.json", Method: zip.Deflate, Modified: m.CreatedAt})
	if err != nil {
		return err
	}
	if _, err := mw.Write(raw); err != nil {
		return err
	}
	return zw.Close()
}

// zipEntry writes one entry through fill, counting its bytes and hashing
// them as extracted.
func zipEntry(zw *zip.Writer, name string, method uint16, at time.Time, fill func(w io.Writer) (int64, error), rows, size *int64, sum *string) error {
	ew, err := zw.CreateHeader(&zip.FileHeader{Name: name, Method: method, Modified: at})
	if err != nil {
		return err
	}
	h := sha256.New()
	cw := &countingWriter{w: io.MultiWriter(ew, h)}
	n, err := fill(cw)
	if err != nil {
		return err
	}
	*rows, *size, *sum = n, cw.n, hex.EncodeToString(h.Sum(nil))
	return nil
}

// copyTextUnescaper turns COPY's text format of one json column back into
// JSON lines. COPY doubles every backslash and writes a newline, carriage
// return or tab inside a value as \n, \r, \t. A JSON text has those three
// raw only between tokens (inside strings they are escaped already, as
// \\n, which COPY wrote \\\\n), where any whitespace will do: they become
// spaces, so each row stays on its line. Escapes may straddle two writes.
type copyTextUnescaper struct {
	w       io.Writer
	pending bool // the last byte written was a lone backslash
	buf     []byte
}

var errCopyEscape = errors.New("export: an unexpected escape in COPY's output")

func (u *copyTextUnescaper) Write(p []byte) (int, error) {
	if !u.pending && bytes.IndexByte(p, '\\') < 0 {
		// Most rows hold no backslash: pass them on as they are.
		if _, err := u.w.Write(p); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	n := len(p)
	out := u.buf[:0]
	for len(p) > 0 {
		if u.pending {
			u.pending = false
			switch p[0] {
			case '\\':
				out = append(out, '\\')
			case 'n', 'r', 't', 'b', 'f', 'v':
				out = append(out, ' ')
			default:
				return 0, errCopyEscape
			}
			p = p[1:]
			continue
		}
		i := bytes.IndexByte(p, '\\')
		if i < 0 {
			out = append(out, p...)
			break
		}
		out = append(out, p[:i]...)
		u.pending, p = true, p[i+1:]
	}
	u.buf = out
	if _, err := u.w.Write(out); err != nil {
		return 0, err
	}
	return n, nil
}
