package billing_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/billing"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var catalogTemplate = pgtest.WithTemplate("catalog-"+pgtest.HashFS(catalog.Migrations()), catalog.Migrate)

// testBundle is a migrated catalog of the test's own.
type testBundle struct {
	store *catalog.Store
	// billing is billing's own store over the same catalog.
	billing *billing.Store
	// last is the period that ended last: the one tests bill.
	last time.Time
}

func setup(t testing.TB) *testBundle {
	t.Helper()
	return setupOn(t, pgtest.NewDB(t, catalogTemplate))
}

// setupOn is setup on a migrated catalog at dsn.
func setupOn(t testing.TB, dsn string) *testBundle {
	t.Helper()
	key, err := catalog.ParseKey(catalog.NewKey())
	require.NoError(t, err)
	cipher, err := catalog.NewCipher(key)
	require.NoError(t, err)
	store, err := catalog.Open(context.Background(), dsn, cipher, catalog.StoreConfig{MaxConns: 40})
	require.NoError(t, err)
	t.Cleanup(store.Close)
	return &testBundle{store: store, billing: billing.NewStore(store), last: catalog.PeriodOf(time.Now()).AddDate(0, -1, 0)}
}

// addTenant inserts an active tenant created well before the periods billed;
// billing needs no database of its own.
func (b *testBundle) addTenant(t testing.TB, slug, plan string) catalog.Tenant {
	t.Helper()
	ctx := context.Background()
	_, err := b.store.Pool().Exec(ctx, `INSERT INTO tenants (slug, name, plan, state, created_at) VALUES ($1, $2, $3, 'active', now() - interval '400 days')`,
		slug, "Tenant "+slug, plan)
	require.NoError(t, err)
	tn, err := b.store.GetTenant(ctx, slug)
	require.NoError(t, err)
	return tn
}

// usage records api_calls for a tenant in a period.
func (b *testBundle) usage(t testing.TB, tenantID string, period time.Time, calls int64) {
	t.Helper()
	require.NoError(t, b.store.RecordUsageBatch(context.Background(), "u-"+tenantID+"-"+catalog.FormatPeriod(period)+"-"+time.Now().Format(time.RFC3339Nano),
		[]catalog.UsageRow{{TenantID: tenantID, Meter: catalog.MeterAPICalls, Bucket: period.Add(time.Hour), Quantity: calls}}))
}

// service returns a billing Service with no background work (tests drive
// it), quiet logs, and cfg's settings.
func (b *testBundle) service(t testing.TB, cfg billing.Config) *billing.Service {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	cfg.BillingGrace, cfg.StorageInterval = -1, -1 // no schedule, no collector
	svc, err := billing.New(b.store, cfg)
	require.NoError(t, err)
	return svc
}

func testLogger() *slog.Logger {
	if os.Getenv("TENANTPLANE_TEST_LOGS") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// run starts a run of the period and does it in this goroutine.
func (b *testBundle) run(t testing.TB, svc *billing.Service, period time.Time) billing.BillingRun {
	t.Helper()
	ctx := context.Background()
	run, _, err := svc.StartRun(ctx, period, "test")
	require.NoError(t, err)
	done, err := svc.ProcessRun(ctx, run.ID)
	require.NoError(t, err)
	return done
}

func (b *testBundle) invoice(t testing.TB, tenantID string, period time.Time) billing.Invoice {
	t.Helper()
	inv, err := b.billing.TenantInvoice(context.Background(), tenantID, catalog.FormatPeriod(period))
	require.NoError(t, err)
	return inv
}

// recorder is an http.RoundTripper that records every request it passes on.
type recorder struct {
	base http.RoundTripper
	mu   sync.Mutex
	reqs []recorded
}

type recorded struct {
	Method, Path, IdempotencyKey string
	Status                       int
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.base.RoundTrip(req)
	rec := recorded{Method: req.Method, Path: req.URL.Path, IdempotencyKey: req.Header.Get("Idempotency-Key")}
	if resp != nil {
		rec.Status = resp.StatusCode
	}
	r.mu.Lock()
	r.reqs = append(r.reqs, rec)
	r.mu.Unlock()
	return resp, err
}

func (r *recorder) take() []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.reqs
	r.reqs = nil
	return out
}

func writes(reqs []recorded) []recorded {
	var out []recorded
	for _, r := range reqs {
		if r.Method != http.MethodGet {
			out = append(out, r)
		}
	}
	return out
}

func newRecorder() (*recorder, *http.Client) {
	rec := &recorder{base: http.DefaultTransport.(*http.Transport).Clone()}
	return rec, &http.Client{Transport: rec, Timeout: 30 * time.Second}
}

// fakeClient is an HTTP client for the fake Stripe that never reuses a
// connection: net/http retries a request with an Idempotency-Key by itself
// when a reused connection closes before the answer, which would hide the
// answers the fake drops on purpose.
func fakeClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableKeepAlives = true
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}
