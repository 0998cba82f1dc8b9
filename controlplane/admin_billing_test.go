package controlplane

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/stripetest"
)

const testWebhookSecret = "whsec_controlplane_test"

// backdate makes a tenant older than the period that ended last, so that
// period bills it.
func (f *fleet) backdate(t *testing.T, slug string) {
	t.Helper()
	_, err := f.app.store.Pool().Exec(context.Background(), `UPDATE tenants SET created_at = now() - interval '100 days' WHERE slug = $1`, slug)
	require.NoError(t, err)
}

// postWebhook sends a Stripe event to the webhook endpoint, signed with
// secret (unsigned when secret is ""), without the admin token.
func postWebhook(t *testing.T, admin string, payload []byte, secret string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest("POST", admin+"/webhooks/stripe", bytes.NewReader(payload))
	require.NoError(t, err)
	if secret != "" {
		req.Header.Set("Stripe-Signature", webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: secret, Timestamp: time.Now()}).Header)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var out map[string]any
	require.NoError(t, json.Unmarshal(raw, &out), string(raw))
	return resp.StatusCode, out
}

func invoiceEvent(id, typ, stripeInvoiceID string) []byte {
	b, _ := json.Marshal(map[string]any{"id": id, "object": "event", "type": typ, "api_version": "2023-10-16",
		"data": map[string]any{"object": map[string]any{"id": stripeInvoiceID, "object": "invoice"}}})
	return b
}

