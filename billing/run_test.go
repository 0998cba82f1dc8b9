package billing_test

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/billing"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/stripetest"
)

// TestRunAgainstStripeMock bills tenants through stripe-mock and records
// every request: each write carries its deterministic idempotency key, every
// invoice ends finalized with its Stripe ids stored, and a second run sends
// nothing at all.
func TestRunAgainstStripeMock(t *testing.T) {
	t.Parallel()
	b := setup(t)
	mock := stripetest.Shared(t)
	rec, hc := newRecorder()
	svc := b.service(t, billing.Config{StripeKey: stripetest.Key, StripeAPIBase: mock.URL, StripeHTTPClient: hc, Concurrency: 4})
	require.True(t, svc.SendsToStripe())
	var tenants []catalog.Tenant
	for i := range 6 {
		tn := b.addTenant(t, fmt.Sprintf("tenant-%d", i), []string{"basic", "pro"}[i%2])
		if i != 5 { // one tenant made no calls: a base fee only
			b.usage(t, tn.ID, b.last, int64(100*(i+1)))
		}
		tenants = append(tenants, tn)
	}
	run := b.run(t, svc, b.last)
	require.Equal(t, billing.BillingRunDone, run.State, run.LastError)
	require.True(t, run.Send)
	require.Equal(t, 6, run.Invoices)
	require.Equal(t, 6, run.Progress.Finalized)
	require.Empty(t, run.Failures)

	period := catalog.FormatPeriod(b.last)
	want := map[string]bool{}
	for _, tn := range tenants {
		inv := b.invoice(t, tn.ID, b.last)
		require.Equal(t, billing.InvoiceFinalized, inv.State)
		require.True(t, inv.Sent)
		require.Equal(t, billing.PaymentOpen, inv.Payment)
		require.NotEmpty(t, inv.StripeInvoiceID)
		require.NotEmpty(t, inv.StripeCustomerID)
		want[billing.CustomerKey(tn.ID)] = true
		want[billing.InvoiceKey(tn.ID, period)] = true
		want[billing.FinalizeKey(tn.ID, period)] = true
		for _, l := range inv.Lines {
			require.NotEmpty(t, l.StripeItemID, "line %d of %s", l.No, tn.Slug)
			want[billing.ItemKey(tn.ID, period, l.No)] = true
		}
	}
	got := map[string]bool{}
	for _, r := range writes(rec.take()) {
		require.Equal(t, http.StatusOK, r.Status, r)
		require.NotEmpty(t, r.IdempotencyKey, "every write carries an idempotency key: %+v", r)
		require.False(t, got[r.IdempotencyKey], "key %s sent twice", r.IdempotencyKey)
		got[r.IdempotencyKey] = true
		switch {
		case r.Path == "/v1/customers":
			require.Regexp(t, `^tenantplane-customer-[0-9a-f-]{36}$`, r.IdempotencyKey)
		case r.Path == "/v1/invoices":
			require.Regexp(t, `^tenantplane-invoice-[0-9a-f-]{36}-`+period+`$`, r.IdempotencyKey)
		case r.Path == "/v1/invoiceitems":
			require.Regexp(t, `^tenantplane-item-[0-9a-f-]{36}-`+period+`-[0-9]+$`, r.IdempotencyKey)
		default:
			require.Regexp(t, `^/v1/invoices/[^/]+/finalize$`, r.Path)
			require.Regexp(t, `^tenantplane-finalize-[0-9a-f-]{36}-`+period+`$`, r.IdempotencyKey)
		}
	}
	require.Equal(t, want, got)

	// A second run of the period sends nothing: no write, no read.
	again := b.run(t, svc, b.last)
	require.Equal(t, billing.BillingRunDone, again.State)
	require.NotEqual(t, run.ID, again.ID)
	require.Empty(t, rec.take())

	// The next period reuses each tenant's customer.
	next := b.last.AddDate(0, -1, 0)
	b.run(t, svc, next)
	for _, r := range writes(rec.take()) {
		require.NotEqual(t, "/v1/customers", r.Path, "a customer is created once per tenant")
	}
}

