package billing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	stripe "github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/startstop"
)

// Actor is who billing's changes are recorded as in the audit log.
const Actor = "billing"

// Suspender suspends and resumes tenants: the provisioner's lifecycle, wired
// by controlplane. Billing suspends a tenant unpaid past the dunning grace
// and resumes it once it has paid.
type Suspender interface {
	Suspend(ctx context.Context, slug, actor, reason string) (catalog.Tenant, error)
	Resume(ctx context.Context, slug, actor, reason string) (catalog.Tenant, error)
}

// Config configures a Service. As in every tenantplane Config, a zero field
// takes its documented default, and a setting that can be turned off is off
// when negative.
type Config struct {
	// Logger receives structured logs. Default slog.Default().
	Logger *slog.Logger
	// Registerer, when set, gets billing's metrics.
	Registerer prometheus.Registerer

	// StripeKey enables invoicing through Stripe (STRIPE_API_KEY). Without
	// it, runs compute and store invoices, marked not sent.
	StripeKey string
	// StripeAPIBase points the Stripe client elsewhere, e.g. at stripe-mock
	// (STRIPE_API_BASE). Default Stripe's API.
	StripeAPIBase string
	// StripeHTTPClient sends the Stripe requests. Default: a client with a
	// StripeTimeout timeout and Concurrency idle connections.
	StripeHTTPClient *http.Client
	// StripeTimeout bounds one attempt of one Stripe request
	// (TENANTPLANE_STRIPE_TIMEOUT), so a Stripe that hangs is an error, not
	// a stuck step. Default 10s.
	StripeTimeout time.Duration
	// StripeRetries is how often the Stripe client retries a request that
	// failed in transit or with a 5xx, with the same idempotency key.
	// Default 2; negative: none. A request that never answers therefore
	// takes at most StripeCallLimit. (controlplane passes 1.)
	StripeRetries int
	// AutomaticTax has Stripe compute the tax of every invoice from the
	// customer's billing address (TENANTPLANE_STRIPE_TAX=automatic):
	// invoices are created with automatic_tax[enabled]=true, every item
	// with tax_behavior TaxBehavior, and the tax Stripe computed is stored
	// on the invoice. Default off.
	AutomaticTax bool
	// WebhookSecret checks Stripe webhook signatures (STRIPE_WEBHOOK_SECRET).
	// Without it, webhooks are refused.
	WebhookSecret string
	// WebhookTolerance is how old a signed webhook may be. Default 5 minutes.
	WebhookTolerance time.Duration

	// Concurrency is how many invoices are sent to Stripe at once. Default 16.
	Concurrency int
	// ComputeBatch is how many tenants are priced per catalog transaction. Default 500.
	ComputeBatch int
	// MaxConsecutiveFailures stops a run's sending after this many invoices
	// failed in a row (Stripe is down, or the key is wrong). Default 50.
	MaxConsecutiveFailures int
	// PollInterval is how often a process looks for runs to do: new ones, or
	// ones a dead process left. Default 5s.
	PollInterval time.Duration

	// BillingGrace is how long after a period ends its run starts by itself,
	// for late usage to arrive (TENANTPLANE_BILLING_GRACE). Default 24h;
	// negative: no schedule, runs start only through StartRun.
	BillingGrace time.Duration
	// ScheduleInterval is how often the schedule looks. Default 1 minute.
	ScheduleInterval time.Duration

	// Suspender suspends tenants unpaid past DunningGrace and resumes them
	// once paid. Without it there is no dunning.
	Suspender Suspender
	// DunningGrace is how long a sent invoice may stay unpaid before its
	// tenant is suspended (TENANTPLANE_DUNNING_GRACE). Default 14 days;
	// negative: no dunning, as without a Suspender.
	DunningGrace time.Duration
	// DunningInterval is how often unpaid invoices are looked at. Default 1 minute.
	DunningInterval time.Duration

	// StorageInterval is how often the collector samples each tenant
	// database's size (TENANTPLANE_STORAGE_INTERVAL). Default 1h; negative:
	// no collector (CollectStorage still samples when called).
	StorageInterval time.Duration
	// ConnectTimeout bounds the collector's connection to each server. Default 10s.
	ConnectTimeout time.Duration

	// Now tells the time. Default time.Now; tests move it.
	Now func() time.Time
}

// Service is billing: usage events, runs, previews, webhooks, dunning and
// the storage collector. Its methods are safe for concurrent use.
type Service struct {
	catalog *catalog.Store
	store   *store // billing's own tables
	cfg     Config
	logger  *slog.Logger
	stripe  *client.API // nil: runs do not send
	metrics *metrics

	wake chan struct{} // a run was created: look now

	background startstop.Loop // runs the loops below, each every its interval
}