// TestBillingThroughTheAdminAPI meters real tenants, bills the last period
// through stripe-mock, and takes a payment webhook and dunning through the
// real provisioner: an unpaid tenant is suspended (the tenant API refuses
// it) and resumed once it pays.
func TestBillingThroughTheAdminAPI(t *testing.T) {
	t.Parallel()
	mock := stripetest.Shared(t)
	f := setupFleet(t, 1, map[string]string{
		"STRIPE_API_KEY": stripetest.Key, "STRIPE_API_BASE": mock.URL, "STRIPE_WEBHOOK_SECRET": testWebhookSecret,
		"TENANTPLANE_BILLING_GRACE": "off", "TENANTPLANE_DUNNING_GRACE": "1s", "TENANTPLANE_STORAGE_INTERVAL": "off",
	})
	v1 := f.admin + "/admin/v1"
	_, key := f.tenantWithKey(t, "acme", "basic", "")
	f.tenantWithKey(t, "globex", "pro", "")
	f.backdate(t, "acme")
	f.backdate(t, "globex")
	last := catalog.PeriodOf(time.Now()).AddDate(0, -1, 0)
	ts := last.Add(36 * time.Hour).Format(time.RFC3339)

	// Usage events: a bad batch is refused whole; a retried one counts once.
	bad := []map[string]any{
		{"id": "e1", "tenant": "acme", "meter": "api_calls", "quantity": 10000, "timestamp": ts},
		{"id": "e2", "tenant": "nosuch", "meter": "api_calls", "quantity": 1, "timestamp": ts},
	}
	status, body := call(t, "POST", v1+"/usage/events", testToken, bad)
	require.Equal(t, http.StatusBadRequest, status, body)
	require.Equal(t, "invalid", errorCode(t, body))
	good := []map[string]any{
		{"id": "e1", "tenant": "acme", "meter": "api_calls", "quantity": 10000, "timestamp": ts},
		{"id": "e3", "tenant": "globex", "meter": "api_calls", "quantity": 500, "timestamp": ts},
	}
	for i := range 2 {
		status, body = call(t, "POST", v1+"/usage/events", testToken, good)
		require.Equal(t, http.StatusOK, status, body)
		require.EqualValues(t, 2-2*i, body["accepted"])
		require.EqualValues(t, 2*i, body["duplicates"])
	}
	status, body = call(t, "POST", v1+"/usage/events", testToken, map[string]any{"id": "not-an-array"})
	require.Equal(t, http.StatusBadRequest, status, body)

	status, body = call(t, "GET", v1+"/usage?period="+catalog.FormatPeriod(last), testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.EqualValues(t, 10500, body["totals"].(map[string]any)["api_calls"])
	require.Len(t, body["tenants"], 2)
	status, body = call(t, "GET", v1+"/tenants/acme/usage?period="+catalog.FormatPeriod(last), testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.EqualValues(t, 10000, body["usage"].(map[string]any)["api_calls"])
	status, body = call(t, "GET", v1+"/usage?period=March", testToken, nil)
	require.Equal(t, http.StatusBadRequest, status, body)

	// The preview of the last period, before it is billed: nothing stored, nothing sent.
	status, body = call(t, "GET", v1+"/tenants/acme/invoice-preview?period="+catalog.FormatPeriod(last), testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, "preview", body["state"])
	require.EqualValues(t, 10500, body["total"], "$5.00 basic plan and $100.00 for 10,000 calls")
	status, body = call(t, "GET", v1+"/tenants/acme/invoice-preview", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, catalog.FormatPeriod(time.Now()), body["period"], "the open period by default")

	// Bill the last period.
	status, body = call(t, "POST", v1+"/billing/runs", testToken, map[string]any{"period": catalog.FormatPeriod(time.Now())})
	require.Equal(t, http.StatusBadRequest, status, "the open period cannot be billed: %v", body)
	status, body = call(t, "POST", v1+"/billing/runs", testToken, map[string]any{})
	require.Equal(t, http.StatusBadRequest, status, body)
	status, run := call(t, "POST", v1+"/billing/runs", testToken, map[string]any{"period": catalog.FormatPeriod(last)})
	require.Equal(t, http.StatusAccepted, status, run)
	require.Equal(t, true, run["send"])
	runURL := fmt.Sprintf("%s/billing/runs/%v", v1, run["id"])
	require.Eventually(t, func() bool {
		_, run = call(t, "GET", runURL, testToken, nil)
		return run["state"] == "done"
	}, 30*time.Second, 50*time.Millisecond, "run: %v", run)
	require.EqualValues(t, 2, run["invoices"])
	require.EqualValues(t, 2, run["progress"].(map[string]any)["finalized"])
	status, body = call(t, "GET", v1+"/billing/runs?period="+catalog.FormatPeriod(last), testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Len(t, body["runs"], 1)
	status, body = call(t, "GET", v1+"/billing/runs/99999", testToken, nil)
	require.Equal(t, http.StatusNotFound, status, body)

	status, body = call(t, "GET", v1+"/tenants/acme/invoices", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	invoices := body["invoices"].([]any)
	require.Len(t, invoices, 1)
	inv := invoices[0].(map[string]any)
	require.Equal(t, "finalized", inv["state"])
	require.Equal(t, true, inv["sent"])
	require.Equal(t, "open", inv["payment"])
	require.EqualValues(t, 10500, inv["total"])
	stripeInvoice := inv["stripe_invoice_id"].(string)
	require.NotEmpty(t, stripeInvoice)
	require.Len(t, inv["lines"], 2)

	// Unpaid past the grace (1s): the dunning sweep suspends acme through the provisioner.
	time.Sleep(1100 * time.Millisecond)
	require.NoError(t, f.app.billing.SweepDunning(context.Background()))
	_, tenant := call(t, "GET", v1+"/tenants/acme", testToken, nil)
	require.Equal(t, "suspended", tenant["state"])
	require.Eventually(t, func() bool {
		status, _ := call(t, "GET", f.api+"/v1/me", key, nil)
		return status == http.StatusForbidden
	}, 5*time.Second, 20*time.Millisecond, "a suspended tenant's calls are refused")

	// A forged webhook is refused; the signed one, without the admin token, marks the invoice paid and resumes acme.
	paid := invoiceEvent("evt_acme_paid", "invoice.paid", stripeInvoice)
	status, body = postWebhook(t, f.admin, paid, "whsec_forged")
	require.Equal(t, http.StatusBadRequest, status, body)
	status, body = postWebhook(t, f.admin, paid, "")
	require.Equal(t, http.StatusBadRequest, status, body)
	status, body = postWebhook(t, f.admin, paid, testWebhookSecret)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, "handled", body["outcome"])
	status, body = postWebhook(t, f.admin, paid, testWebhookSecret)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, "duplicate", body["outcome"])
	_, tenant = call(t, "GET", v1+"/tenants/acme", testToken, nil)
	require.Equal(t, "active", tenant["state"])
	_, body = call(t, "GET", v1+"/tenants/acme/invoices", testToken, nil)
	require.Equal(t, "paid", body["invoices"].([]any)[0].(map[string]any)["payment"])

	// Billing calls need the admin token; the webhook does not.
	status, _ = call(t, "GET", v1+"/billing/runs", "", nil)
	require.Equal(t, http.StatusUnauthorized, status)
	status, _ = call(t, "POST", v1+"/usage/events", "", good)
	require.Equal(t, http.StatusUnauthorized, status)
}

// TestBillingWithoutStripe computes and stores invoices, marked not sent,
// when no Stripe key is set; webhooks are refused with 503.
func TestBillingWithoutStripe(t *testing.T) {
	t.Parallel()
	b := setupEnv(t, "", map[string]string{"TENANTPLANE_BILLING_GRACE": "off"})
	v1 := b.admin + "/admin/v1"
	_, err := b.app.store.Pool().Exec(context.Background(),
		`INSERT INTO tenants (slug, name, plan, state, created_at) VALUES ('local', 'Local', 'pro', 'active', now() - interval '100 days')`)
	require.NoError(t, err)
	last := catalog.FormatPeriod(catalog.PeriodOf(time.Now()).AddDate(0, -1, 0))
	status, run := call(t, "POST", v1+"/billing/runs", testToken, map[string]any{"period": last})
	require.Equal(t, http.StatusAccepted, status, run)
	require.Equal(t, false, run["send"])
	require.Eventually(t, func() bool {
		_, run = call(t, "GET", fmt.Sprintf("%s/billing/runs/%v", v1, run["id"]), testToken, nil)
		return run["state"] == "done"
	}, 30*time.Second, 50*time.Millisecond)
	_, body := call(t, "GET", v1+"/tenants/local/invoices", testToken, nil)
	inv := body["invoices"].([]any)[0].(map[string]any)
	require.Equal(t, false, inv["sent"])
	require.Equal(t, "computed", inv["state"])
	require.EqualValues(t, 2000, inv["total"])

	status, body = postWebhook(t, b.admin, invoiceEvent("evt_1", "invoice.paid", "in_1"), testWebhookSecret)
	require.Equal(t, http.StatusServiceUnavailable, status, body)

	// Plans and their price versions.
	status, body = call(t, "GET", v1+"/plans", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Len(t, body["versions"], 4, "basic, enterprise, free (pooled), pro")
	status, body = call(t, "POST", v1+"/plans/pro/versions", testToken, map[string]any{"currency": "usd", "base_fee": 2500,
		"meters": []map[string]any{{"meter": "api_calls", "included": 1000, "unit_price_micros": 1000000, "per_units": 1}}})
	require.Equal(t, http.StatusCreated, status, body)
	require.EqualValues(t, 2, body["version"])
	status, body = call(t, "POST", v1+"/plans/pro/versions", testToken, map[string]any{"currency": "usd", "effective_from": "2001-01"})
	require.Equal(t, http.StatusBadRequest, status, body)
}

func TestBillingConfig(t *testing.T) {
	t.Parallel()
	good := map[string]string{
		"DATABASE_URL":            "postgres://u:p@localhost:5432/tenantplane",
		"TENANTPLANE_ADMIN_TOKEN": "0123456789abcdef",
		"TENANTPLANE_SECRET_KEY":  "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
	}
	with := func(k, v string) map[string]string {
		env := map[string]string{k: v}
		for k, v := range good {
			env[k] = v
		}
		return env
	}
	cfg, err := ConfigFromEnv(envOf(good))
	require.NoError(t, err)
	require.Equal(t, 24*time.Hour, cfg.BillingGrace)
	require.Equal(t, 14*24*time.Hour, cfg.DunningGrace)
	require.Equal(t, time.Hour, cfg.StorageInterval)
	for _, name := range []string{"TENANTPLANE_BILLING_GRACE", "TENANTPLANE_DUNNING_GRACE", "TENANTPLANE_STORAGE_INTERVAL"} {
		cfg, err := ConfigFromEnv(envOf(with(name, "off")))
		require.NoError(t, err, name)
		require.Negative(t, map[string]time.Duration{"TENANTPLANE_BILLING_GRACE": cfg.BillingGrace,
			"TENANTPLANE_DUNNING_GRACE": cfg.DunningGrace, "TENANTPLANE_STORAGE_INTERVAL": cfg.StorageInterval}[name], name)
		for _, bad := range []string{"soon", "-1h", "0s"} {
			_, err := ConfigFromEnv(envOf(with(name, bad)))
			require.Error(t, err, name+"="+bad)
			require.Contains(t, err.Error(), name+":")
		}
	}
	cfg, err = ConfigFromEnv(envOf(with("TENANTPLANE_DUNNING_GRACE", "72h")))
	require.NoError(t, err)
	require.Equal(t, 72*time.Hour, cfg.DunningGrace)
}