// TestRunResumesAfterEveryFault injects, at each Stripe step, a failure (a
// 500, nothing done) and a lost answer (done, the answer dropped, as if the
// process died before storing it), then reruns: each tenant ends with one
// customer, one invoice with one item per line, finalized once.
func TestRunResumesAfterEveryFault(t *testing.T) {
	t.Parallel()
	for _, op := range []string{"customer.create", "invoice.create", "invoiceitem.create", "invoice.finalize"} {
		for _, kind := range []string{"fail", "drop"} {
			t.Run(op+"/"+kind, func(t *testing.T) {
				t.Parallel()
				b := setup(t)
				rec, hc := newRecorder()
				svc := b.service(t, billing.Config{StripeKey: stripetest.Key, StripeAPIBase: stripetest.Shared(t).URL, StripeHTTPClient: hc, StripeRetries: -1, Concurrency: 2})
				tenants := b.billedTenants(t, 3)
				// The second call of the step fails for one tenant; the others go through.
				rec.set(hooks{fault: func(o string, n int) string {
					if o == op && n == 2 {
						return kind
					}
					return ""
				}})
				first := b.run(t, svc, b.last)
				require.Equal(t, billing.BillingRunFailed, first.State)
				require.Equal(t, 1, first.Failed)
				require.Len(t, first.Failures, 1)
				require.Contains(t, first.Failures[0].Error, op)

				second := b.run(t, svc, b.last)
				require.Equal(t, billing.BillingRunDone, second.State, second.LastError)
				requireOneInvoiceEach(t, b, rec, tenants)
				third := b.run(t, svc, b.last)
				require.Equal(t, billing.BillingRunDone, third.State)
				requireOneInvoiceEach(t, b, rec, tenants)
			})
		}
	}
}

