package catalog

import (
	"context"
	"encoding/json"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// AuditEvent is one line of the audit log: who did what, to what, when.
type AuditEvent struct {
	ID        int64          `json:"id"`
	At        time.Time      `json:"at"`
	Actor     string         `json:"actor"`
	Action    string         `json:"action"`
	TenantID  string         `json:"tenant_id,omitempty"`
	Subject   string         `json:"subject,omitempty"`
	FromState string         `json:"from_state,omitempty"`
	ToState   string         `json:"to_state,omitempty"`
	Reason    string         `json:"reason,omitempty"`
	Details   map[string]any `json:"details,omitempty"`
}

// RecordAudit appends an event to the audit log.
func (s *Store) RecordAudit(ctx context.Context, ev AuditEvent) error {
	return InsertAudit(ctx, s.pool, ev)
}

// InsertAudit appends an event to the audit log through q: a capability
// records its changes in the same transaction that makes them.
func InsertAudit(ctx context.Context, q Querier, ev AuditEvent) error {
	if ev.Actor == "" {
		ev.Actor = "system"
	}
	details := []byte("{}")
	if len(ev.Details) > 0 {
		var err error
		if details, err = json.Marshal(ev.Details); err != nil {
			return err
		}
	}
	_, err := q.Exec(ctx, `
		INSERT INTO audit_events (actor, action, tenant_id, subject, from_state, to_state, reason, details)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		ev.Actor, ev.Action, nullable(ev.TenantID), ev.Subject, nullable(ev.FromState), nullable(ev.ToState), ev.Reason, details)
	return Classify(err, "audit event")
}

// AuditFilter selects audit events; zero fields match everything.
type AuditFilter struct {
	TenantID string
	Subject  string
	Action   string
	Limit    int  // default 100
	Newest   bool // newest first
}

// ListAudit returns matching audit events, oldest first unless f.Newest.
func (s *Store) ListAudit(ctx context.Context, f AuditFilter) ([]AuditEvent, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	rows, err := s.pool.Query(ctx, `
		SELECT id, at, actor, action, coalesce(tenant_id::text, ''), subject,
		       coalesce(from_state, ''), coalesce(to_state, ''), reason, details
		FROM audit_events
		WHERE ($1 = '' OR tenant_id::text = $1) AND ($2 = '' OR subject = $2) AND ($3 = '' OR action = $3)
		ORDER BY CASE WHEN $5 THEN -id ELSE id END LIMIT $4`, f.TenantID, f.Subject, f.Action, f.Limit, f.Newest)
	if err != nil {
		return nil, Classify(err, "audit events")
	}
	events, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ev AuditEvent, err error) {
		err = row.Scan(&ev.ID, &ev.At, &ev.Actor, &ev.Action, &ev.TenantID, &ev.Subject, &ev.FromState, &ev.ToState, &ev.Reason, &ev.Details)
		return ev, err
	})
	return events, Classify(err, "audit events")
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func quote(s string) string { return strconv.Quote(s) }