// New returns a billing Service over the catalog. Start runs its background work.
func New(cat *catalog.Store, cfg Config) (*Service, error) {
	if cat == nil {
		return nil, errors.New("billing: a catalog store is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.StripeRetries == 0 {
		cfg.StripeRetries = 2
	}
	if cfg.WebhookTolerance == 0 {
		cfg.WebhookTolerance = 5 * time.Minute
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 16
	}
	if cfg.ComputeBatch == 0 {
		cfg.ComputeBatch = 500
	}
	if cfg.MaxConsecutiveFailures == 0 {
		cfg.MaxConsecutiveFailures = 50
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 5 * time.Second
	}
	if cfg.BillingGrace == 0 {
		cfg.BillingGrace = 24 * time.Hour
	}
	if cfg.ScheduleInterval == 0 {
		cfg.ScheduleInterval = time.Minute
	}
	if cfg.DunningGrace == 0 {
		cfg.DunningGrace = 14 * 24 * time.Hour
	}
	if cfg.DunningInterval == 0 {
		cfg.DunningInterval = time.Minute
	}
	if cfg.StorageInterval == 0 {
		cfg.StorageInterval = time.Hour
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.StripeTimeout == 0 {
		cfg.StripeTimeout = 10 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	switch {
	case cfg.Concurrency < 1 || cfg.ComputeBatch < 1:
		return nil, errors.New("billing: Concurrency and ComputeBatch must be at least 1")
	case cfg.StripeAPIBase != "" && cfg.StripeKey == "":
		return nil, errors.New("billing: StripeAPIBase is set without StripeKey; set both (STRIPE_API_KEY), or neither to bill without Stripe")
	}
	s := &Service{catalog: cat, store: newStore(cat), cfg: cfg, logger: cfg.Logger.With("component", "billing"), wake: make(chan struct{}, 1),
		metrics: newMetrics(cfg.Registerer)}
	if cfg.StripeKey != "" {
		s.stripe = newStripeClient(cfg, s.logger)
	}
	return s, nil
}

// StripeCallLimit is the longest one Stripe request takes when Stripe does
// not answer: every attempt times out, with stripe-go's backoff between
// them (at most 5s each, half a second for a first retry).
func StripeCallLimit(timeout time.Duration, retries int) time.Duration {
	retries = max(retries, 0)
	return time.Duration(retries+1)*timeout + time.Duration(retries)*stripeMaxBackoff
}

// stripeMaxBackoff is stripe-go's longest wait between two attempts.
const stripeMaxBackoff = 5 * time.Second

// SendsToStripe reports whether runs send invoices to Stripe.
func (s *Service) SendsToStripe() bool { return s.stripe != nil }

func newStripeClient(cfg Config, logger *slog.Logger) *client.API {
	hc := cfg.StripeHTTPClient
	if hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = cfg.Concurrency
		hc = &http.Client{Timeout: cfg.StripeTimeout, Transport: tr}
	}
	retries := int64(max(cfg.StripeRetries, 0))
	enableTelemetry := false
	bc := &stripe.BackendConfig{HTTPClient: hc, MaxNetworkRetries: &retries, LeveledLogger: stripeLogger{logger, cfg.StripeKey},
		EnableTelemetry: &enableTelemetry}
	if cfg.StripeAPIBase != "" {
		bc.URL = stripe.String(cfg.StripeAPIBase)
	}
	b := stripe.GetBackendWithConfig(stripe.APIBackend, bc)
	return client.New(cfg.StripeKey, &stripe.Backends{API: b, Connect: b, Uploads: b})
}

// Start runs the background work until Stop: runs (new ones, and those a
// dead process left), the schedule, dunning and the storage collector. A
// Service that runs refuses a second Start with startstop.ErrStarted.
func (s *Service) Start(ctx context.Context) error {
	if err := s.background.Start(ctx, s.runLoops); err != nil {
		return fmt.Errorf("billing: %w", err)
	}
	return nil
}

// runLoops runs each background loop that is on until ctx ends, and waits for them.
func (s *Service) runLoops(ctx context.Context) {
	var loops sync.WaitGroup
	s.loop(ctx, &loops, "runs", s.cfg.PollInterval, s.wake, s.doOpenRuns)
	if s.cfg.BillingGrace >= 0 {
		s.loop(ctx, &loops, "schedule", s.cfg.ScheduleInterval, nil, s.schedule)
	}
	if s.dunning() {
		s.loop(ctx, &loops, "dunning", s.cfg.DunningInterval, nil, s.SweepDunning)
	}
	if s.cfg.StorageInterval >= 0 {
		s.loop(ctx, &loops, "storage", s.cfg.StorageInterval, nil, func(ctx context.Context) error {
			_, err := s.CollectStorage(ctx)
			return err
		})
	}
	loops.Wait()
}

// loop runs fn now, then every interval (or when wake fires) until ctx ends.
func (s *Service) loop(ctx context.Context, loops *sync.WaitGroup, name string, every time.Duration, wake <-chan struct{}, fn func(context.Context) error) {
	loops.Go(func() {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				s.logger.WarnContext(ctx, name+" failed; retrying next round", "op", name, "error", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			case <-wake:
			}
		}
	})
}

// Stop ends the background work. A run in progress stops between two
// invoices and stays running in the catalog: the next process resumes it.
// It waits until ctx ends at most.
func (s *Service) Stop(ctx context.Context) error {
	if err := s.background.Stop(ctx); err != nil {
		return fmt.Errorf("billing: stopping: %w", err)
	}
	return nil
}

func (s *Service) now() time.Time { return s.cfg.Now().UTC() }

// RecordUsageEvents validates and counts a batch of usage events (see
// catalog.Store.RecordUsageEvents): an invalid event fails the batch, an id
// seen before counts once.
func (s *Service) RecordUsageEvents(ctx context.Context, events []catalog.UsageEvent) (catalog.UsageEventsResult, error) {
	res, err := s.catalog.RecordUsageEvents(ctx, events, s.now())
	if err == nil {
		s.metrics.events.WithLabelValues("accepted").Add(float64(res.Accepted))
		s.metrics.events.WithLabelValues("duplicate").Add(float64(res.Duplicates))
	} else if catalog.CodeOf(err) == catalog.CodeInvalid {
		s.metrics.events.WithLabelValues("rejected").Add(float64(len(events)))
	}
	return res, err
}

// ListInvoices returns a page of a tenant's invoices with their lines,
// newest period first: at most limit after cursor, and the next page's
// cursor ("" on the last).
func (s *Service) ListInvoices(ctx context.Context, tenantID string, limit int, cursor string) ([]Invoice, string, error) {
	return s.store.ListInvoices(ctx, tenantID, limit, cursor)
}

// Preview returns a tenant's invoice for a period as it would be computed
// now, without storing it or calling Stripe: the open period by default. A
// period already invoiced shows the invoice stored.
func (s *Service) Preview(ctx context.Context, slug string, period time.Time) (Invoice, error) {
	t, err := s.catalog.GetTenant(ctx, slug)
	if err != nil {
		return Invoice{}, err
	}
	if period.IsZero() {
		period = s.now()
	}
	p := catalog.FormatPeriod(period)
	if inv, err := s.store.TenantInvoice(ctx, t.ID, p); err == nil {
		return inv, nil
	} else if !errors.Is(err, catalog.ErrNotFound) {
		return Invoice{}, err
	}
	in, err := s.store.PreviewInputs(ctx, t.ID, period)
	if err != nil {
		return Invoice{}, err
	}
	lines, err := Price(in)
	if err != nil {
		return Invoice{}, err
	}
	inv := Invoice{TenantID: t.ID, Tenant: t.Slug, Period: p, Plan: in.Version.Plan, PlanVersion: in.Version.Version,
		Currency: in.Version.Currency, State: StatePreview, Payment: PaymentNone, ComputedAt: s.now(), Lines: lines}
	if s.cfg.AutomaticTax && s.stripe != nil {
		inv.AutomaticTax, inv.TaxNote = true, TaxCalculatedByStripe // on top of the total, once Stripe finalizes it
	}
	for i := range inv.Lines {
		inv.Lines[i].No = i + 1
		inv.Total += inv.Lines[i].Amount
	}
	return inv, nil
}

// StatePreview marks an invoice Preview computed and did not store.
const StatePreview InvoiceState = "preview"

type metrics struct {
	stripe *prometheus.CounterVec
	events *prometheus.CounterVec
	runs   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		stripe: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tenantplane_billing_stripe_requests_total",
			Help: "Stripe requests billing made, by operation and outcome.",
		}, []string{"op", "outcome"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tenantplane_usage_events_total",
			Help: "Usage events posted, by result (accepted, duplicate, rejected).",
		}, []string{"result"}),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tenantplane_billing_runs_total",
			Help: "Billing runs finished, by state.",
		}, []string{"state"}),
	}
	if reg != nil {
		reg.MustRegister(m.stripe, m.events, m.runs)
	}
	return m
}

// stripeLogger sends stripe-go's logs to slog: its errors as warnings (the
// caller reports the failure), the rest at debug. It redacts the secret key,
// which an error from stripe-mock quotes.
type stripeLogger struct {
	l   *slog.Logger
	key string
}

func (s stripeLogger) Debugf(format string, v ...any) {
	s.l.Debug(redactKey(fmt.Sprintf(format, v...), s.key), "op", "stripe")
}
func (s stripeLogger) Infof(format string, v ...any) {
	s.l.Debug(redactKey(fmt.Sprintf(format, v...), s.key), "op", "stripe")
}
func (s stripeLogger) Warnf(format string, v ...any) {
	s.l.Debug(redactKey(fmt.Sprintf(format, v...), s.key), "op", "stripe")
}
func (s stripeLogger) Errorf(format string, v ...any) {
	s.l.Warn(redactKey(fmt.Sprintf(format, v...), s.key), "op", "stripe")
}
