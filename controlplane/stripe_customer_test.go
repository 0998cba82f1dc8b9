package controlplane

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/billing"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/internal/stripetest"
)

// stripeCall is one request that reached stripe-mock through stripeTap.
type stripeCall struct {
	Method, Path, IdempotencyKey string
	TenantID                     string // the tenantplane_tenant_id metadata of a customer create
	TenantState                  string // that tenant's state in the catalog as the request arrived
	Form                         url.Values
}

// stripeTap passes the App's Stripe requests on to stripe-mock unchanged
// and records each, with the catalog's state of the tenant a customer is
// created for at that moment. stripe-mock is stateless: the record is how a
// test counts what was created.
type stripeTap struct {
	URL     string
	catalog *pgxpool.Pool

	mu    sync.Mutex
	calls []stripeCall
	// refuse, when set, answers a request itself instead of stripe-mock
	// (ok): Stripe's refusals that stateless stripe-mock cannot make.
	refuse func(c stripeCall) (status int, body string, ok bool)
	// answers holds stripe-mock's answers to the paths answerPath matches.
	answers map[string][]byte
	// delay, when set, holds each request that long before passing it on:
	// a slower Stripe, so that work that calls it is under way longer.
	delay time.Duration
}

// answerPath are the requests whose answers the tap keeps (finalize: the tax).
var answerPath = regexp.MustCompile(`^/v1/invoices/[^/]+/finalize$`)