// requireOneInvoiceEach proves, from the catalog and the calls rec recorded
// on the way to stripe-mock, that Stripe holds for each tenant (and for no
// one else) one customer, one invoice of the period with one item per line
// and of its amount, finalized once; and that the catalog holds their ids.
//
// stripe-mock keeps nothing, so "one" is proven by idempotency keys. Each
// Stripe write makes one thing, named by the request itself (our metadata;
// for a finalization, the invoice in its path): a tenant's customer, an
// invoice, a line's item, an invoice's finalization. After the first call
// for a thing that may have reached Stripe (every call but an injected
// "fail"), every call for it must be the same request: the same
// Idempotency-Key, path and parameters, which Stripe answers from its record
// of the first instead of doing it again. Once Stripe has forgotten the keys
// (rec.forget), no call may make again a thing made before; a finalization
// may be asked again, as Stripe refuses to finalize an invoice that is not a
// draft.
func requireOneInvoiceEach(t *testing.T, b *testBundle, rec *recorder, tenants []catalog.Tenant) {
	t.Helper()
	calls, forgotAt := rec.history()
	made := map[string]recorded{} // Stripe id -> the create that made it (its answer may have been dropped)
	for _, c := range calls {
		if strings.HasSuffix(c.Op, ".create") && c.reached() && c.ID != "" {
			made[c.ID] = c
		}
	}
	// thing names what a write makes in Stripe ("" for a read).
	thing := func(c recorded) string {
		switch c.Op {
		case "customer.create":
			return "the customer of tenant " + c.meta("tenantplane_tenant_id")
		case "invoice.create":
			return "the Stripe invoice of invoice " + c.meta("tenantplane_invoice_id")
		case "invoiceitem.create":
			return itemOf(c.meta("tenantplane_invoice_id"), c.meta("tenantplane_line"))
		case "invoice.finalize":
			si := made[strings.Split(c.Path, "/")[3]]
			require.Equal(t, "invoice.create", si.Op, "%s finalizes an invoice no recorded call made", c.Path)
			return finalizationOf(si.meta("tenantplane_invoice_id"))
		}
		require.Equal(t, http.MethodGet, c.Method, "a write this check cannot account for: %+v", c)
		return ""
	}
	first := map[string]recorded{}
	at := map[string]int{} // thing -> the index of its first call
	for i, c := range calls {
		th := thing(c)
		if th == "" || !c.reached() {
			continue
		}
		f, seen := first[th]
		if !seen {
			first[th], at[th] = c, i
			continue
		}
		require.Equal(t, f.IdempotencyKey, c.IdempotencyKey, "%s: asked again under another key, Stripe would make it twice", th)
		require.Equal(t, f.Path, c.Path, "%s: key %s sent again to another path", th, c.IdempotencyKey)
		require.Equal(t, f.Form, c.Form, "%s: key %s sent again with other parameters", th, c.IdempotencyKey)
		if forgotAt >= 0 && i >= forgotAt && c.Op != "invoice.finalize" && slices.IndexFunc(calls[:forgotAt], func(p recorded) bool { return p.reached() && thing(p) == th }) >= 0 {
			require.Failf(t, "made twice", "%s: asked again after Stripe forgot its key, Stripe would make it twice", th)
		}
	}

	invoices := map[string]billing.Invoice{} // our invoice id -> it
	for _, tn := range tenants {
		inv := b.invoice(t, tn.ID, b.last)
		invoices[inv.ID] = inv
		require.Equal(t, billing.InvoiceFinalized, inv.State, tn.Slug)
		require.True(t, inv.Sent, tn.Slug)
		customer := b.storedCustomer(t, tn.ID)
		require.Equal(t, customer, inv.StripeCustomerID, "%s: invoiced to its one customer", tn.Slug)
		require.Equal(t, tn.ID, made[customer].meta("tenantplane_tenant_id"), "%s: its customer %s is one made for it", tn.Slug, customer)
		si := made[inv.StripeInvoiceID]
		require.Equal(t, inv.ID, si.meta("tenantplane_invoice_id"), "%s: its Stripe invoice %s is one made for its invoice", tn.Slug, inv.StripeInvoiceID)
		require.Equal(t, customer, si.Form.Get("customer"), tn.Slug)
		// A draft that Stripe neither finalizes by itself nor fills with
		// the customer's pending items: billing puts its items on it.
		require.Equal(t, []string{"false", "exclude", inv.Currency}, []string{si.Form.Get("auto_advance"), si.Form.Get("pending_invoice_items_behavior"), si.Form.Get("currency")}, tn.Slug)
		require.Equal(t, catalog.FormatPeriod(b.last), si.meta("tenantplane_period"), tn.Slug)
		finalization := finalizationOf(inv.ID)
		require.Contains(t, first, finalization, "%s: finalized", tn.Slug)
		require.Equal(t, "/v1/invoices/"+inv.StripeInvoiceID+"/finalize", first[finalization].Path, tn.Slug)
		require.Equal(t, "true", first[finalization].Form.Get("auto_advance"), "%s: finalized for Stripe to collect", tn.Slug)
		for _, l := range inv.Lines {
			if l.Amount == 0 {
				require.Empty(t, l.StripeItemID, "%s: line %d charges nothing", tn.Slug, l.No)
				continue
			}
			item := made[l.StripeItemID]
			require.Equal(t, []string{inv.ID, strconv.Itoa(l.No)}, []string{item.meta("tenantplane_invoice_id"), item.meta("tenantplane_line")},
				"%s: line %d's item %s is one made for it", tn.Slug, l.No, l.StripeItemID)
			require.Equal(t, inv.StripeInvoiceID, item.Form.Get("invoice"), "%s: line %d", tn.Slug, l.No)
			require.Equal(t, []string{strconv.FormatInt(l.Amount, 10), inv.Currency}, []string{item.Form.Get("amount"), item.Form.Get("currency")}, "%s: line %d", tn.Slug, l.No)
			require.False(t, item.Form.Has("price") || item.Form.Has("unit_amount"), "%s: line %d: an amount, not a price", tn.Slug, l.No)
			require.Less(t, at[itemOf(inv.ID, strconv.Itoa(l.No))], at[finalization], "%s: line %d's item goes on the draft, before it is finalized", tn.Slug, l.No)
		}
	}
	// Nothing else was made: no invoice but these, no item but theirs.
	for th, c := range first {
		switch c.Op {
		case "customer.create":
			require.True(t, slices.ContainsFunc(tenants, func(tn catalog.Tenant) bool { return tn.ID == c.meta("tenantplane_tenant_id") }), th)
		case "invoice.create", "invoiceitem.create":
			inv, ok := invoices[c.meta("tenantplane_invoice_id")]
			require.True(t, ok, "%s: not an invoice of these tenants for the period", th)
			charged := func(l billing.InvoiceLine) bool {
				return strconv.Itoa(l.No) == c.meta("tenantplane_line") && l.Amount != 0
			}
			if c.Op == "invoiceitem.create" && !slices.ContainsFunc(inv.Lines, charged) {
				require.Failf(t, "an item of no line", "%s: the invoice has no such line to charge", th)
			}
		}
	}
}

