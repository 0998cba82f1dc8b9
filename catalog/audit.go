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

// TenantAuditEvent is an audit event as its tenant sees it (GET /v1/audit):
// who did what to its account, and when. It leaves out what is the
// operator's: the reason (an operator's note, or an internal error's text)
// and any detail not in tenantAuditDetails (server names, run ids).
type TenantAuditEvent struct {
	ID        int64          `json:"id"`
	At        time.Time      `json:"at"`
	Actor     string         `json:"actor"`
	Action    string         `json:"action"`
	Subject   string         `json:"subject,omitempty"`
	FromState string         `json:"from_state,omitempty"`
	ToState   string         `json:"to_state,omitempty"`
	Details   map[string]any `json:"details,omitempty"`
}

// tenantAuditDetails are the details a tenant is shown: its own settings.
// A detail is hidden unless it is named here, so a new one written
// elsewhere never reaches a tenant by default.
var tenantAuditDetails = []string{"scopes", "expires_at", "allow", "plan", "hostname"}

// ListTenantAudit returns a page of one tenant's own audit events, oldest
// first: at most limit (CheckLimit's bounds) after cursor, and the next
// page's cursor ("" on the last). Nothing of another tenant's, nor any
// event about no tenant, is ever in it.
func (s *Store) ListTenantAudit(ctx context.Context, tenantID string, limit int, cursor string) ([]TenantAuditEvent, string, error) {
	limit, err := CheckLimit(limit)
	if err != nil {
		return nil, "", err
	}
	after := int64(0)
	if parts, err := DecodeCursor(cursor, 1); err != nil {
		return nil, "", err
	} else if parts != nil {
		if after, err = strconv.ParseInt(parts[0], 10, 64); err != nil || after < 0 {
			return nil, "", ErrBadCursor()
		}
	}
	rows, err := s.pool.Query(ctx, `
		SELECT id, at, actor, action, subject, coalesce(from_state, ''), coalesce(to_state, ''), details
		FROM audit_events WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3`, tenantID, after, limit+1)
	if err != nil {
		return nil, "", Classify(err, "audit events")
	}
	events, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ev TenantAuditEvent, err error) {
		var details map[string]any
		err = row.Scan(&ev.ID, &ev.At, &ev.Actor, &ev.Action, &ev.Subject, &ev.FromState, &ev.ToState, &details)
		for _, k := range tenantAuditDetails {
			if v, ok := details[k]; ok {
				if ev.Details == nil {
					ev.Details = map[string]any{}
				}
				ev.Details[k] = v
			}
		}
		return ev, err
	})
	if err != nil {
		return nil, "", Classify(err, "audit events")
	}
	next := ""
	if len(events) > limit {
		events = events[:limit]
		next = EncodeCursor(strconv.FormatInt(events[limit-1].ID, 10))
	}
	if events == nil {
		events = []TenantAuditEvent{}
	}
	return events, next, nil
}
