package console

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/fanout"
	"github.com/tenantplane/tenantplane/mover"
	"github.com/tenantplane/tenantplane/provisioner"
)

// An action is a change an operator makes from the console. Each is asked
// for on a page (a link or a GET form), shown on a confirmation page that
// says what it will do, and done by that page's POST form, which carries the
// CSRF token. The parts record it in the audit log with the actor console.
type action struct {
	Title  string // the confirmation page's question
	Button string
	Done   string // the notice after it
	Danger bool
	// Fields are the form values it takes, carried from the request to the
	// confirmation to the change.
	Fields []string
	Do     func(ctx context.Context, c *Console, v url.Values) (redirect string, err error)
}

// lifecycleAction is a tenant transition through the provisioner.
func lifecycleAction(title, button, done string, danger bool, op func(*provisioner.Provisioner) func(context.Context, string, string, string) (catalog.Tenant, error)) *action {
	return &action{Title: title, Button: button, Done: done, Danger: danger, Fields: []string{"slug", "reason"},
		Do: func(ctx context.Context, c *Console, v url.Values) (string, error) {
			t, err := op(c.cfg.Provisioner)(ctx, v.Get("slug"), Actor, v.Get("reason"))
			if err != nil {
				return "", err
			}
			return tenantURL(t.Slug), nil
		}}
}

func tenantURL(slug string) string { return Prefix + "tenants/" + url.PathEscape(slug) }

// idAction changes a numbered operation through op, then shows its page,
// Prefix+"operations/"+kind+"/{id}".
func idAction[T any](title, button, done string, danger bool, kind string, op func(ctx context.Context, c *Console, id int64) (T, error)) *action {
	return &action{Title: title, Button: button, Done: done, Danger: danger, Fields: []string{"id"},
		Do: func(ctx context.Context, c *Console, v url.Values) (string, error) {
			id, err := formID(v)
			if err != nil {
				return "", err
			}
			if _, err := op(ctx, c, id); err != nil {
				return "", err
			}
			return fmt.Sprintf("%soperations/%s/%d", Prefix, kind, id), nil
		}}
}

// runAction changes a migration run.
func runAction(title, button, done string, danger bool, a fanout.RunAction) *action {
	return idAction(title, button, done, danger, "runs", func(ctx context.Context, c *Console, id int64) (fanout.MigrationRun, error) {
		return c.cfg.Fanout.ChangeRun(ctx, id, a, Actor)
	})
}

// evacAction changes an evacuation.
func evacAction(title, button, done string, op func(*mover.Service) func(context.Context, int64, string) (mover.Evacuation, error)) *action {
	return idAction(title, button, done, true, "evacuations", func(ctx context.Context, c *Console, id int64) (mover.Evacuation, error) {
		return op(c.cfg.Moves)(ctx, id, Actor)
	})
}

// moveAction changes a move.
func moveAction(title, button, done string, op func(*mover.Service) func(context.Context, int64, string) (mover.Move, error)) *action {
	return idAction(title, button, done, true, "moves", func(ctx context.Context, c *Console, id int64) (mover.Move, error) {
		return op(c.cfg.Moves)(ctx, id, Actor)
	})
}

func formID(v url.Values) (int64, error) {
	id, err := strconv.ParseInt(v.Get("id"), 10, 64)
	if err != nil || id < 1 {
		return 0, catalog.Errorf(catalog.CodeNotFound, "%q is not an id of ours", v.Get("id"))
	}
	return id, nil
}

// optionalInt reads a whole-number form value; "" is nil.
func optionalInt(v url.Values, name string) (*int, error) {
	raw := strings.TrimSpace(v.Get(name))
	if raw == "" {
		return nil, nil
	}
	n, err := strconv.Atoi(raw)
	if err != nil {
		return nil, catalog.Errorf(catalog.CodeInvalid, "%s must be a whole number", name)
	}
	return &n, nil
}