// itemOf and finalizationOf name things requireOneInvoiceEach checks.
func itemOf(invoiceID, line string) string {
	return "the item of line " + line + " of invoice " + invoiceID
}

func finalizationOf(invoiceID string) string { return "the finalization of invoice " + invoiceID }

// TestRunRecoversAfterIdempotencyKeysExpire drops Stripe's answer at a step,
// then reruns more than a day later, when Stripe has forgotten the keys: the
// run finds what the first attempt made (by its metadata) instead of making
// it again.
func TestRunRecoversAfterIdempotencyKeysExpire(t *testing.T) {
	t.Parallel()
	for _, op := range []string{"customer.create", "invoice.create", "invoiceitem.create", "invoice.finalize"} {
		t.Run(op, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			rec, hc := newRecorder()
			tn := b.addTenant(t, "slow-payer", "pro")
			b.usage(t, tn.ID, b.last, 77)
			svc := b.service(t, billing.Config{StripeKey: stripetest.Key, StripeAPIBase: stripetest.Shared(t).URL, StripeHTTPClient: hc, StripeRetries: -1})
			rec.set(hooks{fault: func(o string, n int) string {
				if o == op {
					return "drop"
				}
				return ""
			}})
			require.Equal(t, billing.BillingRunFailed, b.run(t, svc, b.last).State)

			// A day later, Stripe has forgotten the keys. The catalog's clock
			// has not moved: age the first attempts instead.
			rec.forget()
			rec.set(aDayLater(t, rec))
			_, err := b.store.Pool().Exec(context.Background(), `UPDATE billing_customers SET attempted_at = attempted_at - interval '25 hours'`)
			require.NoError(t, err)
			_, err = b.store.Pool().Exec(context.Background(), `UPDATE invoices SET send_started_at = send_started_at - interval '25 hours'`)
			require.NoError(t, err)

			run := b.run(t, svc, b.last)
			require.Equal(t, billing.BillingRunDone, run.State, run.LastError)
			requireOneInvoiceEach(t, b, rec, []catalog.Tenant{tn})
		})
	}
}

