// Package billing turns metered usage into monthly invoices in Stripe that
// never charge twice.
//
// Usage comes from three sources, all kept in the catalog per tenant, meter
// and UTC hour, and per period (UTC calendar month): the router's api_calls
// counters (catalog.Store.RecordUsageBatch), usage events the product posts
// (RecordUsageEvents, deduplicated by id for good), and a collector that
// samples each tenant database's size on its server (storage_bytes, billed
// as the period's maximum).
//
// A billing run prices every tenant billable in a period with the plan
// version in effect at the period's start (Price), stores each invoice with
// its lines in the catalog, then takes each through Stripe: a customer
// (created once per tenant), a draft invoice that excludes pending items,
// one invoice item per line, finalize. Every write carries an idempotency key
// built from the tenant, the period and the line, and each step's Stripe id
// is stored as soon as it is known, so a rerun, or a run after a crash at any
// step, sends no write twice and ends with one finalized invoice per tenant
// and period. Without a Stripe key, runs compute and store invoices marked
// not sent.
//
// Billing owns its tables: plan versions (prices), invoices and their lines,
// billing runs, billing customers and Stripe events. They live in the
// catalog database and its migrations create them, but only this package
// reads and writes them, through its store (store.go), in transactions from
// catalog.Store.InTx so that a change and its audit event commit together.
// The admin API reaches them through the Service (ListPlanVersions,
// CreatePlanVersion, ListRuns, GetRun, ListInvoices).
//
// Stripe webhooks (HandleWebhook) mark invoices paid or failed; a tenant
// whose sent invoice stays unpaid past the dunning grace is suspended through
// the Suspender (the provisioner's lifecycle), and resumed once it has paid.
//
//	svc, err := billing.New(store, billing.Config{StripeKey: key, Suspender: prov, Logger: logger})
//	err = svc.Start(ctx) // runs, schedule, dunning, storage collector
//	defer svc.Stop(ctx)
//	run, _, err := svc.StartRun(ctx, period, "admin")
package billing
