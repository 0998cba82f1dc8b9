package console

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/tenantplane/tenantplane/billing"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/fanout"
	"github.com/tenantplane/tenantplane/internal/httpapi"
	"github.com/tenantplane/tenantplane/mover"
	"github.com/tenantplane/tenantplane/provisioner"
)

// Actor names the console in the audit log: every change made from it is
// recorded as the console's.
const Actor = "console"

// Prefix is where the console is served on the admin listener.
const Prefix = "/console/"

// contentSecurityPolicy allows nothing but the console's own files: no
// inline script or style, no other origin, no framing.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Config is what the console works with: the same parts the admin API calls.
type Config struct {
	AdminToken  string                   // required: the admin token signs an operator in
	Store       *catalog.Store           // required
	Provisioner *provisioner.Provisioner // required
	Fanout      *fanout.Service          // required
	Moves       *mover.Service           // required
	Billing     *billing.Service         // required
	// Orphans finds (remove false) or drops (remove true) what the
	// reconciler finds on the servers. Required.
	Orphans func(ctx context.Context, remove bool) ([]provisioner.Orphan, error)
	Logger  *slog.Logger // default slog.Default()
	// SessionTTL is how long a sign-in lasts. Default 8h.
	SessionTTL time.Duration
	// ServerTimeout bounds each live reading of a server on the Fleet page. Default 2s.
	ServerTimeout time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Console is the operator console: server-rendered pages over the admin
// API's parts, behind a session that the admin token opens.
type Console struct {
	cfg      Config
	pages    map[string]*template.Template
	sessions *sessions
	failures *lru.Cache[string, *limiter] // wrong tokens, by client address
	mux      *http.ServeMux
}

// New checks cfg, applies its defaults and parses the templates.
func New(cfg Config) (*Console, error) {
	switch {
	case cfg.AdminToken == "":
		return nil, errors.New("console: AdminToken is required")
	case cfg.Store == nil || cfg.Provisioner == nil || cfg.Fanout == nil || cfg.Moves == nil || cfg.Billing == nil || cfg.Orphans == nil:
		return nil, errors.New("console: Store, Provisioner, Fanout, Moves, Billing and Orphans are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = 8 * time.Hour
	}
	if cfg.ServerTimeout == 0 {
		cfg.ServerTimeout = 2 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	failures, err := lru.New[string, *limiter](4096)
	if err != nil {
		return nil, err
	}
	c := &Console{cfg: cfg, pages: pages, sessions: &sessions{store: cfg.Store, ttl: cfg.SessionTTL}, failures: failures}
	c.routes()
	return c, nil
}

// ServeHTTP serves the console under Prefix, with its security headers on
// every answer.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	c.mux.ServeHTTP(w, r)
}

func (c *Console) routes() {
	m := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	m.Handle("GET /console/static/", http.StripPrefix("/console/static/", http.FileServerFS(static)))
	m.HandleFunc("GET /console/signin", c.signInPage)
	m.HandleFunc("POST /console/signin", c.signIn)
	m.Handle("POST /console/signout", c.post(c.signOut))
	m.Handle("GET /console/{$}", c.get(c.fleetPage))
	m.Handle("GET /console/tenants", c.get(c.tenantsPage))
	m.Handle("GET /console/tenants/{slug}", c.get(c.tenantPage))
	m.Handle("GET /console/operations", c.get(c.operationsPage))
	m.Handle("GET /console/operations/runs/{id}", c.get(objectPage(c, "run", "run.html", "Migration run", c.runReport)))
	// The run page's progress section alone: the page asks for it every
	// second while the run is live, and stops once the answer says it is over.
	m.Handle("GET /console/operations/runs/{id}/progress", c.get(objectPage(c, "run", "run_progress.html", "", c.runReport)))
	m.Handle("GET /console/operations/billing/{id}", c.get(objectPage(c, "billing run", "billing_run.html", "Billing run", c.cfg.Billing.GetRun)))
	m.Handle("GET /console/operations/moves/{id}", c.get(objectPage(c, "move", "move.html", "Move", c.cfg.Moves.Get)))
	m.Handle("GET /console/operations/evacuations/{id}", c.get(objectPage(c, "evacuation", "evacuation.html", "Evacuation", c.cfg.Moves.GetEvacuation)))
	m.Handle("GET /console/billing", c.get(c.billingPage))
	m.Handle("GET /console/orphans", c.get(c.orphansPage))
	m.Handle("GET /console/act/{action}", c.get(c.confirmPage))
	m.Handle("POST /console/act/{action}", c.post(c.act))
	m.Handle("/console/", c.get(func(w http.ResponseWriter, r *http.Request, s session) {
		c.fail(w, r, s, catalog.Errorf(catalog.CodeNotFound, "no console page at %s", r.URL.Path))
	}))
	c.mux = m
}

// page is what every page template gets.
type page struct {
	Title   string
	Nav     string // the section: fleet, tenants, operations, billing, orphans
	CSRF    string
	Notice  string // what the last action did
	Error   string // the API's message of what went wrong
	Status  int
	Data    any
	Elapsed time.Duration
}

// render writes the page named name (a file under templates/) with status.
func (c *Console) render(w http.ResponseWriter, status int, name string, p page) {
	t, ok := c.pages[name]
	if !ok {
		http.Error(w, "console: no template "+name, http.StatusInternalServerError)
		return
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, name, p); err != nil {
		c.cfg.Logger.Error("console: render", "page", name, "error", err)
		http.Error(w, "console: the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// fail shows err as the API would word it, with the API's status.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, s session, err error) {
	status := httpapi.Status(err)
	if status >= 500 {
		c.cfg.Logger.ErrorContext(r.Context(), "console: request failed", "path", r.URL.Path, "error", err)
	}
	msg := catalog.MessageOf(err)
	if msg == "" {
		msg = http.StatusText(status) // an error with no message for callers: its cause is logged above
	}
	c.render(w, status, "error.html", page{Title: http.StatusText(status), CSRF: s.CSRF, Error: msg, Status: status})
}

// bounded is r's context with a deadline: every read a page makes is
// bounded, so a slow catalog answers an error, not a hung page.
func bounded(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), 20*time.Second)
}

func parsePages() (map[string]*template.Template, error) {
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, n := range names {
		name := n[len("templates/"):]
		if name == "layout.html" {
			continue
		}
		t, err := template.New(name).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", n)
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", name, err)
		}
		pages[name] = t
	}
	return pages, nil
}