var actions = map[string]*action{
	"suspend": lifecycleAction("Suspend this tenant? Its API calls will be refused (403) until it is resumed; its data stays.", "Suspend", "Suspended.", true,
		func(p *provisioner.Provisioner) func(context.Context, string, string, string) (catalog.Tenant, error) {
			return p.Suspend
		}),
	"resume": lifecycleAction("Resume this tenant? Its API calls will be served again.", "Resume", "Resumed.", false,
		func(p *provisioner.Provisioner) func(context.Context, string, string, string) (catalog.Tenant, error) {
			return p.Resume
		}),
	"rotate": lifecycleAction("Rotate this tenant's database credentials? Its pools reconnect with the new password.", "Rotate credentials", "Credentials rotated.", false,
		func(p *provisioner.Provisioner) func(context.Context, string, string, string) (catalog.Tenant, error) {
			return p.RotateCredentials
		}),
	"delete": lifecycleAction("Delete this tenant? It stops being served at once; its database is dropped after the grace period, until then it can be restored.", "Delete", "Deleted: it can be restored during the grace period.", true,
		func(p *provisioner.Provisioner) func(context.Context, string, string, string) (catalog.Tenant, error) {
			return p.Delete
		}),
	"restore": lifecycleAction("Restore this deleted tenant?", "Restore", "Restored.", false,
		func(p *provisioner.Provisioner) func(context.Context, string, string, string) (catalog.Tenant, error) {
			return p.Restore
		}),
	"retry": lifecycleAction("Retry this tenant's failed step?", "Retry", "Retrying.", false,
		func(p *provisioner.Provisioner) func(context.Context, string, string, string) (catalog.Tenant, error) {
			return p.Retry
		}),
	"move": {Title: "Move this tenant to another server? It stays online; its writes pause briefly at the switch.", Button: "Move", Done: "Move started.",
		Danger: true, Fields: []string{"slug", "to", "mode"},
		Do: func(ctx context.Context, c *Console, v url.Values) (string, error) {
			if v.Get("to") == "" {
				return "", catalog.Errorf(catalog.CodeInvalid, "to is required: the server to move the tenant to")
			}
			m, err := c.cfg.Moves.StartMove(ctx, v.Get("slug"), mover.MoveSpec{To: v.Get("to"), Mode: v.Get("mode")}, Actor)
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("%soperations/moves/%d", Prefix, m.ID), nil
		}},
	"promote": {Title: "Promote this pooled tenant to a database of its own? Its rows move online where the servers allow it; its writes pause briefly at the switch.",
		Button: "Promote", Done: "Promotion started.", Fields: []string{"slug", "to"},
		Do: func(ctx context.Context, c *Console, v url.Values) (string, error) {
			m, err := c.cfg.Moves.StartPromotion(ctx, v.Get("slug"), mover.PromoteSpec{To: v.Get("to")}, Actor)
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("%soperations/moves/%d", Prefix, m.ID), nil
		}},
	"demote": {Title: "Demote this tenant into a shared pool database? Its rows move there; its own database is dropped after the grace period.",
		Button: "Demote", Done: "Demotion started.", Danger: true, Fields: []string{"slug"},
		Do: func(ctx context.Context, c *Console, v url.Values) (string, error) {
			m, err := c.cfg.Moves.StartDemotion(ctx, v.Get("slug"), mover.DemoteSpec{}, Actor)
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("%soperations/moves/%d", Prefix, m.ID), nil
		}},
	"plan": {Title: "Give this tenant another plan? One of its tier applies at once; one of the other tier moves its rows (a promotion or demotion), and the plan changes when that move switches.",
		Button: "Change the plan", Done: "Plan changed, or the move that changes it started.", Fields: []string{"slug", "plan"},
		Do: func(ctx context.Context, c *Console, v url.Values) (string, error) {
			t, m, err := c.cfg.Moves.ChangePlan(ctx, v.Get("slug"), v.Get("plan"), Actor)
			if err != nil {
				return "", err
			}
			if m != nil {
				return fmt.Sprintf("%soperations/moves/%d", Prefix, m.ID), nil
			}
			return tenantURL(t.Slug), nil
		}},
	"revoke-key": {Title: "Revoke this API key? Requests with it are refused within a second.", Button: "Revoke", Done: "Key revoked.",
		Danger: true, Fields: []string{"slug", "key"},
		Do: func(ctx context.Context, c *Console, v url.Values) (string, error) {
			t, err := c.cfg.Store.GetTenant(ctx, v.Get("slug"))
			if err != nil {
				return "", err
			}
			if err := c.cfg.Store.RevokeAPIKey(ctx, t.ID, v.Get("key"), Actor); err != nil {
				return "", err
			}
			return tenantURL(t.Slug), nil
		}},
	"start-run": {Title: "Start a migration run over every active and suspended tenant?", Button: "Start the run", Done: "Run started.",
		Fields: []string{"target", "concurrency", "canary", "max_failures"},
		Do: func(ctx context.Context, c *Console, v url.Values) (string, error) {
			var spec fanout.RunSpec
			target, err := optionalInt(v, "target")
			if err != nil {
				return "", err
			}
			if target != nil {
				t := int64(*target)
				spec.TargetVersion = &t
			}
			for name, dst := range map[string]*int{"concurrency": &spec.Concurrency, "max_failures": &spec.MaxFailures} {
				n, err := optionalInt(v, name)
				if err != nil {
					return "", err
				}
				if n != nil {
					*dst = *n
				}
			}
			if spec.Canary, err = optionalInt(v, "canary"); err != nil {
				return "", err
			}
			run, err := c.cfg.Fanout.StartRun(ctx, spec, Actor)
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("%soperations/runs/%d", Prefix, run.ID), nil
		}},
	"pause-run":  runAction("Pause this migration run? Tenants being migrated finish; no others start.", "Pause", "Paused.", false, fanout.RunPause),
	"resume-run": runAction("Resume this migration run?", "Resume", "Resumed.", false, fanout.RunResume),
	"cancel-run": runAction("Cancel this migration run? Tenants not started are skipped; it cannot be resumed.", "Cancel the run", "Cancelled.", true, fanout.RunCancel),
	"start-billing": {Title: "Start the billing run of this period? Each billable tenant is invoiced once, however often it runs.", Button: "Start billing", Done: "Billing run started.",
		Danger: true, Fields: []string{"period"},
		Do: func(ctx context.Context, c *Console, v url.Values) (string, error) {
			p, err := catalog.ParsePeriod(strings.TrimSpace(v.Get("period")))
			if err != nil {
				return "", err
			}
			run, _, err := c.cfg.Billing.StartRun(ctx, p, Actor)
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("%soperations/billing/%d", Prefix, run.ID), nil
		}},
	"cancel-move": moveAction("Cancel this move? The tenant stays where it is.", "Cancel the move", "Cancel requested.",
		func(m *mover.Service) func(context.Context, int64, string) (mover.Move, error) { return m.Cancel }),
	"revert-move": moveAction("Revert this move? The tenant moves back to its source, kept for the grace period.", "Revert", "Revert started.",
		func(m *mover.Service) func(context.Context, int64, string) (mover.Move, error) { return m.Revert }),
	"pause-evacuation": evacAction("Pause this evacuation? Moves under way finish; no others start.", "Pause", "Paused.",
		func(m *mover.Service) func(context.Context, int64, string) (mover.Evacuation, error) {
			return m.PauseEvacuation
		}),
	"resume-evacuation": evacAction("Resume this evacuation?", "Resume", "Resumed.",
		func(m *mover.Service) func(context.Context, int64, string) (mover.Evacuation, error) {
			return m.ResumeEvacuation
		}),
	"cancel-evacuation": evacAction("Cancel this evacuation? Moves under way finish; the rest are skipped.", "Cancel the evacuation", "Cancelled.",
		func(m *mover.Service) func(context.Context, int64, string) (mover.Evacuation, error) {
			return m.CancelEvacuation
		}),
	"remove-orphans": {Title: "Remove every orphan listed? The databases, roles and replication objects are dropped for good.", Button: "Remove them", Done: "Orphans removed.",
		Danger: true,
		Do: func(ctx context.Context, c *Console, _ url.Values) (string, error) {
			found, err := c.orphans(ctx, true)
			if err != nil {
				return "", err
			}
			// The reconciler records nothing itself: the removal is recorded here.
			var gone []string
			for _, o := range found {
				if o.Gone {
					gone = append(gone, o.Server+": "+o.Kind+" "+o.Name)
				}
			}
			c.audit(ctx, catalog.AuditEvent{Action: "orphans.removed", Details: map[string]any{"removed": gone}})
			return Prefix + "orphans", nil
		}},
}

