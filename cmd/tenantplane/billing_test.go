package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestWriteInvoice(t *testing.T) {
	t.Parallel()
	var inv Invoice
	require.NoError(t, json.Unmarshal([]byte(`{"tenant": "acme", "period": "2026-03", "plan": "basic", "plan_version": 1,
		"currency": "usd", "total": 10500, "state": "finalized", "sent": true, "payment": "open", "stripe_invoice_id": "in_1",
		"lines": [{"line": 1, "kind": "base_fee", "amount": 500, "description": "Basic plan, March 2026"},
		          {"line": 2, "kind": "usage", "meter": "api_calls", "quantity": 10000, "amount": 10000, "description": "api_calls, March 2026: 10,000, at $0.01 per"}]}`), &inv))
	var buf bytes.Buffer
	require.NoError(t, writeInvoice(&buf, inv))
	require.Equal(t, ""+
		"Invoice for acme, 2026-03: basic plan v1, finalized\n"+
		"\n"+
		"LINE  DESCRIPTION                                  AMOUNT\n"+
		"1     Basic plan, March 2026                       $5.00\n"+
		"2     api_calls, March 2026: 10,000, at $0.01 per  $100.00\n"+
		"-     TOTAL                                        $105.00\n", buf.String())

	buf.Reset()
	require.NoError(t, writeInvoices(&buf, []Invoice{inv}))
	require.Equal(t, ""+
		"PERIOD   PLAN      TOTAL    STATE      SENT  PAYMENT  STRIPE_INVOICE\n"+
		"2026-03  basic v1  $105.00  finalized  true  open     in_1\n", buf.String())
	buf.Reset()
	require.NoError(t, writeInvoices(&buf, nil))
	require.Equal(t, "No invoices.\n", buf.String())
}

func TestWriteBillingRun(t *testing.T) {
	t.Parallel()
	var run BillingRun
	require.NoError(t, json.Unmarshal([]byte(`{"id": 7, "period": "2026-03", "state": "failed", "send": true, "trigger": "api", "actor": "admin",
		"invoices": 3, "failed": 1, "last_error": "", "started_at": "2026-04-02T10:00:00Z", "finished_at": "2026-04-02T10:00:09Z",
		"progress": {"invoices": 3, "computed": 0, "invoice_created": 1, "items_added": 0, "finalized": 2, "failed": 1},
		"failures": [{"tenant": "globex", "invoice_id": "x", "state": "invoice_created", "error": "invoiceitem.create: Stripe answered 500: boom"}]}`), &run))
	require.Equal(t, "failed, 2/3 invoices finalized, 1 failed", run.progressText())
	var buf bytes.Buffer
	require.NoError(t, writeBillingRun(&buf, run))
	out := buf.String()
	require.Contains(t, out, "INVOICES:  3: 2 finalized, 0 computed, 1 invoice created, 0 items added; 1 failed")
	require.Contains(t, out, "globex  invoice_created  invoiceitem.create: Stripe answered 500: boom")

	buf.Reset()
	require.NoError(t, writeBillingRuns(&buf, []BillingRun{run}))
	require.Equal(t, ""+
		"RUN  PERIOD   STATE   SENT  INVOICES  FAILED  TRIGGER  FINISHED\n"+
		"7    2026-03  failed  true  3         1       api      2026-04-02T10:00:09Z\n", buf.String())
}

func TestWriteUsage(t *testing.T) {
	t.Parallel()
	var page UsagePage
	require.NoError(t, json.Unmarshal([]byte(`{"period": "2026-03", "tenants": [
		{"tenant": "acme", "usage": {"api_calls": 12000, "storage_bytes": 8388608}},
		{"tenant": "globex", "usage": {"api_calls": 5}}], "totals": {"api_calls": 12005, "storage_bytes": 8388608}}`), &page))
	var buf bytes.Buffer
	require.NoError(t, writeUsage(&buf, page))
	require.Equal(t, ""+
		"Usage in 2026-03:\n"+
		"\n"+
		"TENANT  API_CALLS  STORAGE_BYTES\n"+
		"acme    12,000     8,388,608\n"+
		"globex  5          0\n"+
		"TOTAL   12,005     8,388,608\n", buf.String())
}

