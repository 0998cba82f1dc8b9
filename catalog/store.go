package catalog

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Store is the typed access to the catalog database. Every method takes a
// context and returns errors categorised by ErrorCode. It is safe for
// concurrent use.
type Store struct {
	pool   *pgxpool.Pool
	cipher *Cipher
}

// StoreConfig tunes the catalog connection pool. The zero value is usable.
type StoreConfig struct {
	// MaxConns bounds the catalog pool. Default 20.
	MaxConns int32
	// ConnectTimeout bounds each connection attempt. Default 5s.
	ConnectTimeout time.Duration
	// StatementTimeout bounds every catalog statement on the server. Default 15s.
	StatementTimeout time.Duration
}

// Open connects to the catalog database at dsn. It does not wait for the
// database to answer: a catalog that is down at start makes Ping fail, not Open.
func Open(ctx context.Context, dsn string, cipher *Cipher, cfg StoreConfig) (*Store, error) {
	if cipher == nil {
		return nil, fmt.Errorf("catalog.Open: a Cipher is required")
	}
	pcfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, WrapError(CodeInvalid, err, "catalog DSN is malformed")
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = 20
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	if cfg.StatementTimeout == 0 {
		cfg.StatementTimeout = 15 * time.Second
	}
	pcfg.MaxConns = cfg.MaxConns
	pcfg.ConnConfig.ConnectTimeout = cfg.ConnectTimeout
	pcfg.HealthCheckPeriod = 5 * time.Second
	pcfg.ConnConfig.RuntimeParams["statement_timeout"] = fmt.Sprint(cfg.StatementTimeout.Milliseconds())
	pcfg.ConnConfig.RuntimeParams["lock_timeout"] = "5000"
	pcfg.ConnConfig.RuntimeParams["application_name"] = "tenantplane"
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("catalog pool: %w", err)
	}
	return &Store{pool: pool, cipher: cipher}, nil
}

// Close closes the pool, waiting for connections in use to be released.
func (s *Store) Close() { s.pool.Close() }

// Pool is the catalog's connection pool, for components that need the catalog
// database directly (the job queue, LISTEN/NOTIFY).
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Ping checks that the catalog answers a query.
func (s *Store) Ping(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, "SELECT 1")
	return Classify(err, "catalog database")
}

// Querier is what both the pool and a transaction offer: a capability's
// store methods take one, so they run alone or inside the caller's InTx.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// InTx runs fn in a catalog transaction, committed when fn returns nil. The
// store's *Tx methods take that transaction, as do the stores of the
// capabilities (billing, fan-out), so a change, its audit event and the job
// that acts on it commit together.
func (s *Store) InTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	err := pgx.BeginFunc(ctx, s.pool, fn)
	var e *Error
	if err != nil && !errors.As(err, &e) {
		return Classify(err, "catalog transaction")
	}
	return err
}