// aDayLater answers as Stripe does about the objects the calls recorded
// before rec.forget made, which stripe-mock cannot: it keeps nothing, so it
// finds none of them and finalizes any invoice anew. The hooks change only
// these answers; every call is still checked by stripe-mock but a refused
// finalization:
//   - a search of customers, or a list of invoices or of items, holds the
//     objects made before that match it (in place of stripe-mock's fixture,
//     whose id and metadata are not ours);
//   - an invoice finalized before reads as open (stripe-mock's is a draft),
//     and finalizing it again is refused with Stripe's 400.
func aDayLater(t *testing.T, rec *recorder) hooks {
	before := func() []recorded {
		calls, forgotAt := rec.history()
		return calls[:forgotAt]
	}
	finalized := func(stripeInvoiceID string) bool {
		return slices.ContainsFunc(before(), func(c recorded) bool {
			return c.Op == "invoice.finalize" && c.reached() && c.Path == "/v1/invoices/"+stripeInvoiceID+"/finalize"
		})
	}
	return hooks{
		instead: func(c recorded) (int, string, bool) {
			if c.Op == "invoice.finalize" && finalized(strings.Split(c.Path, "/")[3]) {
				return http.StatusBadRequest, `{"error": {"type": "invalid_request_error", "message": "This invoice is already finalized, you can't re-finalize a non-draft invoice."}}`, true
			}
			return 0, "", false
		},
		edit: func(c recorded, answer map[string]any) {
			var create string // the call that makes what c looks for
			var match func(made recorded) bool
			switch c.Op {
			case "invoice.get":
				if finalized(strings.Split(c.Path, "/")[3]) {
					answer["status"] = "open"
				}
				return
			case "customer.search":
				m := regexp.MustCompile(`^metadata\['([^']+)'\]:'([^']*)'$`).FindStringSubmatch(c.Form.Get("query"))
				if m == nil {
					t.Errorf("a search billing does not make: %s", c.Form.Get("query"))
					return
				}
				create, match = "customer.create", func(p recorded) bool { return p.meta(m[1]) == m[2] }
			case "invoice.list":
				create, match = "invoice.create", func(p recorded) bool { return p.Form.Get("customer") == c.Form.Get("customer") }
			case "invoiceitem.list":
				create, match = "invoiceitem.create", func(p recorded) bool { return p.Form.Get("invoice") == c.Form.Get("invoice") }
			default:
				return
			}
			var fixture map[string]any
			if data, _ := answer["data"].([]any); len(data) > 0 {
				fixture, _ = data[0].(map[string]any)
			}
			data := []any{}
			for _, p := range before() {
				if p.Op == create && p.reached() && p.ID != "" && match(p) {
					obj := maps.Clone(fixture)
					obj["id"] = p.ID
					metadata := map[string]any{}
					for k, v := range p.Form {
						if name, ok := strings.CutPrefix(k, "metadata["); ok {
							metadata[strings.TrimSuffix(name, "]")] = v[0]
						}
					}
					obj["metadata"] = metadata
					data = append(data, obj)
				}
			}
			answer["data"] = data
		},
	}
}

// TestRunResumesAfterCrash stops a process in the middle of a run (its
// context ends, as in a shutdown or a kill): the run stays running, and
// another process takes it over and finishes it, nothing made twice.
func TestRunResumesAfterCrash(t *testing.T) {
	t.Parallel()
	b := setup(t)
	mock := stripetest.Shared(t)
	rec, hc := newRecorder()
	var tenants []catalog.Tenant
	for i := range 20 {
		tn := b.addTenant(t, fmt.Sprintf("c-%02d", i), "pro")
		b.usage(t, tn.ID, b.last, int64(i))
		tenants = append(tenants, tn)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var once sync.Once
	rec.set(hooks{fault: func(op string, n int) string {
		if op == "invoiceitem.create" && n == 10 {
			once.Do(cancel) // the process goes away mid-run
		}
		return ""
	}})
	first := b.service(t, billing.Config{StripeKey: stripetest.Key, StripeAPIBase: mock.URL, StripeHTTPClient: hc, Concurrency: 3})
	run, _, err := first.StartRun(context.Background(), b.last, "test")
	require.NoError(t, err)
	_, err = first.ProcessRun(ctx, run.ID)
	require.Error(t, err)
	got, err := b.billing.GetBillingRun(context.Background(), run.ID)
	require.NoError(t, err)
	require.Equal(t, billing.BillingRunRunning, got.State, "left for another process")
	require.Less(t, got.Progress.Finalized, 20)

	// Another process, polling, takes it over.
	second := b.service(t, billing.Config{StripeKey: stripetest.Key, StripeAPIBase: mock.URL, StripeHTTPClient: hc, Concurrency: 3, PollInterval: 50 * time.Millisecond})
	require.NoError(t, second.Start(context.Background()))
	t.Cleanup(func() { _ = second.Stop(context.Background()) })
	require.Eventually(t, func() bool {
		r, err := b.billing.GetBillingRun(context.Background(), run.ID)
		return err == nil && r.State == billing.BillingRunDone
	}, 30*time.Second, 50*time.Millisecond)
	requireOneInvoiceEach(t, b, rec, tenants)
}

// TestRunHeldByOneProcess shows two processes never work one run at once.
func TestRunHeldByOneProcess(t *testing.T) {
	t.Parallel()
	b := setup(t)
	mock := stripetest.Shared(t)
	rec, hc := newRecorder()
	tn := b.addTenant(t, "acme", "basic")
	b.usage(t, tn.ID, b.last, 1)
	hold := make(chan struct{})
	entered := make(chan struct{})
	var once sync.Once
	rec.set(hooks{fault: func(op string, n int) string {
		if op == "customer.create" {
			once.Do(func() { close(entered) })
			<-hold
		}
		return ""
	}})
	svc := b.service(t, billing.Config{StripeKey: stripetest.Key, StripeAPIBase: mock.URL, StripeHTTPClient: hc})
	other := b.service(t, billing.Config{StripeKey: stripetest.Key, StripeAPIBase: mock.URL, StripeHTTPClient: hc})
	run, _, err := svc.StartRun(context.Background(), b.last, "test")
	require.NoError(t, err)
	done := make(chan billing.BillingRun)
	go func() {
		r, err := svc.ProcessRun(context.Background(), run.ID)
		require.NoError(t, err)
		done <- r
	}()
	<-entered
	_, err = other.ProcessRun(context.Background(), run.ID)
	require.ErrorIs(t, err, catalog.ErrConflict)
	// Asking for a run of the period again returns the one running.
	again, created, err := other.StartRun(context.Background(), b.last, "test")
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, run.ID, again.ID)
	close(hold)
	require.Equal(t, billing.BillingRunDone, (<-done).State)
}

