// STUB(moveapi): a compile-only stand-in for the move workflow's Service,
// written on branch moveapi against the contract while branch movewf builds
// the real one. At the merge this whole file is dropped for movewf's
// Service, and so are the lines marked STUB(moveapi) in controlplane/app.go.

package mover

import (
	"context"
	"time"

	"github.com/tenantplane/tenantplane/catalog"
)

// MoveSpec is what starting a move takes.
type MoveSpec struct {
	To   string `json:"to"`
	Mode string `json:"mode"` // "" (online when possible, else refused), "online", "copy"
}

// Move is a move as the admin API shows it.
type Move struct {
	ID              int64      `json:"id"`
	Tenant          string     `json:"tenant"`
	TenantID        string     `json:"tenant_id"`
	From            string     `json:"from"`
	To              string     `json:"to"`
	Mode            string     `json:"mode"`
	ModeReason      string     `json:"mode_reason"`
	Phase           string     `json:"phase"`
	RowsCopied      int64      `json:"rows_copied"`
	BytesCopied     int64      `json:"bytes_copied"`
	LagBytes        int64      `json:"lag_bytes"`
	WritePauseMS    *int64     `json:"write_pause_ms"`
	KeepUntil       *time.Time `json:"keep_until"`
	Reverts         *int64     `json:"reverts,omitempty"`
	CancelRequested bool       `json:"cancel_requested"`
	LastError       string     `json:"last_error"`
	Actor           string     `json:"actor"`
	CreatedAt       time.Time  `json:"created_at"`
	UpdatedAt       time.Time  `json:"updated_at"`
	FinishedAt      *time.Time `json:"finished_at"`
}

// Config configures a Service.
type Config struct{}

// Service runs moves.
type Service struct{}

// New returns a Service over the catalog.
func New(*catalog.Store, Config) *Service { return &Service{} }

var errNotBuilt = catalog.Errorf(catalog.CodeUnavailable, "moves are not built yet")

// StartMove starts moving a tenant to another server.
func (s *Service) StartMove(context.Context, string, MoveSpec, string) (Move, error) {
	return Move{}, errNotBuilt
}

// Get returns one move.
func (s *Service) Get(context.Context, int64) (Move, error) { return Move{}, errNotBuilt }

// List returns a page of moves, newest first.
func (s *Service) List(context.Context, int, string) ([]Move, string, error) {
	return nil, "", errNotBuilt
}

// Cancel asks an open move to stop and roll back.
func (s *Service) Cancel(context.Context, int64, string) (Move, error) { return Move{}, errNotBuilt }

// Revert starts a move that takes a finished one back.
func (s *Service) Revert(context.Context, int64, string) (Move, error) { return Move{}, errNotBuilt }
