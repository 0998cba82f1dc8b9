package provisioner

import (
	"context"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/tenantplane/tenantplane/catalog"
)

// TenantSpec is what creating a tenant takes.
type TenantSpec struct {
	Slug   string `json:"slug"`
	Name   string `json:"name"`
	Plan   string `json:"plan"`
	Server string `json:"server,omitempty"` // "" places it on the server with the most free capacity
}

// CreateTenant records the tenant in state provisioning and queues the
// durable job that makes its role and database. It is idempotent by slug:
// the same spec again returns the existing tenant (created false); another
// spec for a taken slug is a CodeConflict error. Bad input is a CodeInvalid
// error and leaves nothing behind.
func (p *Provisioner) CreateTenant(ctx context.Context, spec TenantSpec, actor string) (catalog.Tenant, bool, error) {
	if err := catalog.ValidateSlug(spec.Slug); err != nil {
		return catalog.Tenant{}, false, err
	}
	if spec.Name == "" {
		spec.Name = spec.Slug
	}
	if _, err := p.store.GetPlan(ctx, spec.Plan); err != nil {
		return catalog.Tenant{}, false, err
	}
	t, created, err := p.store.CreateTenant(ctx, catalog.NewTenant{
		Slug: spec.Slug, Name: spec.Name, Plan: spec.Plan, Server: spec.Server, Actor: actor,
	}, func(ctx context.Context, tx pgx.Tx, t catalog.Tenant) error {
		_, err := p.river().InsertTx(ctx, tx, provisionArgs{TenantID: t.ID}, nil)
		return err
	})
	if err != nil {
		return catalog.Tenant{}, false, err
	}
	if created {
		p.logger.InfoContext(ctx, "tenant created", "tenant", t.Slug, "tenant_id", t.ID, "server", t.Server, "plan", t.Plan)
	}
	return t, created, nil
}

// WaitSettled waits until the tenant leaves provisioning (active or failed)
// or ctx ends, and returns it. It wakes on the catalog's change notifications
// (Config.Watcher), and reads the catalog once a second besides, in case one
// was missed.
func (p *Provisioner) WaitSettled(ctx context.Context, slug string) (catalog.Tenant, error) {
	var changes <-chan string
	if p.cfg.Watcher != nil {
		var unsubscribe func()
		changes, unsubscribe = p.cfg.Watcher.Subscribe()
		defer unsubscribe()
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		t, err := p.store.GetTenant(ctx, slug)
		if err != nil || t.State != catalog.TenantProvisioning {
			return t, err
		}
	wait:
		for {
			select {
			case <-ctx.Done():
				return t, catalog.WrapError(catalog.CodeUnavailable, ctx.Err(), "tenant %q is still provisioning", slug)
			case <-tick.C:
				break wait
			case id := <-changes:
				if id == t.ID || id == "" {
					break wait
				}
			}
		}
	}
}

// Suspend stops an active tenant's access to the tenant API; its data stays.
//
// Suspend, Resume, Delete, Restore and RotateCredentials refuse a tenant
// with an open move (a catalog.MovingError, 409 naming the move), checked
// under the row lock of the change itself. Issuing and revoking API keys go
// on during a move: keys live in the catalog only, and a leaked key must be
// revocable at once.
func (p *Provisioner) Suspend(ctx context.Context, slug, actor, reason string) (catalog.Tenant, error) {
	return p.transition(ctx, slug, catalog.Transition{
		From: []catalog.TenantState{catalog.TenantActive}, To: catalog.TenantSuspended,
		Actor: actor, Action: "tenant.suspended", Reason: reason, RefuseMoving: true,
	})
}

// Resume gives a suspended tenant its access back.
func (p *Provisioner) Resume(ctx context.Context, slug, actor, reason string) (catalog.Tenant, error) {
	return p.transition(ctx, slug, catalog.Transition{
		From: []catalog.TenantState{catalog.TenantSuspended}, To: catalog.TenantActive,
		Actor: actor, Action: "tenant.resumed", Reason: reason, RefuseMoving: true,
	})
}

// RotateCredentials gives an active or suspended tenant's role a new
// password, on its server and in the catalog, and announces the change:
// routers open new pools with it while requests already running finish on
// the old ones. Sessions already open are not ended.
func (p *Provisioner) RotateCredentials(ctx context.Context, slug, actor, reason string) (catalog.Tenant, error) {
	t, err := p.store.GetTenant(ctx, slug)
	if err != nil {
		return catalog.Tenant{}, err
	}
	if t.PoolID != 0 {
		return catalog.Tenant{}, catalog.Errorf(catalog.CodeConflict,
			"tenant %q is pooled: it has no database role of its own (its pool database's credentials are the control plane's); rotate its API keys instead", slug)
	}
	out, err := p.store.RotateTenantCredentials(ctx, t.ID, actor, reason, func(ctx context.Context, role, password string) error {
		pool, err := p.admin(ctx, t.ServerID, t.Server)
		if err == nil {
			_, err = pool.Exec(ctx, "ALTER ROLE "+ident(role)+" PASSWORD "+literal(scramVerifier(password)))
		}
		if err != nil {
			return catalog.WrapError(catalog.CodeUnavailable, err, "server %q did not take tenant %q's new password; nothing changed", t.Server, slug)
		}
		return nil
	})
	if err == nil {
		p.logger.InfoContext(ctx, "credentials rotated", "tenant", slug, "actor", actor)
	}
	return out, err
}

