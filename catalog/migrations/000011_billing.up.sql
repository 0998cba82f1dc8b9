-- Billing: meters, versioned plan prices, usage, invoices and their progress in Stripe.

-- Meters: what usage is counted in, and how a period's usage of it adds up:
-- 'sum' adds every count in the period, 'max' takes the largest sample.
CREATE TABLE meters (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    aggregation text NOT NULL CHECK (aggregation IN ('sum', 'max')),
    unit        text NOT NULL,
    description text NOT NULL DEFAULT ''
);
INSERT INTO meters (name, aggregation, unit, description) VALUES
    ('api_calls', 'sum', 'call', 'requests to the tenant API'),
    ('storage_bytes', 'max', 'byte', 'size of the tenant database (pg_database_size), the period''s largest sample');

-- Plan prices, versioned beside the router limits in plans. A change is a new
-- version effective from a period start; a period is billed on the version in
-- effect at its start, so a price change never rewrites a period already begun.
CREATE TABLE plan_versions (
    plan           text NOT NULL REFERENCES plans (name),
    version        integer NOT NULL CHECK (version > 0),
    currency       text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    base_fee       bigint NOT NULL CHECK (base_fee >= 0),            -- minor units (cents) per period
    effective_from date NOT NULL CHECK (extract(day FROM effective_from) = 1), -- first period billed on it
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (plan, version),
    UNIQUE (plan, effective_from)
);

-- Per meter: a quantity included in the base fee, and a price for each unit
-- over it. unit_price_micros is in millionths of a minor unit per per_units
-- units, so sub-cent prices are exact integers ($0.01 a call: 1000000 per 1;
-- $0.25 a GiB: 25000000 per 1073741824 bytes).
CREATE TABLE plan_meter_prices (
    plan              text NOT NULL,
    version           integer NOT NULL,
    meter             text NOT NULL REFERENCES meters (name),
    included          bigint NOT NULL DEFAULT 0 CHECK (included >= 0),
    unit_price_micros bigint NOT NULL CHECK (unit_price_micros >= 0),
    per_units         bigint NOT NULL DEFAULT 1 CHECK (per_units > 0),
    PRIMARY KEY (plan, version, meter),
    FOREIGN KEY (plan, version) REFERENCES plan_versions (plan, version) ON DELETE CASCADE
);

-- The product's pricing: basic $5, pro $20, enterprise $100 a month; $0.01 per
-- API call from the first (included 0); storage over a per-plan allowance at
-- $0.25 per GiB-month.
INSERT INTO plan_versions (plan, version, currency, base_fee, effective_from) VALUES
    ('basic', 1, 'usd', 500, '2000-01-01'),
    ('pro', 1, 'usd', 2000, '2000-01-01'),
    ('enterprise', 1, 'usd', 10000, '2000-01-01');
INSERT INTO plan_meter_prices (plan, version, meter, included, unit_price_micros, per_units) VALUES
    ('basic', 1, 'api_calls', 0, 1000000, 1),
    ('pro', 1, 'api_calls', 0, 1000000, 1),
    ('enterprise', 1, 'api_calls', 0, 1000000, 1),
    ('basic', 1, 'storage_bytes', 1073741824, 25000000, 1073741824),
    ('pro', 1, 'storage_bytes', 10737418240, 25000000, 1073741824),
    ('enterprise', 1, 'storage_bytes', 107374182400, 25000000, 1073741824);

-- Usage per tenant, meter and UTC hour: the detail.
CREATE TABLE usage (
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    meter     text NOT NULL REFERENCES meters (name),
    bucket    timestamptz NOT NULL,
    quantity  bigint NOT NULL CHECK (quantity >= 0),
    PRIMARY KEY (tenant_id, meter, bucket)
);

-- Usage per tenant, meter and period (UTC calendar month), kept with the
-- hourly rows in the same transaction: what billing and the usage API read.
CREATE TABLE usage_periods (
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    meter      text NOT NULL REFERENCES meters (name),
    period     date NOT NULL CHECK (extract(day FROM period) = 1),
    quantity   bigint NOT NULL CHECK (quantity >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, meter, period)
);
CREATE INDEX usage_periods_period_idx ON usage_periods (period);

