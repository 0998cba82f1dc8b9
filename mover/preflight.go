package mover

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Apply is how the online mode applies the source's changes on the target.
type Apply string

const (
	// ApplySubscription: the target server's own subscription pulls from a
	// publication on the source. Needs the target role to be a superuser,
	// or on PostgreSQL 16 and later a member of pg_create_subscription.
	ApplySubscription Apply = "native subscription"
	// ApplyStream: tenantplane reads the source's pgoutput stream itself
	// (jackc/pglogrepl) and applies it on the target by primary key, for a
	// target role that may not create subscriptions (a managed server's).
	ApplyStream Apply = "pgoutput stream applied by tenantplane"
)

// ErrOnlineUnavailable matches (errors.Is) OnlineCheck.Err when the online
// mode cannot run.
var ErrOnlineUnavailable = errors.New("the online mode cannot run")

// OnlineCheck says whether the online mode (logical replication from source
// to target) can run, and how.
type OnlineCheck struct {
	// Possible is true when nothing in Refusals stands in the way.
	Possible bool
	// Refusals say why not, each naming the setting or privilege to change.
	Refusals []string
	// Apply is how the target would apply the changes (also when not
	// Possible: what it would be once the refusals are dealt with), and
	// ApplyReason why that one.
	Apply       Apply
	ApplyReason string
	// SourceRole and TargetRole are the roles checked, for messages.
	SourceRole, TargetRole string
	// UnboundedSlotWAL is true when the source's max_slot_wal_keep_size is
	// -1: a slot whose move stalls or is forgotten keeps WAL there until the
	// disk is full. Not a refusal: the move cannot change it (it takes a
	// superuser or the server's configuration), so it says so in its
	// mode_reason, and aborts should the slot lose its WAL anyway.
	UnboundedSlotWAL bool
}

// Err is nil when the online mode can run, or an error (errors.Is
// ErrOnlineUnavailable) that lists the refusals.
func (c OnlineCheck) Err() error {
	if c.Possible {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrOnlineUnavailable, strings.Join(c.Refusals, "; "))
}

// CheckOnline says whether the online mode can run from source to target
// and, if not, why. source is the tenant's database on the source server and
// target any database on the target server, each reached as its server's
// admin role (the roles the move would use). It checks that the source has
// wal_level = logical and a free replication slot and WAL sender, that the
// source role may create a replication slot (REPLICATION, a superuser, or
// RDS's rds_replication), and that every table has a primary key or replica
// identity (a publication refuses a table's UPDATE and DELETE otherwise:
// publishing it would break the tenant's writes on the source). On the target
// it picks the Apply. It cannot see pg_hba.conf: a replication connection
// that the source refuses there fails when the move starts.
func CheckOnline(ctx context.Context, source, target Querier) (_ OnlineCheck, err error) {
	defer wrap(&err, "CheckOnline")
	var c OnlineCheck
	var walLevel string
	var super, replication, rdsReplication bool
	var freeSlots, freeSenders int
	var keepSize string
	err = source.QueryRow(ctx, `SELECT current_setting('wal_level'), coalesce(current_setting('max_slot_wal_keep_size', true), '-1'),
			current_user, r.rolsuper, r.rolreplication,
			coalesce(pg_has_role(current_user, (SELECT oid FROM pg_roles WHERE rolname = 'rds_replication'), 'USAGE'), false),
			current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots),
			current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_stat_replication)
		FROM pg_roles r WHERE r.rolname = current_user`).
		Scan(&walLevel, &keepSize, &c.SourceRole, &super, &replication, &rdsReplication, &freeSlots, &freeSenders)
	if err != nil {
		return OnlineCheck{}, fmt.Errorf("source: %w", err)
	}
	c.UnboundedSlotWAL = keepSize == "-1"
	if walLevel != "logical" {
		c.Refusals = append(c.Refusals, fmt.Sprintf("the source has wal_level = %s: logical replication needs wal_level = logical "+
			"(a restart; on RDS or Aurora set rds.logical_replication = 1, on Cloud SQL cloudsql.logical_decoding = on)", walLevel))
	}
	if !super && !replication && !rdsReplication {
		c.Refusals = append(c.Refusals, fmt.Sprintf("the source role %s has neither REPLICATION nor superuser, so it cannot create a replication slot "+
			"(as a superuser: ALTER ROLE %s REPLICATION; on RDS: GRANT rds_replication TO %s)", c.SourceRole, ident(c.SourceRole), ident(c.SourceRole)))
	}
	if freeSlots <= 0 {
		c.Refusals = append(c.Refusals, "the source has no free replication slot: raise max_replication_slots, or drop an unused slot (pg_replication_slots)")
	}
	if freeSenders <= 0 {
		c.Refusals = append(c.Refusals, "the source has no free WAL sender: raise max_wal_senders")
	}
	noIdentity, err := tablesWithoutIdentity(ctx, source)
	if err != nil {
		return OnlineCheck{}, fmt.Errorf("source: %w", err)
	}
	if len(noIdentity) > 0 {
		c.Refusals = append(c.Refusals, fmt.Sprintf("tables without a primary key or replica identity: %s (publishing them would refuse their UPDATE and DELETE on the source; "+
			"add a primary key, or ALTER TABLE ... REPLICA IDENTITY FULL)", strings.Join(noIdentity, ", ")))
	}

	var targetSuper, createSubscription bool
	var version int
	err = target.QueryRow(ctx, `SELECT current_user, r.rolsuper, current_setting('server_version_num')::int,
			coalesce(pg_has_role(current_user, (SELECT oid FROM pg_roles WHERE rolname = 'pg_create_subscription'), 'USAGE'), false)
		FROM pg_roles r WHERE r.rolname = current_user`).Scan(&c.TargetRole, &targetSuper, &version, &createSubscription)
	if err != nil {
		return OnlineCheck{}, fmt.Errorf("target: %w", err)
	}
	switch {
	case targetSuper:
		c.Apply, c.ApplyReason = ApplySubscription, fmt.Sprintf("the target role %s is a superuser", c.TargetRole)
	case createSubscription:
		c.Apply, c.ApplyReason = ApplySubscription, fmt.Sprintf("the target role %s is a member of pg_create_subscription", c.TargetRole)
	case version >= 160000:
		c.Apply, c.ApplyReason = ApplyStream, fmt.Sprintf("the target role %s may not create a subscription (neither a superuser nor a member of pg_create_subscription)", c.TargetRole)
	default:
		c.Apply, c.ApplyReason = ApplyStream, fmt.Sprintf("the target role %s may not create a subscription (before PostgreSQL 16 only a superuser may, and the target runs %d)", c.TargetRole, version/10000)
	}
	c.Possible = len(c.Refusals) == 0
	return c, nil
}

// tablesWithoutIdentity lists the tables (as Tables finds them) that have no
// primary key and a replica identity of DEFAULT or NOTHING.
func tablesWithoutIdentity(ctx context.Context, q Querier) ([]string, error) {
	rows, err := q.Query(ctx, `
		SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname <> $2
			AND NOT EXISTS (SELECT FROM pg_depend d
				WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
			AND (c.relreplident = 'n' OR (c.relreplident = 'd'
				AND NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))
		ORDER BY c.relname`, Schema, migrationsTable)
	if err != nil {
		return nil, err
	}
	var names []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return nil, err
		}
		names = append(names, name)
	}
	return names, rows.Err()
}