func TestStartRunRefusesAnOpenPeriod(t *testing.T) {
	t.Parallel()
	b := setup(t)
	svc := b.service(t, billing.Config{})
	_, _, err := svc.StartRun(context.Background(), time.Now(), "test")
	require.ErrorIs(t, err, catalog.ErrInvalid)
	require.Contains(t, catalog.MessageOf(err), "still open")
}

// TestLocalInvoicesAreSentLater computes invoices without Stripe, then sends
// them when Stripe is configured.
func TestLocalInvoicesAreSentLater(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tn := b.addTenant(t, "acme", "pro")
	b.usage(t, tn.ID, b.last, 10)
	local := b.run(t, b.service(t, billing.Config{}), b.last)
	require.Equal(t, billing.BillingRunDone, local.State)
	require.Equal(t, 1, local.Progress.Computed)
	inv := b.invoice(t, tn.ID, b.last)
	require.False(t, inv.Sent)

	rec, hc := newRecorder()
	sent := b.run(t, b.service(t, billing.Config{StripeKey: stripetest.Key, StripeAPIBase: stripetest.Shared(t).URL, StripeHTTPClient: hc}), b.last)
	require.Equal(t, billing.BillingRunDone, sent.State)
	require.True(t, b.invoice(t, tn.ID, b.last).Sent)
	requireOneInvoiceEach(t, b, rec, []catalog.Tenant{tn})
}