-- Batches of counters recorded (the router's flushes, the storage collector's
-- samples): a retried batch is a no-op. Pruned after a week.
CREATE TABLE usage_batches (
    id          text PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_batches_recorded_idx ON usage_batches (recorded_at);

-- Usage events posted by the product, kept for good: an id counts once, however
-- late it is sent again.
CREATE TABLE usage_events (
    id          text PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    meter       text NOT NULL REFERENCES meters (name),
    quantity    bigint NOT NULL CHECK (quantity >= 0),
    occurred_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- A tenant's Stripe customer, created once.
CREATE TABLE billing_customers (
    tenant_id          uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    stripe_customer_id text UNIQUE,
    attempted_at       timestamptz NOT NULL DEFAULT now() -- first attempt to create it
);

-- The schedule bills periods from schedule_from on: the first that began after
-- billing was installed, so an upgrade never bills a past month by itself (an
-- operator can, through the admin API).
CREATE TABLE billing_settings (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    schedule_from date NOT NULL CHECK (extract(day FROM schedule_from) = 1)
);
INSERT INTO billing_settings (schedule_from)
    VALUES ((date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month')::date);

-- Billing runs: one period, every tenant billable in it.
CREATE TABLE billing_runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    period      date NOT NULL CHECK (extract(day FROM period) = 1),
    state       text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'done', 'failed')),
    send        boolean NOT NULL,  -- sends invoices to Stripe; false: computes and stores them only
    trigger     text NOT NULL CHECK (trigger IN ('api', 'schedule')),
    actor       text NOT NULL,
    invoices    integer NOT NULL DEFAULT 0, -- invoices of the period when it finished
    failed      integer NOT NULL DEFAULT 0, -- of them, left unfinished by an error
    last_error  text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz
);
-- One unfinished run per period; one scheduled run per period.
CREATE UNIQUE INDEX billing_runs_open_idx ON billing_runs (period) WHERE state IN ('pending', 'running');
CREATE UNIQUE INDEX billing_runs_scheduled_idx ON billing_runs (period) WHERE trigger = 'schedule';

-- Invoices: one per tenant and period, computed once (its lines frozen), then
-- taken through Stripe step by step; each step's Stripe id is stored as soon
-- as it is known, so a rerun resumes where the last one stopped.
CREATE TABLE invoices (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id            uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    period               date NOT NULL CHECK (extract(day FROM period) = 1),
    plan                 text NOT NULL,
    plan_version         integer NOT NULL,
    currency             text NOT NULL,
    total                bigint NOT NULL,
    state                text NOT NULL DEFAULT 'computed'
                         CHECK (state IN ('computed', 'invoice_created', 'items_added', 'finalized')),
    payment              text NOT NULL DEFAULT 'none'
                         CHECK (payment IN ('none', 'open', 'paid', 'payment_failed', 'uncollectible', 'void')),
    run_id               bigint REFERENCES billing_runs (id),
    stripe_customer_id   text,
    stripe_invoice_id    text UNIQUE,
    send_started_at      timestamptz, -- first attempt to send it to Stripe
    last_error           text NOT NULL DEFAULT '',
    computed_at          timestamptz NOT NULL DEFAULT now(),
    finalized_at         timestamptz,
    paid_at              timestamptz,
    payment_failed_at    timestamptz,
    dunning_suspended_at timestamptz, -- the tenant was suspended for it
    UNIQUE (tenant_id, period)
);
CREATE INDEX invoices_period_idx ON invoices (period, state);
CREATE INDEX invoices_unpaid_idx ON invoices (finalized_at)
    WHERE state = 'finalized' AND payment IN ('open', 'payment_failed') AND dunning_suspended_at IS NULL;

-- Invoice lines: base fee, each meter's charge, adjustments for usage that
-- arrived after its period was invoiced. Amounts in minor units, each rounded
-- once (half up) from the exact micro-unit product.
CREATE TABLE invoice_lines (
    invoice_id        uuid NOT NULL REFERENCES invoices (id) ON DELETE CASCADE,
    line_no           integer NOT NULL CHECK (line_no > 0),
    kind              text NOT NULL CHECK (kind IN ('base_fee', 'usage', 'adjustment')),
    meter             text REFERENCES meters (name),
    usage_period      date,             -- the period whose usage it bills
    quantity          bigint NOT NULL DEFAULT 0 CHECK (quantity >= 0),
    included          bigint NOT NULL DEFAULT 0,
    unit_price_micros bigint NOT NULL DEFAULT 0,
    per_units         bigint NOT NULL DEFAULT 1,
    amount            bigint NOT NULL,
    description       text NOT NULL,
    stripe_item_id    text UNIQUE,
    PRIMARY KEY (invoice_id, line_no)
);

-- Stripe webhook events handled, for dedup.
CREATE TABLE stripe_events (
    id          text PRIMARY KEY,
    type        text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
