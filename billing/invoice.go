package billing

import "time"

// InvoiceState is how far an invoice has gone through Stripe. Each step's
// Stripe id is stored as soon as it is known, so a rerun resumes after it.
type InvoiceState string

const (
	InvoiceComputed   InvoiceState = "computed"        // lines priced and frozen; nothing in Stripe yet (or billing runs without Stripe)
	InvoiceCreated    InvoiceState = "invoice_created" // the draft invoice exists in Stripe
	InvoiceItemsAdded InvoiceState = "items_added"     // every line is an invoice item on it
	InvoiceFinalized  InvoiceState = "finalized"       // finalized in Stripe: sent
)

// PaymentStatus is what Stripe reports about an invoice's payment.
type PaymentStatus string

const (
	PaymentNone          PaymentStatus = "none" // not sent
	PaymentOpen          PaymentStatus = "open" // finalized, awaiting payment
	PaymentPaid          PaymentStatus = "paid"
	PaymentFailed        PaymentStatus = "payment_failed"
	PaymentUncollectible PaymentStatus = "uncollectible"
	PaymentVoid          PaymentStatus = "void"
)

// LineKind is what an invoice line charges for.
type LineKind string

const (
	LineBaseFee    LineKind = "base_fee"
	LineUsage      LineKind = "usage"      // a meter's usage in the invoice's period
	LineAdjustment LineKind = "adjustment" // usage of an earlier, already invoiced period that arrived late
)

// InvoiceLine is one charge. Amount is in minor units, rounded once from the
// exact product of quantity and price (Charge is the rule).
type InvoiceLine struct {
	No              int      `json:"line"`
	Kind            LineKind `json:"kind"`
	Meter           string   `json:"meter,omitempty"`
	UsagePeriod     string   `json:"usage_period,omitempty"` // YYYY-MM whose usage it bills
	Quantity        int64    `json:"quantity"`
	Included        int64    `json:"included"`
	UnitPriceMicros int64    `json:"unit_price_micros"`
	PerUnits        int64    `json:"per_units"`
	Amount          int64    `json:"amount"`
	Description     string   `json:"description"`
	StripeItemID    string   `json:"stripe_item_id,omitempty"`
}

// Invoice is a tenant's invoice for a period.
type Invoice struct {
	ID          string `json:"id"`
	TenantID    string `json:"tenant_id"`
	Tenant      string `json:"tenant"` // slug
	TenantName  string `json:"-"`
	Period      string `json:"period"` // YYYY-MM
	Plan        string `json:"plan"`
	PlanVersion int    `json:"plan_version"`
	Currency    string `json:"currency"`
	Total       int64  `json:"total"` // minor units, before tax
	// Tax is the tax Stripe computed (automatic tax), in minor units: on
	// top of Total. Nil when Stripe computes none, or not yet.
	Tax          *int64 `json:"tax"`
	AutomaticTax bool   `json:"automatic_tax"`
	// TaxNote says who computes the tax: TaxCalculatedByStripe under
	// automatic tax.
	TaxNote            string        `json:"tax_note,omitempty"`
	State              InvoiceState  `json:"state"`
	Sent               bool          `json:"sent"` // finalized in Stripe
	Payment            PaymentStatus `json:"payment"`
	StripeCustomerID   string        `json:"stripe_customer_id,omitempty"`
	StripeInvoiceID    string        `json:"stripe_invoice_id,omitempty"`
	RunID              int64         `json:"run_id,omitempty"`
	LastError          string        `json:"last_error,omitempty"`
	ComputedAt         time.Time     `json:"computed_at"`
	SendStartedAt      *time.Time    `json:"send_started_at,omitempty"`
	FinalizedAt        *time.Time    `json:"finalized_at,omitempty"`
	PaidAt             *time.Time    `json:"paid_at,omitempty"`
	PaymentFailedAt    *time.Time    `json:"payment_failed_at,omitempty"`
	DunningSuspendedAt *time.Time    `json:"dunning_suspended_at,omitempty"`
	Lines              []InvoiceLine `json:"lines"`
}

// InvoiceInputs is everything pricing a tenant's period needs.
type InvoiceInputs struct {
	TenantID   string
	Tenant     string // slug
	TenantName string
	Period     string // YYYY-MM
	Version    PlanVersion
	// Usage is the period's usage per meter.
	Usage map[string]int64
	// Late is usage of earlier periods, already invoiced, that arrived after
	// their invoice was computed and no invoice has billed yet.
	Late []LateUsage
}

// LateUsage is a meter's usage of an invoiced period beyond what was billed for it.
type LateUsage struct {
	Meter          string
	Period         string      // YYYY-MM the usage belongs to
	Version        PlanVersion // the version that period was billed on
	Total          int64       // the period's usage now
	BilledQuantity int64       // what its lines (and earlier adjustments) accounted for
	BilledAmount   int64       // what they charged for it
}
