package billing_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeStripe is an in-process Stripe that keeps what it is asked to make,
// honours idempotency keys (for 24 hours of its clock, like Stripe) and
// injects faults, so that tests can count what a run really created.
// stripe-mock cannot: it is stateless.
type fakeStripe struct {
	t   testing.TB
	srv *httptest.Server

	mu        sync.Mutex
	now       func() time.Time
	fault     func(op string, n int) string // "fail": 500, nothing done; "drop": done, answer lost
	calls     map[string]int
	keys      map[string]keyed
	seq       int
	customers map[string]*fakeObject
	invoices  map[string]*fakeObject
	items     map[string]*fakeObject
	finalized map[string]int // invoice id -> times finalized
}

type fakeObject struct {
	ID       string            `json:"id"`
	Object   string            `json:"object"`
	Customer string            `json:"customer,omitempty"`
	Invoice  string            `json:"invoice,omitempty"`
	Status   string            `json:"status,omitempty"`
	Amount   int64             `json:"amount,omitempty"`
	Currency string            `json:"currency,omitempty"`
	Name     string            `json:"name,omitempty"`
	Metadata map[string]string `json:"metadata"`
}

type keyed struct {
	status int
	body   []byte
	at     time.Time
}

func newFakeStripe(t testing.TB) *fakeStripe {
	f := &fakeStripe{t: t, now: time.Now, calls: map[string]int{}, keys: map[string]keyed{},
		customers: map[string]*fakeObject{}, invoices: map[string]*fakeObject{}, items: map[string]*fakeObject{}, finalized: map[string]int{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

var (
	invoicePath  = regexp.MustCompile(`^/v1/invoices/([^/]+)$`)
	finalizePath = regexp.MustCompile(`^/v1/invoices/([^/]+)/finalize$`)
	searchQuery  = regexp.MustCompile(`^metadata\['([^']+)'\]:'([^']*)'$`)
)

func (f *fakeStripe) serve(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	op := ""
	var id string
	switch {
	case r.Method == "POST" && r.URL.Path == "/v1/customers":
		op = "customer.create"
	case r.Method == "GET" && r.URL.Path == "/v1/customers/search":
		op = "customer.search"
	case r.Method == "POST" && r.URL.Path == "/v1/invoices":
		op = "invoice.create"
	case r.Method == "GET" && r.URL.Path == "/v1/invoices":
		op = "invoice.list"
	case r.Method == "POST" && finalizePath.MatchString(r.URL.Path):
		op, id = "invoice.finalize", finalizePath.FindStringSubmatch(r.URL.Path)[1]
	case r.Method == "GET" && invoicePath.MatchString(r.URL.Path):
		op, id = "invoice.get", invoicePath.FindStringSubmatch(r.URL.Path)[1]
	case r.Method == "POST" && r.URL.Path == "/v1/invoiceitems":
		op = "invoiceitem.create"
	case r.Method == "GET" && r.URL.Path == "/v1/invoiceitems":
		op = "invoiceitem.list"
	default:
		stripeError(w, 404, "invalid_request_error", "unrecognized request URL "+r.Method+" "+r.URL.Path)
		return
	}

	f.mu.Lock()
	f.calls[op]++
	n := f.calls[op]
	key := r.Header.Get("Idempotency-Key")
	if k, ok := f.keys[key]; ok && key != "" && f.now().Sub(k.at) < 24*time.Hour {
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Idempotent-Replayed", "true")
		w.WriteHeader(k.status)
		_, _ = w.Write(k.body)
		return
	}
	fault := ""
	if f.fault != nil {
		fault = f.fault(op, n)
	}
	if fault == "fail" {
		f.mu.Unlock()
		stripeError(w, 500, "api_error", "injected failure")
		return
	}
	status, body := f.do(op, id, r)
	if key != "" && r.Method == "POST" {
		f.keys[key] = keyed{status: status, body: body, at: f.now()}
	}
	f.mu.Unlock()
	if fault == "drop" {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func stripeError(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"type": typ, "message": msg}})
}

func metadataOf(r *http.Request) map[string]string {
	m := map[string]string{}
	for k, v := range r.PostForm {
		if name, ok := strings.CutPrefix(k, "metadata["); ok {
			m[strings.TrimSuffix(name, "]")] = v[0]
		}
	}
	return m
}

// do performs an operation with f.mu held and returns the answer.
func (f *fakeStripe) do(op, id string, r *http.Request) (int, []byte) {
	fail := func(status int, msg string) (int, []byte) {
		b, _ := json.Marshal(map[string]any{"error": map[string]any{"type": "invalid_request_error", "message": msg}})
		return status, b
	}
	ok := func(v any) (int, []byte) {
		b, _ := json.Marshal(v)
		return 200, b
	}
	list := func(object string, objs []*fakeObject) (int, []byte) {
		return ok(map[string]any{"object": object, "data": objs, "has_more": false, "url": r.URL.Path})
	}
	f.seq++
	switch op {
	case "customer.create":
		c := &fakeObject{ID: fmt.Sprintf("cus_%d", f.seq), Object: "customer", Name: r.PostForm.Get("name"), Metadata: metadataOf(r)}
		f.customers[c.ID] = c
		return ok(c)
	case "customer.search":
		m := searchQuery.FindStringSubmatch(r.URL.Query().Get("query"))
		if m == nil {
			return fail(400, "unsupported query")
		}
		var found []*fakeObject
		for _, c := range f.customers {
			if c.Metadata[m[1]] == m[2] {
				found = append(found, c)
			}
		}
		return list("search_result", found)
	case "invoice.create":
		if r.PostForm.Get("auto_advance") != "false" || r.PostForm.Get("pending_invoice_items_behavior") != "exclude" {
			return fail(400, "billing must create drafts with auto_advance=false and pending items excluded")
		}
		if f.customers[r.PostForm.Get("customer")] == nil {
			return fail(404, "no such customer")
		}
		inv := &fakeObject{ID: fmt.Sprintf("in_%d", f.seq), Object: "invoice", Customer: r.PostForm.Get("customer"), Status: "draft",
			Currency: r.PostForm.Get("currency"), Metadata: metadataOf(r)}
		f.invoices[inv.ID] = inv
		return ok(inv)
	case "invoice.list":
		var found []*fakeObject
		for _, inv := range f.invoices {
			if inv.Customer == r.URL.Query().Get("customer") {
				found = append(found, inv)
			}
		}
		return list("list", found)
	case "invoice.get":
		if inv := f.invoices[id]; inv != nil {
			return ok(inv)
		}
		return fail(404, "no such invoice")
	case "invoice.finalize":
		inv := f.invoices[id]
		switch {
		case inv == nil:
			return fail(404, "no such invoice")
		case inv.Status != "draft":
			return fail(400, "This invoice is already finalized, you can't re-finalize a non-draft invoice.")
		}
		inv.Status = "open"
		f.finalized[id]++
		return ok(inv)
	case "invoiceitem.create":
		inv := f.invoices[r.PostForm.Get("invoice")]
		switch {
		case r.PostForm.Has("price") || r.PostForm.Has("unit_amount"):
			return fail(400, "price and unit_amount are not accepted")
		case inv == nil || inv.Status != "draft":
			return fail(400, "items go on a draft invoice")
		case r.PostForm.Get("currency") == "" || r.PostForm.Get("amount") == "":
			return fail(400, "amount and currency are required")
		}
		amount, _ := strconv.ParseInt(r.PostForm.Get("amount"), 10, 64)
		item := &fakeObject{ID: fmt.Sprintf("ii_%d", f.seq), Object: "invoiceitem", Invoice: inv.ID, Customer: inv.Customer,
			Amount: amount, Currency: r.PostForm.Get("currency"), Metadata: metadataOf(r)}
		f.items[item.ID] = item
		return ok(item)
	case "invoiceitem.list":
		var found []*fakeObject
		for _, it := range f.items {
			if it.Invoice == r.URL.Query().Get("invoice") {
				found = append(found, it)
			}
		}
		return list("list", found)
	}
	return fail(404, "unknown")
}

// state is what the fake holds, per tenant id: customers, invoices (with
// their items' amounts) and finalizations.
type fakeTenant struct {
	Customers int
	Invoices  []fakeInvoice
}

type fakeInvoice struct {
	Status    string
	Period    string
	Amounts   []int64 // by line
	Finalized int
}

func (f *fakeStripe) state() map[string]*fakeTenant {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]*fakeTenant{}
	get := func(id string) *fakeTenant {
		if out[id] == nil {
			out[id] = &fakeTenant{}
		}
		return out[id]
	}
	for _, c := range f.customers {
		get(c.Metadata["tenantplane_tenant_id"]).Customers++
	}
	for _, inv := range f.invoices {
		amounts := map[int]int64{}
		maxLine := 0
		for _, it := range f.items {
			if it.Invoice == inv.ID {
				n, _ := strconv.Atoi(it.Metadata["tenantplane_line"])
				if _, dup := amounts[n]; dup {
					f.t.Errorf("invoice %s has two items for line %d", inv.ID, n)
				}
				amounts[n] = it.Amount
				maxLine = max(maxLine, n)
			}
		}
		fi := fakeInvoice{Status: inv.Status, Period: inv.Metadata["tenantplane_period"], Finalized: f.finalized[inv.ID]}
		for n := 1; n <= maxLine; n++ {
			fi.Amounts = append(fi.Amounts, amounts[n])
		}
		t := get(inv.Metadata["tenantplane_tenant_id"])
		t.Invoices = append(t.Invoices, fi)
	}
	return out
}

func (f *fakeStripe) setFault(fn func(op string, n int) string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fault = fn
}

func (f *fakeStripe) setNow(fn func() time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = fn
}
