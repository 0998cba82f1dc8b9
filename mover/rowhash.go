package mover

import (
	"bytes"
	"context"
	"fmt"
	"strconv"

	"github.com/cespare/xxhash/v2"
	"github.com/jackc/pgx/v5"
)

// CopiedTable is a table's rows as Copy sent them: their count and an
// order-independent hash of their COPY text, taken on the way from the
// source to the target. VerifyOptions.Copied compares it with the target's
// rows read back, so that the source is not read a second time.
type CopiedTable struct {
	Table   string
	Columns []string // in the order the COPY carried them
	Rows    int64
	Hash    uint64
}

// rowHasher counts and hashes the rows of a COPY text stream written to it
// in pieces of any size: in COPY's text format a raw newline only ends a
// row (one inside a value is written as \n). The hash is the sum, modulo
// 2^64, of each row's xxhash64, so that it does not depend on the rows'
// order: a changed, missing or extra row changes it with overwhelming
// likelihood, like the md5 sum of rowHashQuery, at a fraction of its cost.
type rowHasher struct {
	d    *xxhash.Digest
	rows int64
	sum  uint64
}

func newRowHasher() *rowHasher { return &rowHasher{d: xxhash.New()} }

func (h *rowHasher) Write(b []byte) (int, error) {
	n := len(b)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			_, _ = h.d.Write(b)
			break
		}
		_, _ = h.d.Write(b[:i])
		h.sum += h.d.Sum64()
		h.rows++
		h.d.Reset()
		b = b[i+1:]
	}
	return n, nil
}

// summary is the count and hash in the form Verify compares.
func (h *rowHasher) summary() rowSummary {
	return rowSummary{rows: h.rows, hash: formatRowHash(h.sum)}
}

func formatRowHash(sum uint64) string { return "xxh:" + strconv.FormatUint(sum, 16) }

// hashCopied reads table t back from tx with COPY TO, in the columns and
// text format the copy carried, and counts and hashes its rows as Copy did;
// with tenantID, only that tenant's rows (a promotion's or a demotion's
// copy sent no other).
func hashCopied(ctx context.Context, tx pgx.Tx, t CopiedTable, tenantID string) (rowSummary, error) {
	h := newRowHasher()
	from := qualified(t.Table) + " (" + columnList(t.Columns) + ")"
	if tenantID != "" {
		// The id is a UUID (checked by read); COPY takes no parameters.
		from = "(SELECT " + columnList(t.Columns) + " FROM " + qualified(t.Table) + " WHERE tenant_id = " + literal(tenantID) + ")"
	}
	_, err := tx.Conn().PgConn().CopyTo(ctx, h, "COPY "+from+" TO STDOUT")
	if err != nil {
		return rowSummary{}, fmt.Errorf("table %s: reading it back: %w", t.Table, err)
	}
	return h.summary(), nil
}