// Delete soft-deletes a tenant: state deleting at once (the tenant API stops
// answering for it), its database and role dropped after the grace period
// unless it is restored first.
func (p *Provisioner) Delete(ctx context.Context, slug, actor, reason string) (catalog.Tenant, error) {
	t, err := p.store.GetTenant(ctx, slug)
	if err != nil {
		return catalog.Tenant{}, err
	}
	after := time.Now().Add(max(p.cfg.DeleteGrace, 0)) // negative: no grace
	var out catalog.Tenant
	err = p.store.InTx(ctx, func(tx pgx.Tx) error {
		var err error
		out, err = p.store.TransitionTenantTx(ctx, tx, catalog.Transition{
			TenantID: t.ID, To: catalog.TenantDeleting, DeleteAfter: &after, Actor: actor, Action: "tenant.deleted", Reason: reason, RefuseMoving: true,
			From: []catalog.TenantState{catalog.TenantActive, catalog.TenantSuspended, catalog.TenantFailed, catalog.TenantProvisioning},
		})
		if err != nil {
			return err
		}
		_, err = p.river().InsertTx(ctx, tx, dropArgs{TenantID: t.ID}, &river.InsertOpts{ScheduledAt: after})
		return err
	})
	return out, err
}

// Restore brings a tenant back from deleting, within its grace period, to the
// state it was deleted from.
func (p *Provisioner) Restore(ctx context.Context, slug, actor, reason string) (catalog.Tenant, error) {
	t, err := p.store.GetTenant(ctx, slug)
	if err != nil {
		return catalog.Tenant{}, err
	}
	to, lastError := catalog.TenantActive, ""
	events, err := p.store.ListAudit(ctx, catalog.AuditFilter{TenantID: t.ID, Action: "tenant.deleted", Newest: true, Limit: 1})
	if err != nil {
		return catalog.Tenant{}, err
	}
	if len(events) == 1 && events[0].FromState == string(catalog.TenantSuspended) {
		to = catalog.TenantSuspended
	}
	if len(events) == 1 && (events[0].FromState == string(catalog.TenantFailed) || events[0].FromState == string(catalog.TenantProvisioning)) {
		// It never became active: it comes back failed, for the operator to retry.
		to, lastError = catalog.TenantFailed, "restored before provisioning finished: retry it"
	}
	return p.transition(ctx, slug, catalog.Transition{
		From: []catalog.TenantState{catalog.TenantDeleting}, To: to, Actor: actor, Action: "tenant.restored", Reason: reason,
		LastError: lastError, RefuseMoving: true,
	})
}

// Retry queues provisioning again for a failed tenant. The steps an earlier
// attempt finished are found done and skipped.
func (p *Provisioner) Retry(ctx context.Context, slug, actor, reason string) (catalog.Tenant, error) {
	t, err := p.store.GetTenant(ctx, slug)
	if err != nil {
		return catalog.Tenant{}, err
	}
	var out catalog.Tenant
	err = p.store.InTx(ctx, func(tx pgx.Tx) error {
		var err error
		out, err = p.store.TransitionTenantTx(ctx, tx, catalog.Transition{
			TenantID: t.ID, From: []catalog.TenantState{catalog.TenantFailed}, To: catalog.TenantProvisioning,
			Actor: actor, Action: "tenant.retried", Reason: reason,
		})
		if err != nil {
			return err
		}
		_, err = p.river().InsertTx(ctx, tx, provisionArgs{TenantID: t.ID}, nil)
		return err
	})
	return out, err
}

func (p *Provisioner) transition(ctx context.Context, slug string, tr catalog.Transition) (catalog.Tenant, error) {
	t, err := p.store.GetTenant(ctx, slug)
	if err != nil {
		return catalog.Tenant{}, err
	}
	tr.TenantID = t.ID
	out, err := p.store.TransitionTenant(ctx, tr)
	if err == nil {
		p.logger.InfoContext(ctx, strings.TrimPrefix(tr.Action, "tenant."), "tenant", slug, "from", t.State, "to", out.State, "actor", tr.Actor)
	}
	return out, err
}
