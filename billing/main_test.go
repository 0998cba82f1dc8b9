package billing_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
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

// billedTenants adds n basic tenants, t-0 ..., each with 1234 api_calls
// in the period billed.
func (b *testBundle) billedTenants(t testing.TB, n int) []catalog.Tenant {
	t.Helper()
	var tenants []catalog.Tenant
	for i := range n {
		tn := b.addTenant(t, fmt.Sprintf("t-%d", i), "basic")
		b.usage(t, tn.ID, b.last, 1234)
		tenants = append(tenants, tn)
	}
	return tenants
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

// recorder is an http.RoundTripper between the billing service and
// stripe-mock: it records every request it passes on and, when a test sets
// its hooks, injects faults and answers in Stripe's place what stripe-mock
// cannot.
//
// stripe-mock is stateless: it checks each request against Stripe's API and
// answers a fixture, with a new random id for each object it is asked to
// create. It keeps nothing, so it cannot replay an idempotency key, find an
// object made before, or refuse to finalize an invoice twice. What Stripe
// would have made of the requests is proven from the record instead
// (requireOneInvoiceEach).
type recorder struct {
	base http.RoundTripper

	mu    sync.Mutex
	reqs  []recorded // since the last take
	log   []recorded // every request, in the order they ended
	calls map[string]int
	hooks hooks
	// forgotAt is the length of log when Stripe forgot the idempotency
	// keys sent before (forget); -1 while it remembers them.
	forgotAt int
}

type recorded struct {
	Method, Path, IdempotencyKey string
	// Status is Stripe's answer; 0 when there was none (a network error).
	Status int
	// Op names the Stripe call, e.g. "invoice.create" (opOf); Form holds its
	// parameters: a POST's body, a GET's query.
	Op   string
	Form url.Values
	// ID is the id of the object Stripe answered with, also when the answer
	// was then dropped.
	ID string
	// Fault is the fault injected into the call: "fail" or "drop" (hooks.fault).
	Fault string
}

// reached says whether the call may have reached Stripe: all but those the
// recorder failed itself.
func (c recorded) reached() bool { return c.Fault != "fail" }

// meta is one of the call's metadata values.
func (c recorded) meta(key string) string { return c.Form.Get("metadata[" + key + "]") }

// wire is the call as the service saw it on the wire, without what the
// recorder adds.
func (c recorded) wire() recorded {
	return recorded{Method: c.Method, Path: c.Path, IdempotencyKey: c.IdempotencyKey, Status: c.Status}
}

// hooks are what a test changes in the conversation with stripe-mock.
type hooks struct {
	// fault chooses a fault for the n-th call (from 1) of an op: "fail"
	// answers 500 without passing the request on (nothing done); "drop"
	// passes it on to stripe-mock, then loses the answer (done, the answer
	// lost: the service gets an error, as when a connection breaks); ""
	// neither. It may block.
	fault func(op string, n int) string
	// instead answers a call in Stripe's place, without passing it on, when
	// its ok is true.
	instead func(c recorded) (status int, body string, ok bool)
	// edit changes stripe-mock's successful answer to a call before the
	// service gets it.
	edit func(c recorded, answer map[string]any)
}

// errAnswerLost is what the service gets for a call whose answer the
// recorder drops.
var errAnswerLost = errors.New("recorder: the connection broke before the answer (injected)")

// stripeOps name the Stripe calls billing makes.
var stripeOps = []struct {
	method string
	path   *regexp.Regexp
	op     string
}{
	{http.MethodPost, regexp.MustCompile(`^/v1/customers$`), "customer.create"},
	{http.MethodGet, regexp.MustCompile(`^/v1/customers/search$`), "customer.search"},
	{http.MethodPost, regexp.MustCompile(`^/v1/customers/[^/]+$`), "customer.update"},
	{http.MethodPost, regexp.MustCompile(`^/v1/invoices$`), "invoice.create"},
	{http.MethodGet, regexp.MustCompile(`^/v1/invoices$`), "invoice.list"},
	{http.MethodPost, regexp.MustCompile(`^/v1/invoices/[^/]+/finalize$`), "invoice.finalize"},
	{http.MethodGet, regexp.MustCompile(`^/v1/invoices/[^/]+$`), "invoice.get"},
	{http.MethodPost, regexp.MustCompile(`^/v1/invoiceitems$`), "invoiceitem.create"},
	{http.MethodGet, regexp.MustCompile(`^/v1/invoiceitems$`), "invoiceitem.list"},
}

func opOf(method, path string) string {
	for _, o := range stripeOps {
		if o.method == method && o.path.MatchString(path) {
			return o.op
		}
	}
	return method + " " + path
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	c := recorded{Method: req.Method, Path: req.URL.Path, IdempotencyKey: req.Header.Get("Idempotency-Key"), Op: opOf(req.Method, req.URL.Path),
		Form: req.URL.Query()}
	if req.Body != nil {
		body, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		if len(body) > 0 {
			if c.Form, err = url.ParseQuery(string(body)); err != nil {
				return nil, err
			}
		}
		req = req.Clone(req.Context())
		req.Body = io.NopCloser(bytes.NewReader(body))
	}
	r.mu.Lock()
	if r.calls == nil {
		r.calls = map[string]int{}
	}
	r.calls[c.Op]++
	n, h := r.calls[c.Op], r.hooks
	r.mu.Unlock()
	if h.fault != nil {
		c.Fault = h.fault(c.Op, n)
	}
	resp, err := r.answer(req, &c, h)
	r.mu.Lock()
	r.reqs = append(r.reqs, c)
	r.log = append(r.log, c)
	r.mu.Unlock()
	return resp, err
}

// answer passes a call on to stripe-mock, or answers it, as the hooks say.
func (r *recorder) answer(req *http.Request, c *recorded, h hooks) (*http.Response, error) {
	if c.Fault == "fail" {
		c.Status = http.StatusInternalServerError
		return reply(req, c.Status, `{"error": {"type": "api_error", "message": "injected failure"}}`), nil
	}
	if h.instead != nil {
		if status, body, ok := h.instead(*c); ok {
			c.Status = status
			return reply(req, status, body), nil
		}
	}
	resp, err := r.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	c.Status = resp.StatusCode
	var answer map[string]any
	if json.Unmarshal(body, &answer) == nil && resp.StatusCode == http.StatusOK {
		if h.edit != nil {
			h.edit(*c, answer)
			if body, err = json.Marshal(answer); err != nil {
				return nil, err
			}
		}
		c.ID, _ = answer["id"].(string)
	}
	if c.Fault == "drop" {
		return nil, errAnswerLost
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	resp.Header.Del("Content-Length")
	return resp, nil
}

// reply is an answer to req made by the recorder.
func reply(req *http.Request, status int, body string) *http.Response {
	return &http.Response{Status: fmt.Sprintf("%d %s", status, http.StatusText(status)), StatusCode: status,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(strings.NewReader(body)), ContentLength: int64(len(body)), Request: req}
}

// set replaces the hooks.
func (r *recorder) set(h hooks) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hooks = h
}

// forget marks the moment Stripe forgets the idempotency keys sent so far
// (it keeps them 24 hours): a create sent again after it is made again.
func (r *recorder) forget() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.forgotAt = len(r.log)
}

// history is every call so far, and forgotAt.
func (r *recorder) history() ([]recorded, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.log), r.forgotAt
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

// newRecorder returns a recorder in front of stripe-mock and a client
// sending through it. Its faults are injected above the connection, so
// keep-alives can stay on: net/http resends a request by itself only when a
// reused connection breaks, and a dropped answer breaks none.
func newRecorder() (*recorder, *http.Client) {
	return newRecorderOver(http.DefaultTransport.(*http.Transport).Clone())
}

func newRecorderOver(tr *http.Transport) (*recorder, *http.Client) {
	rec := &recorder{base: tr, forgotAt: -1}
	return rec, &http.Client{Transport: rec, Timeout: 30 * time.Second}
}
