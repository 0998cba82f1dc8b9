package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// Environment variables and defaults of the operator commands.
const (
	envAdminURL      = "TENANTPLANE_ADMIN_URL"
	envAdminToken    = "TENANTPLANE_ADMIN_TOKEN"
	defaultAdminURL  = "http://127.0.0.1:8081"
	defaultTimeout   = 30 * time.Second
	adminPathPrefix  = "/admin/v1"
	maxResponseBytes = 64 << 20
)

// Client calls the admin API. It holds no state besides its configuration,
// so one value serves any number of calls.
type Client struct {
	// BaseURL is the admin API's root, e.g. http://127.0.0.1:8081; paths
	// given to do are relative to BaseURL + /admin/v1.
	BaseURL string
	// Token is the admin bearer token. It goes into the Authorization header
	// and nowhere else: no error message or log line carries it.
	Token string
	// HTTP sends the requests. Default http.DefaultClient.
	HTTP *http.Client
	// Timeout bounds each call, on top of any deadline ctx has. Zero means no
	// bound of its own.
	Timeout time.Duration
}

// APIError is an error answer of the admin API:
// {"error": {"code": "...", "message": "..."}} with its HTTP status.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s (%s, HTTP %d)", e.Message, e.Code, e.Status)
}

// UnreachableError says no HTTP answer came back from the admin API at all.
type UnreachableError struct {
	URL string
	Err error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("the admin API at %s is unreachable (%v); check %s or --admin-url", e.URL, e.Err, envAdminURL)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// do sends method path?query with body (JSON-encoded, when not nil) and
// decodes a 2xx answer into out (when not nil; a *json.RawMessage keeps the
// answer as it came). Any other answer is an *APIError; a transport failure
// is an *UnreachableError, or a timeout error naming the bound.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	u := strings.TrimRight(c.BaseURL, "/") + adminPathPrefix + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encoding the request to %s %s: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	if c.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Timeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return fmt.Errorf("building the request to %s %s: %w", method, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return c.transportError(ctx, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return c.transportError(ctx, err)
	}
	if len(raw) > maxResponseBytes {
		return fmt.Errorf("the answer to %s %s is larger than %d bytes", method, path, maxResponseBytes)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return apiErrorOf(resp, raw)
	}
	if out == nil || len(bytes.TrimSpace(raw)) == 0 {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("the answer to %s %s is not the JSON expected (%v); is %s the admin API?", method, path, err, c.BaseURL)
	}
	return nil
}

// transportError explains a call that got no answer: the bound ran out, the
// operator interrupted it, or the server could not be reached.
func (c *Client) transportError(ctx context.Context, err error) error {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		within := ""
		if c.Timeout > 0 {
			within = " within " + c.Timeout.String()
		}
		return fmt.Errorf("the admin API at %s did not answer%s: %w", c.BaseURL, within, context.DeadlineExceeded)
	case errors.Is(ctx.Err(), context.Canceled):
		return fmt.Errorf("interrupted: %w", context.Canceled)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // its text repeats the URL
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		// Connected, but the server hung up: a proxy, or a server write timeout.
		return fmt.Errorf("the admin API at %s closed the connection without a complete answer: %w", c.BaseURL, err)
	}
	return &UnreachableError{URL: c.BaseURL, Err: err}
}

// apiErrorOf reads an error answer. One that is not the API's error shape (a
// proxy's page, say) still yields a readable APIError.
func apiErrorOf(resp *http.Response, raw []byte) *APIError {
	var body struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	e := &APIError{Status: resp.StatusCode}
	if json.Unmarshal(raw, &body) == nil && body.Error.Message != "" {
		e.Code, e.Message = body.Error.Code, body.Error.Message
		if e.Code == "" {
			e.Code = "error"
		}
		return e
	}
	e.Code = "http_" + strconv.Itoa(resp.StatusCode)
	e.Message = http.StatusText(resp.StatusCode)
	if text := strings.TrimSpace(string(raw)); text != "" {
		if len(text) > 200 {
			text = text[:200] + "..."
		}
		e.Message += ": " + text
	}
	return e
}

// adminOptions are the flags every operator command shares, registered as
// persistent flags on each command group (servers, tenants, keys, ...).
type adminOptions struct {
	url     string
	token   string
	json    bool
	timeout time.Duration
}

