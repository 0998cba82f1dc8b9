package controlplane

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
	"github.com/tenantplane/tenantplane/internal/stripetest"
)

// taxLocationRefusal is Stripe's answer to an invoice with automatic tax
// for a customer whose location Stripe Tax cannot use.
const taxLocationRefusal = `{"error": {"type": "invalid_request_error", "code": "customer_tax_location_invalid",
	"message": "The customer's location isn't recognized. Automatic tax calculation requires a valid location."}}`

// TestAutomaticTaxThroughStripe: with TENANTPLANE_STRIPE_TAX=automatic, a
// tenant's billing address (validated; the US needs a postal code and a
// state) reaches its Stripe customer; the billing run creates each invoice
// with automatic_tax[enabled]=true and each item with tax_behavior
// exclusive (the exact requests, passed through to stripe-mock), and stores
// the tax Stripe answered on the invoice, "calculated by Stripe" as the
// preview says too. A customer whose location Stripe refuses (stripe-mock
// cannot: the tap answers for Stripe Tax, for the ZIP code 00000) fails
// that tenant's invoice alone with a clear error; once its address is
// fixed, running the period again finishes it.
func TestAutomaticTaxThroughStripe(t *testing.T) {
	t.Parallel()
	catalogDSN := pgtest.NewDB(t)
	tap := newStripeTap(t, stripetest.Shared(t).URL, catalogDSN)
	var mu sync.Mutex
	postal := map[string]string{} // customer -> the postal code it was last sent
	tap.refuse = func(c stripeCall) (int, string, bool) {
		mu.Lock()
		defer mu.Unlock()
		if m := regexp.MustCompile(`^/v1/customers/([^/]+)$`).FindStringSubmatch(c.Path); m != nil && c.Method == "POST" && c.Form.Has("address[postal_code]") {
			postal[m[1]] = c.Form.Get("address[postal_code]")
		}
		if c.Method == "POST" && c.Path == "/v1/invoices" && c.Form.Get("automatic_tax[enabled]") == "true" && postal[c.Form.Get("customer")] == "00000" {
			return http.StatusBadRequest, taxLocationRefusal, true
		}
		return 0, "", false
	}
	f := setupFleetOn(t, catalogDSN, 1, map[string]string{
		"STRIPE_API_KEY": stripetest.Key, "STRIPE_API_BASE": tap.URL, "TENANTPLANE_STRIPE_TAX": "automatic",
		"TENANTPLANE_BILLING_GRACE": "off", "TENANTPLANE_STORAGE_INTERVAL": "off",
	}, 0)
	v1 := f.admin + "/admin/v1"
	taxed, _ := f.tenantWithKey(t, "taxed", "basic", "")
	nowhere, _ := f.tenantWithKey(t, "nowhere", "basic", "")
	taxedCustomer, nowhereCustomer := storedCustomer(t, f.app.store, taxed["id"].(string)), storedCustomer(t, f.app.store, nowhere["id"].(string))

	// Bad addresses are refused, naming what is wrong, and store nothing.
	status, body := call(t, "PUT", v1+"/tenants/taxed/billing-address", testToken, map[string]any{"country": "USA"})
	require.Equal(t, http.StatusBadRequest, status, body)
	require.Contains(t, body["error"].(map[string]any)["message"], "two-letter ISO 3166-1 code")
	status, body = call(t, "PUT", v1+"/tenants/taxed/billing-address", testToken, map[string]any{"country": "us"})
	require.Equal(t, http.StatusBadRequest, status, body)
	require.Contains(t, body["error"].(map[string]any)["message"], "postal_code is required in US")
	require.Contains(t, body["error"].(map[string]any)["message"], "state is required in US")
	status, body = call(t, "GET", v1+"/tenants/taxed/billing-address", testToken, nil)
	require.Equal(t, http.StatusNotFound, status, body)

	status, addr := call(t, "PUT", v1+"/tenants/taxed/billing-address", testToken, map[string]any{"country": "us", "postal_code": "94107", "state": "CA"})
	require.Equal(t, http.StatusOK, status, addr)
	require.Equal(t, "US", addr["country"])
	require.NotNil(t, addr["synced_at"], addr)
	updates := tap.callsTo("POST", regexp.MustCompile(`^/v1/customers/`+regexp.QuoteMeta(taxedCustomer)+`$`))
	require.Len(t, updates, 1)
	require.Equal(t, "US", updates[0].Form.Get("address[country]"))
	require.Equal(t, "94107", updates[0].Form.Get("address[postal_code]"))
	require.Equal(t, "CA", updates[0].Form.Get("address[state]"))
	status, addr = call(t, "PUT", v1+"/tenants/nowhere/billing-address", testToken, map[string]any{"country": "US", "postal_code": "00000", "state": "CA"})
	require.Equal(t, http.StatusOK, status, addr)

	status, preview := call(t, "GET", v1+"/tenants/taxed/invoice-preview", testToken, nil)
	require.Equal(t, http.StatusOK, status, preview)
	require.Equal(t, "calculated by Stripe", preview["tax_note"])
	require.Nil(t, preview["tax"], "not known until Stripe finalizes the invoice")

	f.backdate(t, "taxed")
	f.backdate(t, "nowhere")
	usage := []map[string]any{{"id": "tax-1", "tenant": "taxed", "meter": "api_calls", "quantity": 300,
		"timestamp": catalog.PeriodOf(time.Now()).AddDate(0, -1, 2).Format(time.RFC3339)}}
	status, body = call(t, "POST", v1+"/usage/events", testToken, usage)
	require.Equal(t, http.StatusOK, status, body)
	period := catalog.FormatPeriod(catalog.PeriodOf(time.Now()).AddDate(0, -1, 0))
	runOnce := func() map[string]any {
		status, run := call(t, "POST", v1+"/billing/runs", testToken, map[string]any{"period": period})
		require.Equal(t, http.StatusAccepted, status, run)
		return f.waitFor(t, fmt.Sprintf("/admin/v1/billing/runs/%v", run["id"]), stateIn("done", "failed"))
	}
	run := runOnce()
	require.EqualValues(t, 1, run["progress"].(map[string]any)["finalized"], run)
	failures := run["failures"].([]any)
	require.Len(t, failures, 1, run)
	failure := failures[0].(map[string]any)
	require.Equal(t, "nowhere", failure["tenant"])
	require.Contains(t, failure["error"], "Stripe cannot compute tax for tenant nowhere: its billing address is not a location Stripe Tax recognizes")
	require.Contains(t, failure["error"], "run the period again")

	// The exact requests for the taxed tenant's invoice.
	creates := tap.callsTo("POST", regexp.MustCompile(`^/v1/invoices$`))
	var taxedCreate *stripeCall
	for i, c := range creates {
		require.Equal(t, "true", c.Form.Get("automatic_tax[enabled]"), "every invoice asks for automatic tax")
		if c.Form.Get("customer") == taxedCustomer {
			taxedCreate = &creates[i]
		}
	}
	require.NotNil(t, taxedCreate)
	require.Equal(t, "false", taxedCreate.Form.Get("auto_advance"))
	require.Equal(t, "tenantplane-invoice-"+taxed["id"].(string)+"-"+period, taxedCreate.IdempotencyKey)
	items := tap.callsTo("POST", regexp.MustCompile(`^/v1/invoiceitems$`))
	var taxedItems []stripeCall
	for _, c := range items {
		if c.Form.Get("customer") == taxedCustomer {
			taxedItems = append(taxedItems, c)
		}
	}
	require.Len(t, taxedItems, 2, "base fee and api_calls")
	for _, c := range taxedItems {
		require.Equal(t, "exclusive", c.Form.Get("tax_behavior"), c.Form)
	}
	for _, c := range items {
		require.NotEqual(t, nowhereCustomer, c.Form.Get("customer"), "the refused invoice got no items")
	}

	// The tax stored is the tax Stripe answered at finalize.
	status, body = call(t, "GET", v1+"/tenants/taxed/invoices", testToken, nil)
	require.Equal(t, http.StatusOK, status, body)
	inv := body["invoices"].([]any)[0].(map[string]any)
	require.Equal(t, "finalized", inv["state"])
	require.Equal(t, true, inv["automatic_tax"])
	require.Equal(t, "calculated by Stripe", inv["tax_note"])
	tap.mu.Lock()
	answer := tap.answers["/v1/invoices/"+inv["stripe_invoice_id"].(string)+"/finalize"]
	tap.mu.Unlock()
	var finalized struct {
		Tax int64 `json:"tax"`
	}
	require.NoError(t, json.Unmarshal(answer, &finalized), string(answer))
	require.EqualValues(t, finalized.Tax, inv["tax"])

	// Fixed, and billed again: only the refused invoice is sent.
	status, addr = call(t, "PUT", v1+"/tenants/nowhere/billing-address", testToken, map[string]any{"country": "US", "postal_code": "10001", "state": "NY"})
	require.Equal(t, http.StatusOK, status, addr)
	before := len(tap.callsTo("POST", regexp.MustCompile(`^/v1/invoices$`)))
	run = runOnce()
	require.Equal(t, "done", run["state"], run)
	require.EqualValues(t, 2, run["progress"].(map[string]any)["finalized"], run)
	again := tap.callsTo("POST", regexp.MustCompile(`^/v1/invoices$`))[before:]
	require.Len(t, again, 1)
	require.Equal(t, nowhereCustomer, again[0].Form.Get("customer"))
}