// confirmData is a confirmation page's.
type confirmData struct {
	Name   string
	Action *action
	Values []field // what the action will be done with
	Back   string
}

type field struct{ Name, Value string }

func (c *Console) lookupAction(r *http.Request) (string, *action, error) {
	name := r.PathValue("action")
	a, ok := actions[name]
	if !ok {
		return "", nil, catalog.Errorf(catalog.CodeNotFound, "no console action %q", name)
	}
	return name, a, nil
}

// confirmPage asks before an action; it changes nothing.
func (c *Console) confirmPage(w http.ResponseWriter, r *http.Request, s session) {
	name, a, err := c.lookupAction(r)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	d := confirmData{Name: name, Action: a, Back: r.Referer()}
	for _, f := range a.Fields {
		d.Values = append(d.Values, field{f, r.URL.Query().Get(f)})
	}
	if u, err := url.Parse(d.Back); err != nil || u.Host != r.Host || !strings.HasPrefix(u.Path, Prefix) {
		d.Back = Prefix
	}
	c.render(w, http.StatusOK, "confirm.html", page{Title: a.Button, CSRF: s.CSRF, Data: d})
}

// act does a confirmed action, then shows where it went.
func (c *Console) act(w http.ResponseWriter, r *http.Request, s session) {
	name, a, err := c.lookupAction(r)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	v := url.Values{}
	for _, f := range a.Fields {
		v.Set(f, r.PostFormValue(f))
	}
	ctx, cancel := bounded(r)
	defer cancel()
	to, err := a.Do(ctx, c, v)
	if err != nil {
		c.cfg.Logger.InfoContext(r.Context(), "console: action refused", "action", name, "error", err)
		c.fail(w, r, s, err)
		return
	}
	c.cfg.Logger.InfoContext(r.Context(), "console: action done", "action", name, "tenant", v.Get("slug"), "id", v.Get("id"))
	sep := "?"
	if strings.Contains(to, "?") {
		sep = "&"
	}
	http.Redirect(w, r, to+sep+"done="+url.QueryEscape(name), http.StatusSeeOther)
}