// newAdminGroup returns a command group whose subcommands talk to the admin
// API, with the shared flags on it.
func newAdminGroup(use, short string) (*cobra.Command, *adminOptions) {
	o := &adminOptions{}
	cmd := &cobra.Command{Use: use, Short: short, Args: cobra.NoArgs}
	f := cmd.PersistentFlags()
	f.StringVar(&o.url, "admin-url", "", "admin API URL (default $"+envAdminURL+", else "+defaultAdminURL+")")
	// The default is not read from the environment here: help output would show the token.
	f.StringVar(&o.token, "token", "", "admin token (default $"+envAdminToken+"; prefer the variable, flags show in the process list)")
	f.BoolVar(&o.json, "json", false, "print the API's JSON answer instead of a table")
	f.DurationVar(&o.timeout, "timeout", defaultTimeout, "bound on each call to the admin API")
	return cmd, o
}

// client builds the Client from the flags, then the environment, then the
// defaults.
func (o *adminOptions) client(getenv func(string) string) (*Client, error) {
	base := firstNonEmpty(o.url, getenv(envAdminURL), defaultAdminURL)
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("admin URL %q (%s or --admin-url) must be an http:// or https:// URL, e.g. %s", base, envAdminURL, defaultAdminURL)
	}
	token := firstNonEmpty(o.token, getenv(envAdminToken))
	if token == "" {
		return nil, fmt.Errorf("%s is not set: set it (or pass --token) to the admin token the server was started with", envAdminToken)
	}
	if o.timeout <= 0 {
		return nil, fmt.Errorf("--timeout must be positive, got %s", o.timeout)
	}
	return &Client{BaseURL: strings.TrimRight(base, "/"), Token: token, Timeout: o.timeout}, nil
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v = strings.TrimSpace(v); v != "" {
			return v
		}
	}
	return ""
}

// pathf builds an API path, escaping each argument as one path segment.
func pathf(format string, args ...string) string {
	escaped := make([]any, len(args))
	for i, a := range args {
		escaped[i] = url.PathEscape(a)
	}
	return fmt.Sprintf(format, escaped...)
}

// call makes one admin API call with the flags' client and returns the answer
// as it came.
func (o *adminOptions) call(cmd *cobra.Command, method, path string, query url.Values, body any) (json.RawMessage, error) {
	c, err := o.client(os.Getenv)
	if err != nil {
		return nil, err
	}
	var raw json.RawMessage
	if err := c.do(cmd.Context(), method, path, query, body, &raw); err != nil {
		return nil, err
	}
	return raw, nil
}

// callAll GETs every page of a list (each list pages with limit, cursor and
// next_cursor) and returns them as one answer: the first page's fields with
// the items of every page under key, and no next_cursor.
func (o *adminOptions) callAll(cmd *cobra.Command, path string, query url.Values, key string) (json.RawMessage, error) {
	q := url.Values{}
	for k, v := range query {
		q[k] = v
	}
	var first map[string]json.RawMessage
	var items []json.RawMessage
	seen := map[string]bool{}
	for {
		raw, err := o.call(cmd, "GET", path, q, nil)
		if err != nil {
			return nil, err
		}
		var page map[string]json.RawMessage
		if err := json.Unmarshal(raw, &page); err != nil {
			return nil, fmt.Errorf("the admin API's answer is not the JSON expected: %w", err)
		}
		var these []json.RawMessage
		if err := json.Unmarshal(page[key], &these); err != nil {
			return nil, fmt.Errorf("the admin API's answer has no list %q: %w", key, err)
		}
		items = append(items, these...)
		if first == nil {
			first = page
		}
		var next string
		if c, ok := page["next_cursor"]; ok {
			_ = json.Unmarshal(c, &next)
		}
		if next == "" {
			break
		}
		if seen[next] {
			return nil, fmt.Errorf("the admin API returned cursor %q twice; stopping to avoid a loop", next)
		}
		seen[next] = true
		q.Set("cursor", next)
	}
	if items == nil {
		items = []json.RawMessage{}
	}
	all, err := json.Marshal(items)
	if err != nil {
		return nil, err
	}
	first[key] = all
	delete(first, "next_cursor")
	return json.Marshal(first)
}

// print shows an answer: as JSON with --json, else decoded into v and given
// to human.
func (o *adminOptions) print(cmd *cobra.Command, raw json.RawMessage, v any, human func() error) error {
	if o.json {
		return writeJSON(cmd.OutOrStdout(), raw)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("the admin API's answer is not the JSON expected: %w", err)
	}
	return human()
}