func newStripeTap(t *testing.T, mockURL, catalogDSN string) *stripeTap {
	t.Helper()
	target, err := url.Parse(mockURL)
	require.NoError(t, err)
	pool, err := pgxpool.New(context.Background(), catalogDSN)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	tap := &stripeTap{catalog: pool, answers: map[string][]byte{}}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = func(resp *http.Response) error {
		if !answerPath.MatchString(resp.Request.URL.Path) {
			return nil
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		resp.Body = io.NopCloser(bytes.NewReader(body))
		tap.mu.Lock()
		tap.answers[resp.Request.URL.Path] = body
		tap.mu.Unlock()
		return nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		call := stripeCall{Method: r.Method, Path: r.URL.Path, IdempotencyKey: r.Header.Get("Idempotency-Key")}
		call.Form, _ = url.ParseQuery(string(body))
		if form, err := url.ParseQuery(string(body)); err == nil && r.Method == http.MethodPost && r.URL.Path == "/v1/customers" {
			call.TenantID = form.Get("metadata[tenantplane_tenant_id]")
			ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
			err := pool.QueryRow(ctx, `SELECT state FROM tenants WHERE id = $1`, call.TenantID).Scan(&call.TenantState)
			cancel()
			if err != nil {
				call.TenantState = "unknown: " + err.Error()
			}
		}
		tap.mu.Lock()
		tap.calls = append(tap.calls, call)
		refuse, delay := tap.refuse, tap.delay
		tap.mu.Unlock()
		time.Sleep(delay)
		if refuse != nil {
			if status, body, ok := refuse(call); ok {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(status)
				_, _ = io.WriteString(w, body)
				return
			}
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	tap.URL = srv.URL
	return tap
}

// callsTo are the requests of a method to a path that reached stripe-mock.
func (s *stripeTap) callsTo(method string, path *regexp.Regexp) []stripeCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []stripeCall
	for _, c := range s.calls {
		if c.Method == method && path.MatchString(c.Path) {
			out = append(out, c)
		}
	}
	return out
}

// customerCreates are the customer creations that reached stripe-mock.
func (s *stripeTap) customerCreates() []stripeCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []stripeCall
	for _, c := range s.calls {
		if c.Method == http.MethodPost && c.Path == "/v1/customers" {
			c.Form = nil // the tests of creations compare who, when and with which key
			out = append(out, c)
		}
	}
	return out
}

// storedCustomer is the Stripe customer id the catalog holds for a tenant
// (billing_customers; "" for none).
func storedCustomer(t *testing.T, store *catalog.Store, tenantID string) string {
	t.Helper()
	var id string
	err := store.Pool().QueryRow(context.Background(),
		`SELECT coalesce((SELECT stripe_customer_id FROM billing_customers WHERE tenant_id = $1), '')`, tenantID).Scan(&id)
	require.NoError(t, err)
	return id
}

func auditActions(t *testing.T, store *catalog.Store, tenantID string) []string {
	t.Helper()
	events, err := store.ListAudit(context.Background(), catalog.AuditFilter{TenantID: tenantID})
	require.NoError(t, err)
	var out []string
	for _, e := range events {
		out = append(out, e.Action)
	}
	return out
}

// TestCreateTenantMakesItsStripeCustomer: on an App that bills through
// Stripe (stripe-mock), POST /tenants?wait=true answers 201 with the tenant
// active and its Stripe customer already stored in the catalog, created
// once, while the tenant was still provisioning, with the tenant's
// idempotency key. Creating the slug again creates nothing, and the billing
// run invoices that customer without creating another.
func TestCreateTenantMakesItsStripeCustomer(t *testing.T) {
	t.Parallel()
	catalogDSN := pgtest.NewDB(t)
	tap := newStripeTap(t, stripetest.Shared(t).URL, catalogDSN)
	f := setupFleetOn(t, catalogDSN, 1, map[string]string{
		"STRIPE_API_KEY": stripetest.Key, "STRIPE_API_BASE": tap.URL,
		"TENANTPLANE_BILLING_GRACE": "off", "TENANTPLANE_STORAGE_INTERVAL": "off",
	}, 0)
	require.True(t, f.app.billing.SendsToStripe())

	status, tenant := f.createTenant(t, "acme", true)
	require.Equal(t, http.StatusCreated, status, tenant)
	require.Equal(t, "active", tenant["state"])
	id := tenant["id"].(string)
	customer := storedCustomer(t, f.app.store, id)
	require.NotEmpty(t, customer, "the customer is stored by the time the tenant is active")
	require.Equal(t, []stripeCall{{Method: http.MethodPost, Path: "/v1/customers", IdempotencyKey: billing.CustomerKey(id),
		TenantID: id, TenantState: "provisioning"}}, tap.customerCreates(), "one customer, created before activation")
	require.Equal(t, []string{"tenant.created", "tenant.activated"}, auditActions(t, f.app.store, id))

	// The same request again: the same tenant, no second customer.
	status, again := f.createTenant(t, "acme", true)
	require.Equal(t, http.StatusCreated, status, again)
	require.Equal(t, id, again["id"])
	require.Len(t, tap.customerCreates(), 1)
	require.Equal(t, customer, storedCustomer(t, f.app.store, id))

	// The billing run invoices the customer provisioning made.
	f.backdate(t, "acme")
	last := catalog.FormatPeriod(catalog.PeriodOf(time.Now()).AddDate(0, -1, 0))
	v1 := f.admin + "/admin/v1"
	status, run := call(t, "POST", v1+"/billing/runs", testToken, map[string]any{"period": last})
	require.Equal(t, http.StatusAccepted, status, run)
	require.Eventually(t, func() bool {
		_, run = call(t, "GET", fmt.Sprintf("%s/billing/runs/%v", v1, run["id"]), testToken, nil)
		return run["state"] == "done"
	}, 30*time.Second, 50*time.Millisecond, "run: %v", run)
	_, body := call(t, "GET", v1+"/tenants/acme/invoices", testToken, nil)
	inv := body["invoices"].([]any)[0].(map[string]any)
	require.Equal(t, "finalized", inv["state"], inv)
	require.Equal(t, customer, inv["stripe_customer_id"])
	require.Len(t, tap.customerCreates(), 1, "the run creates no customer")
}

// TestCreateTenantStripeFailureFailsIt: when Stripe refuses the customer
// (stripe-mock refuses a live key), the tenant fails with the reason, as a
// failed database step would, and ?wait=true answers 503 with it; neither
// says the key. Once the key is fixed, the operator's retry makes the
// customer and activates the tenant.
func TestCreateTenantStripeFailureFailsIt(t *testing.T) {
	t.Parallel()
	const secret = "sk_live_tenantplane_do_not_print_me"
	mock := stripetest.Shared(t)
	env := map[string]string{
		"STRIPE_API_KEY": secret, "STRIPE_API_BASE": mock.URL, "TENANTPLANE_SECRET_KEY": catalog.NewKey(),
		"TENANTPLANE_BILLING_GRACE": "off", "TENANTPLANE_STORAGE_INTERVAL": "off",
	}
	f := setupFleet(t, 1, env)
	v1 := f.admin + "/admin/v1"

	status, body := f.createTenant(t, "acme", true)
	require.Equal(t, http.StatusServiceUnavailable, status, body)
	require.Equal(t, "unavailable", errorCode(t, body))
	const reason = "provision failed: creating the billing customer: customer.create: Stripe answered 401: "
	msg := body["error"].(map[string]any)["message"].(string)
	require.Contains(t, msg, reason)
	require.NotContains(t, msg, secret)

	_, tenant := call(t, "GET", v1+"/tenants/acme", testToken, nil)
	require.Equal(t, "failed", tenant["state"])
	lastError := tenant["last_error"].(string)
	require.Contains(t, lastError, reason)
	require.NotContains(t, lastError, secret)
	require.NotContains(t, f.logs.String(), secret, "nor do the logs")
	id := tenant["id"].(string)
	require.Empty(t, storedCustomer(t, f.app.store, id))
	require.Equal(t, []string{"tenant.created", "tenant.failed"}, auditActions(t, f.app.store, id))

	env["STRIPE_API_KEY"] = stripetest.Key
	f.redeploy(t, env)
	v1 = f.admin + "/admin/v1"
	status, body = call(t, "POST", v1+"/tenants/acme/retry", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Eventually(t, func() bool {
		_, tenant = call(t, "GET", v1+"/tenants/acme", testToken, nil)
		return tenant["state"] == "active"
	}, 30*time.Second, 50*time.Millisecond, "tenant: %v", tenant)
	require.NotEmpty(t, storedCustomer(t, f.app.store, id))
	require.Equal(t, []string{"tenant.created", "tenant.failed", "tenant.retried", "tenant.activated"}, auditActions(t, f.app.store, id))
}

// hungStripe is a Stripe that takes connections and never answers.
func hungStripe(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // held open, never read from nor answered
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "http://" + ln.Addr().String()
}

// TestCreateTenantStripeHangsAnswersWithinTheWait: a Stripe that never
// answers cannot hold POST /tenants?wait=true past its limit. The customer
// step gives up after its bounded attempts, so the answer comes within the
// wait (here TENANTPLANE_CREATE_WAIT=15s) and says Stripe did not answer;
// the tenant is failed with that reason, and a retry once Stripe answers
// activates it.
func TestCreateTenantStripeHangsAnswersWithinTheWait(t *testing.T) {
	t.Parallel()
	const wait = 15 * time.Second
	env := map[string]string{
		"STRIPE_API_KEY": stripetest.Key, "STRIPE_API_BASE": hungStripe(t), "TENANTPLANE_SECRET_KEY": catalog.NewKey(),
		"TENANTPLANE_STRIPE_TIMEOUT": "1s", "TENANTPLANE_CREATE_WAIT": wait.String(),
		"TENANTPLANE_BILLING_GRACE": "off", "TENANTPLANE_STORAGE_INTERVAL": "off",
	}
	f := setupFleet(t, 1, env)
	v1 := f.admin + "/admin/v1"

	start := time.Now()
	status, body := f.createTenant(t, "acme", true)
	took := time.Since(start)
	t.Logf("?wait=true answered after %v: %d %v", took, status, body)
	require.Less(t, took, wait, "the answer came within the wait limit")
	require.Equal(t, http.StatusServiceUnavailable, status, body)
	require.Equal(t, "unavailable", errorCode(t, body))
	msg := body["error"].(map[string]any)["message"].(string)
	require.Contains(t, msg, `tenant "acme" failed to provision`)
	require.Contains(t, msg, "Stripe did not answer in time")
	require.Contains(t, msg, "/retry")

	_, tenant := call(t, "GET", v1+"/tenants/acme", testToken, nil)
	require.Equal(t, "failed", tenant["state"])
	require.Contains(t, tenant["last_error"], "creating the billing customer: customer.create: Stripe did not answer in time")

	env["STRIPE_API_BASE"] = stripetest.Shared(t).URL
	f.redeploy(t, env)
	v1 = f.admin + "/admin/v1"
	status, body = call(t, "POST", v1+"/tenants/acme/retry", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Eventually(t, func() bool {
		_, tenant = call(t, "GET", v1+"/tenants/acme", testToken, nil)
		return tenant["state"] == "active"
	}, 30*time.Second, 50*time.Millisecond, "tenant: %v", tenant)
}