// TestLateUsageIsAdjustedOnTheNextInvoice invoices a period, then records
// usage of it that arrived late: the next invoice carries it as an
// adjustment line, once.
func TestLateUsageIsAdjustedOnTheNextInvoice(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	tn := b.addTenant(t, "acme", "basic")
	svc := b.service(t, billing.Config{})
	before := b.last.AddDate(0, -1, 0)
	b.usage(t, tn.ID, before, 100)
	b.run(t, svc, before)
	require.Equal(t, int64(600), b.invoice(t, tn.ID, before).Total)

	// 250 calls of that period arrive after its invoice.
	_, err := svc.RecordUsageEvents(ctx, []catalog.UsageEvent{{ID: "late-1", Tenant: tn.Slug, Meter: catalog.MeterAPICalls, Quantity: 250, Timestamp: before.Add(48 * time.Hour)}})
	require.NoError(t, err)
	b.usage(t, tn.ID, b.last, 40)

	// The preview of the open period shows nothing late: it was not this
	// period's; the next invoice (b.last) takes it.
	b.run(t, svc, b.last)
	inv := b.invoice(t, tn.ID, b.last)
	require.Len(t, inv.Lines, 3)
	adj := inv.Lines[2]
	require.Equal(t, billing.LineAdjustment, adj.Kind)
	require.Equal(t, catalog.FormatPeriod(before), adj.UsagePeriod)
	require.Equal(t, int64(250), adj.Quantity)
	require.Equal(t, int64(250), adj.Amount)
	require.Contains(t, adj.Description, "recorded after it was invoiced")
	require.Equal(t, int64(500+40+250), inv.Total)
	require.Equal(t, int64(600), b.invoice(t, tn.ID, before).Total, "an invoice never changes once computed")

	// Nothing late is left: the open period's preview has no adjustment.
	prev, err := svc.Preview(ctx, tn.Slug, time.Time{})
	require.NoError(t, err)
	require.Equal(t, billing.StatePreview, prev.State)
	require.Len(t, prev.Lines, 1, "the base fee only")

	// More late usage of the same period: adjusted again, only for the new part.
	_, err = svc.RecordUsageEvents(ctx, []catalog.UsageEvent{{ID: "late-2", Tenant: tn.Slug, Meter: catalog.MeterAPICalls, Quantity: 5, Timestamp: before.Add(49 * time.Hour)}})
	require.NoError(t, err)
	prev, err = svc.Preview(ctx, tn.Slug, time.Time{})
	require.NoError(t, err)
	require.Len(t, prev.Lines, 2)
	require.Equal(t, int64(5), prev.Lines[1].Quantity)
	require.Equal(t, int64(505), prev.Total)

	// A period already invoiced previews as stored.
	stored, err := svc.Preview(ctx, tn.Slug, b.last)
	require.NoError(t, err)
	require.Equal(t, inv.ID, stored.ID)
}

// TestScheduleStartsOneRunAfterTheGrace starts the run of the last period
// once its grace has passed, once, whatever the number of replicas.
func TestScheduleStartsOneRunAfterTheGrace(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tn := b.addTenant(t, "acme", "basic")
	b.usage(t, tn.ID, b.last, 3)
	// A catalog migrated this month schedules from the next period on: an
	// upgrade does not bill the last month by itself.
	from, err := b.billing.ScheduleFrom(context.Background())
	require.NoError(t, err)
	require.Equal(t, catalog.PeriodEnd(time.Now()), from)
	early, err := billing.New(b.store, billing.Config{Logger: testLogger(), StorageInterval: -1, BillingGrace: time.Nanosecond,
		ScheduleInterval: 20 * time.Millisecond, PollInterval: 20 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, early.Start(context.Background()))
	time.Sleep(200 * time.Millisecond)
	require.NoError(t, early.Stop(context.Background()))
	runs, _, err := b.billing.ListBillingRuns(context.Background(), "", 10, "")
	require.NoError(t, err)
	require.Empty(t, runs)

	_, err = b.store.Pool().Exec(context.Background(), `UPDATE billing_settings SET schedule_from = $1`, b.last.AddDate(0, -1, 0))
	require.NoError(t, err)
	var svcs []*billing.Service
	for range 3 {
		svc, err := billing.New(b.store, billing.Config{Logger: testLogger(), StorageInterval: -1, BillingGrace: time.Nanosecond,
			ScheduleInterval: 20 * time.Millisecond, PollInterval: 20 * time.Millisecond})
		require.NoError(t, err)
		require.NoError(t, svc.Start(context.Background()))
		t.Cleanup(func() { _ = svc.Stop(context.Background()) })
		svcs = append(svcs, svc)
	}
	require.Eventually(t, func() bool {
		runs, _, err := b.billing.ListBillingRuns(context.Background(), catalog.FormatPeriod(b.last), 10, "")
		return err == nil && len(runs) == 1 && runs[0].State == billing.BillingRunDone
	}, 20*time.Second, 20*time.Millisecond)
	time.Sleep(100 * time.Millisecond)
	runs, _, err = b.billing.ListBillingRuns(context.Background(), "", 10, "")
	require.NoError(t, err)
	require.Len(t, runs, 1)
	require.Equal(t, billing.TriggerSchedule, runs[0].Trigger)
	require.Equal(t, int64(503), b.invoice(t, tn.ID, b.last).Total)
	_ = svcs
}
