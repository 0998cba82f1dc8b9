package provisioner

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/tenantplane/tenantplane/catalog"
)

// ServerSpec is what registering a server takes.
type ServerSpec struct {
	Name string `json:"name"`
	// DSN is the server's admin DSN; its role needs CREATEDB and CREATEROLE.
	DSN string `json:"dsn"`
	// Capacity is the most tenant databases the server may hold. Default 100.
	Capacity int `json:"capacity"`
	// ConnBudget is the most connections tenant pools may hold on the server.
	// Default Config.DefaultConnBudget.
	ConnBudget int `json:"conn_budget"`
}

// RegisterServer checks that the server answers at spec.DSN with a role that
// can create databases and roles, then records it in the catalog (DSN sealed).
// Nothing is stored when a check fails.
func (p *Provisioner) RegisterServer(ctx context.Context, spec ServerSpec, actor string) (catalog.Server, error) {
	if err := catalog.ValidateServerName(spec.Name); err != nil {
		return catalog.Server{}, err
	}
	if spec.Capacity == 0 {
		spec.Capacity = 100
	}
	if spec.ConnBudget == 0 {
		spec.ConnBudget = p.cfg.DefaultConnBudget
	}
	if spec.Capacity < 0 || spec.ConnBudget < 0 {
		return catalog.Server{}, catalog.Errorf(catalog.CodeInvalid, "capacity and conn_budget must be positive")
	}
	if spec.DSN == "" {
		return catalog.Server{}, catalog.Errorf(catalog.CodeInvalid, "dsn is required")
	}
	if err := p.checkServer(ctx, spec.DSN); err != nil {
		return catalog.Server{}, err
	}
	srv, err := p.store.CreateServer(ctx, catalog.NewServer{
		Name: spec.Name, DSN: spec.DSN, Capacity: spec.Capacity, ConnBudget: spec.ConnBudget, Actor: actor,
	})
	if err != nil {
		return catalog.Server{}, err
	}
	p.logger.InfoContext(ctx, "server registered", "server", srv.Name, "dsn", srv.DSNRedacted, "capacity", srv.Capacity)
	return srv, nil
}

// checkServer connects with the admin DSN and checks the role's privileges.
func (p *Provisioner) checkServer(ctx context.Context, dsn string) error {
	pcfg, err := catalog.ServerConfig(dsn)
	if err != nil {
		return err
	}
	cfg := pcfg.ConnConfig
	cfg.ConnectTimeout = p.cfg.ConnectTimeout
	ctx, cancel := context.WithTimeout(ctx, 2*p.cfg.ConnectTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return catalog.WrapError(catalog.CodeInvalid, err, "cannot connect to the server at %s: %s", redacted(dsn), catalog.ConnectReason(err))
	}
	defer conn.Close(context.Background())
	var super, createDB, createRole bool
	err = conn.QueryRow(ctx, `SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user`).
		Scan(&super, &createDB, &createRole)
	if err != nil {
		return fmt.Errorf("checking server privileges: %w", err)
	}
	if !super && (!createDB || !createRole) {
		return catalog.Errorf(catalog.CodeInvalid, "the role %q at %s needs CREATEDB and CREATEROLE (ALTER ROLE %s CREATEDB CREATEROLE)",
			cfg.User, redacted(dsn), cfg.User)
	}
	return nil
}

func redacted(dsn string) string {
	r, err := catalog.RedactDSN(dsn)
	if err != nil {
		return "(malformed dsn)"
	}
	return r
}
