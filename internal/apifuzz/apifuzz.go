// Package apifuzz walks an OpenAPI document and sends a running server a
// seeded, bounded number of requests for each operation: valid ones built
// from the schemas and examples, and broken ones (wrong types, boundaries,
// missing and unknown fields, huge strings, bad UTF-8, bad ids, bodies that
// are not JSON). Every answer is checked: no 5xx, and nothing the document
// does not say (kin-openapi validates the status, the headers and the body
// against the operation's responses). The caller checks its own invariants
// after a run.
//
//	rep, err := apifuzz.Run(ctx, apifuzz.Target{Name: "admin", Doc: raw, BaseURL: url, Header: auth},
//		apifuzz.Config{Seed: seed, PerOperation: 20})
//	for _, f := range rep.Findings { t.Error(f) }
//
// A run is replayable: the same seed, document and server state send the
// same requests.
package apifuzz

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
)

// Target is one API under fuzz.
type Target struct {
	// Name names the API in findings ("admin", "tenant").
	Name string
	// Doc is the API's OpenAPI document (YAML or JSON).
	Doc []byte
	// BaseURL is where the server listens: http://127.0.0.1:port (loopback only).
	BaseURL string
	// Header sets a request's headers (credentials); optional.
	Header func(op string, req *http.Request)
	// Param returns values of a path parameter that name something the
	// server has (a tenant's slug, a key's id), so valid requests reach
	// past "not found"; optional.
	Param func(op, name string) []string
	// Fix adjusts a generated JSON body before it is sent (e.g. DSNs only
	// on loopback); optional.
	Fix func(op string, body any) any
	// Skip leaves operations ("POST /admin/v1/servers") out; optional.
	Skip func(op string) bool
}

// Config bounds a run.
type Config struct {
	// Seed makes the run replayable.
	Seed uint64
	// PerOperation is how many requests each operation gets, about a third
	// of them valid. Default 12.
	PerOperation int
	// Client sends the requests. Default one with a 30 s timeout.
	Client *http.Client
}

// Finding is an answer that breaks a target.
type Finding struct {
	Op       string // "POST /admin/v1/tenants"
	Kind     string // what the request was: "valid", or the mutation
	Request  string // method, URL and the start of the body
	Status   int
	Problem  string
	Response string // the start of the answer
}

func (f Finding) String() string {
	return fmt.Sprintf("%s (%s): %s\n  request: %s\n  answer %d: %s", f.Op, f.Kind, f.Problem, f.Request, f.Status, f.Response)
}

// Report is what a run did and found.
type Report struct {
	Requests int
	ByStatus map[int]int
	Findings []Finding
}

// Run fuzzes every operation of the target, in the document's order of
// paths and methods, and returns what it found. err is for a target that
// cannot be run at all (a document that does not load or validate).
func Run(ctx context.Context, tgt Target, cfg Config) (Report, error) {
	if cfg.PerOperation == 0 {
		cfg.PerOperation = 12
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 30 * time.Second}
	}
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(tgt.Doc)
	if err != nil {
		return Report{}, fmt.Errorf("apifuzz: %s document: %w", tgt.Name, err)
	}
	if err := doc.Validate(ctx); err != nil {
		return Report{}, fmt.Errorf("apifuzz: %s document does not validate: %w", tgt.Name, err)
	}
	rep := Report{ByStatus: map[int]int{}}
	paths := doc.Paths.InMatchingOrder()
	slices.Sort(paths)
	for _, path := range paths {
		item := doc.Paths.Value(path)
		methods := make([]string, 0, len(item.Operations()))
		for m := range item.Operations() {
			methods = append(methods, m)
		}
		slices.Sort(methods)
		for _, method := range methods {
			op := method + " " + path
			if tgt.Skip != nil && tgt.Skip(op) {
				continue
			}
			route := &routers.Route{Spec: doc, Path: path, PathItem: item, Method: method, Operation: item.GetOperation(method)}
			for i := range cfg.PerOperation {
				if ctx.Err() != nil {
					return rep, ctx.Err()
				}
				r := rand.New(rand.NewPCG(cfg.Seed, opSeed(op, i)))
				g := &gen{r: r, tgt: tgt, op: op}
				req := g.request(route, i%3 == 0)
				if f, status := send(ctx, cfg.Client, tgt, route, req); f != nil {
					rep.Findings = append(rep.Findings, *f)
					rep.ByStatus[status]++
				} else {
					rep.ByStatus[status]++
				}
				rep.Requests++
			}
		}
	}
	return rep, nil
}

func opSeed(op string, i int) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(op))
	return h.Sum64() + uint64(i)
}

// built is one generated request.
type built struct {
	kind        string
	method      string
	path        string // with parameters filled in, escaped
	pathParams  map[string]string
	query       url.Values
	body        []byte
	contentType string
}

// send sends one request and checks its answer; it returns a finding, or
// nil, and the status.
func send(ctx context.Context, client *http.Client, tgt Target, route *routers.Route, b built) (*Finding, int) {
	u := strings.TrimSuffix(tgt.BaseURL, "/") + b.path
	if len(b.query) > 0 {
		u += "?" + b.query.Encode()
	}
	var body io.Reader
	if b.body != nil {
		body = bytes.NewReader(b.body)
	}
	req, err := http.NewRequestWithContext(ctx, b.method, u, body)
	if err != nil {
		return nil, 0 // not a request an HTTP client can send
	}
	if b.contentType != "" {
		req.Header.Set("Content-Type", b.contentType)
	}
	if tgt.Header != nil {
		tgt.Header(route.Method+" "+route.Path, req)
	}
	reqDesc := fmt.Sprintf("%s %s %s", b.method, u, clip(string(b.body), 300))
	f := &Finding{Op: route.Method + " " + route.Path, Kind: b.kind, Request: reqDesc}
	resp, err := client.Do(req)
	if err != nil {
		f.Problem = "no answer: " + err.Error()
		return f, 0
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	f.Status, f.Response = resp.StatusCode, clip(string(raw), 300)
	if err != nil {
		f.Problem = "reading the answer: " + err.Error()
		return f, resp.StatusCode
	}
	if resp.StatusCode >= 500 {
		f.Problem = "a 5xx"
		return f, resp.StatusCode
	}
	input := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: b.pathParams, Route: route},
		Status:                 resp.StatusCode,
		Header:                 resp.Header,
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	// Only JSON bodies are held to their schema: kin-openapi decodes a
	// YAML document (GET /openapi.yaml) into an object, never the string
	// its schema says, and text bodies (metrics) have no schema to break.
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		input.Options.ExcludeResponseBody = true
	}
	input.SetBodyBytes(raw)
	if err := openapi3filter.ValidateResponse(ctx, input); err != nil {
		f.Problem = "the answer breaks the document: " + clip(strings.Join(strings.Fields(err.Error()), " "), 400)
		return f, resp.StatusCode
	}
	return nil, resp.StatusCode
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + fmt.Sprintf("… (%d bytes)", len(s))
}

// String makes a finding list readable in a test failure.
func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d requests, by status %v, %d findings", r.Requests, r.ByStatus, len(r.Findings))
	for _, f := range r.Findings {
		b.WriteString("\n")
		b.WriteString(f.String())
	}
	return b.String()
}

// jsonBody encodes v; a value that does not encode (it should not happen)
// becomes an empty object.
func jsonBody(v any) []byte {
	raw, err := json.Marshal(v)
	if err != nil {
		return []byte("{}")
	}
	return raw
}
