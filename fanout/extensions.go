package fanout

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/tenantplane/tenantplane/catalog"
)

// checkExtensions refuses, before a run starts, migrations up to target that
// create an extension some server's admin role may not create: one that is
// not available there, or not trusted while the role is not a superuser (a
// managed PostgreSQL's role never is). Otherwise every canary would fail on
// it and halt the run. Servers that do not answer are left to the run, which
// fails their tenants with the reason.
func (s *Service) checkExtensions(ctx context.Context, target uint) error {
	uses, err := s.schema.Extensions(0, target)
	if err != nil || len(uses) == 0 {
		return err
	}
	names := make([]string, 0, len(uses))
	for _, u := range uses {
		names = append(names, u.Name)
	}
	servers, err := s.db.ListServers(ctx)
	if err != nil {
		return err
	}
	for _, srv := range servers {
		user, super, trusted, err := s.serverExtensions(ctx, srv.Name, names)
		if err != nil {
			continue
		}
		for _, u := range uses {
			ok, available := trusted[u.Name]
			switch {
			case !available:
				return catalog.Errorf(catalog.CodeInvalid, "migration %d creates extension %q, which server %q does not have (not in pg_available_extensions): install it there, or drop it from the migration",
					u.Version, u.Name, srv.Name)
			case !ok && !super:
				return catalog.Errorf(catalog.CodeInvalid, "migration %d creates extension %q, which only a superuser may create, and the role %q of server %q is not one (the extension is not trusted): "+
					"use a role that may create it, or a trusted extension (pg_available_extension_versions.trusted)",
					u.Version, u.Name, user, srv.Name)
			}
		}
	}
	return nil
}

// serverExtensions reads, as a server's admin role, who that role is,
// whether it is a superuser, and which of the named extensions the server
// has (and whether each is trusted).
func (s *Service) serverExtensions(ctx context.Context, serverName string, names []string) (user string, super bool, trusted map[string]bool, err error) {
	cfg, err := s.connConfig(ctx, serverName, "", "tenantplane-fanout")
	if err != nil {
		return "", false, nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return "", false, nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := conn.QueryRow(ctx, `SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user`).Scan(&user, &super); err != nil {
		return "", false, nil, err
	}
	rows, err := conn.Query(ctx, `SELECT name, bool_or(trusted) FROM pg_available_extension_versions WHERE name = ANY($1) GROUP BY name`, names)
	if err != nil {
		return "", false, nil, err
	}
	trusted = map[string]bool{}
	for rows.Next() {
		var name string
		var ok bool
		if err := rows.Scan(&name, &ok); err != nil {
			rows.Close()
			return "", false, nil, err
		}
		trusted[name] = ok
	}
	rows.Close()
	return user, super, trusted, rows.Err()
}