func TestBillingFlagErrors(t *testing.T) {
	t.Parallel()
	url := closedURL(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"billing", "run"}, "--period is required"},
		{[]string{"billing", "run", "--period", "March"}, "must be a month written YYYY-MM"},
		{[]string{"billing", "status"}, "accepts 1 arg(s), received 0"},
		{[]string{"billing", "preview"}, "accepts 1 arg(s), received 0"},
		{[]string{"usage", "record"}, "accepts 1 arg(s), received 0"},
		{[]string{"usage", "record", "/does/not/exist.json"}, "no such file"},
	} {
		_, _, err := runCLI(t, "", append(tc.args, "--admin-url", url, "--token", testToken)...)
		require.Error(t, err, tc.args)
		require.Contains(t, err.Error(), tc.want, tc.args)
	}
}

func TestBillingAgainstAdminAPI(t *testing.T) {
	t.Parallel()
	b := setup(t)
	dsn, _ := serverDSN(t)
	_, _, err := b.run(t, "servers", "add", "pg-1", "--dsn", dsn)
	require.NoError(t, err)
	_, _, err = b.run(t, "tenants", "create", "acme", "--name", "Acme Inc", "--plan", "basic", "--wait")
	require.NoError(t, err)

	// Usage events from a file, twice: the second time counts nothing.
	now := time.Now().UTC().Add(-time.Minute).Format(time.RFC3339)
	file := filepath.Join(t.TempDir(), "events.json")
	require.NoError(t, os.WriteFile(file, []byte(`[{"id": "job-1", "tenant": "acme", "meter": "api_calls", "quantity": 500, "timestamp": "`+now+`"}]`), 0o600))
	stdout, _, err := b.run(t, "usage", "record", file)
	require.NoError(t, err)
	require.Equal(t, "Recorded 1 new events; 0 were recorded before.\n", stdout)
	stdout, _, err = runCLI(t, `[{"id": "job-1", "tenant": "acme", "meter": "api_calls", "quantity": 500, "timestamp": "`+now+`"}]`,
		"usage", "record", "-", "--admin-url", b.adminURL, "--token", testToken)
	require.NoError(t, err)
	require.Equal(t, "Recorded 0 new events; 1 were recorded before.\n", stdout)
	_, _, err = runCLI(t, `[{"id": "job-2", "tenant": "nosuch", "meter": "api_calls", "quantity": 1, "timestamp": "`+now+`"}]`,
		"usage", "record", "-", "--admin-url", b.adminURL, "--token", testToken)
	requireAPIError(t, err, 400, "invalid")

	stdout, _, err = b.run(t, "usage", "show")
	require.NoError(t, err)
	require.Contains(t, stdout, "acme    500")
	stdout, _, err = b.run(t, "usage", "show", "--tenant", "acme")
	require.NoError(t, err)
	require.Regexp(t, `api_calls +500\n`, stdout)

	// The open period's invoice, previewed: $5.00 base and $5.00 for 500 calls.
	stdout, _, err = b.run(t, "billing", "preview", "acme")
	require.NoError(t, err)
	require.Contains(t, stdout, "Invoice preview (not stored, not sent) for acme")
	require.Contains(t, stdout, "TOTAL")
	require.Contains(t, stdout, "$10.00")

	// A run of the last period, followed to its end; without Stripe on the server.
	last := time.Now().UTC().AddDate(0, 0, -time.Now().UTC().Day()).Format("2006-01")
	stdout, _, err = b.run(t, "billing", "run", "--period", last, "--watch", "--interval", "50ms")
	require.NoError(t, err)
	require.Contains(t, stdout, "for "+last)
	require.Regexp(t, `STATE: +done\n`, stdout)
	require.Contains(t, stdout, "no: invoices are stored, not sent")

	stdout, _, err = b.run(t, "billing", "runs", "--json")
	require.NoError(t, err)
	var page struct {
		Runs []map[string]any `json:"runs"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &page))
	require.NotEmpty(t, page.Runs)
	stdout, _, err = b.run(t, "billing", "invoices", "acme")
	require.NoError(t, err)
	require.Equal(t, "No invoices.\n", stdout, "acme did not exist last period")

	_, _, err = b.run(t, "billing", "run", "--period", time.Now().UTC().Format("2006-01"))
	requireAPIError(t, err, 400, "invalid")
	_, _, err = b.run(t, "billing", "preview", "nosuch")
	requireAPIError(t, err, 404, "not_found")
	require.True(t, strings.HasPrefix(last, "20"))
}
