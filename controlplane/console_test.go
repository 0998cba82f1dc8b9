package controlplane

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
)

// consoleClient is an operator's browser without the browser: a cookie jar
// that does not follow redirects, so each answer can be looked at.
type consoleClient struct {
	t    testing.TB
	base string // http://host:port
	http *http.Client
}

func newConsoleClient(t testing.TB, base string, transport http.RoundTripper) *consoleClient {
	t.Helper()
	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	return &consoleClient{t: t, base: base, http: &http.Client{
		Jar: jar, Transport: transport, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

func (c *consoleClient) do(method, path string, form url.Values, header map[string]string) (*http.Response, string) {
	c.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, c.base+path, body)
	require.NoError(c.t, err)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.http.Do(req)
	require.NoError(c.t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(c.t, err)
	return resp, string(raw)
}

// urlAttrRE finds every attribute that makes a browser fetch or go to a URL.
var urlAttrRE = regexp.MustCompile(`(?i)\s(href|src|action|formaction|hx-get|hx-post|hx-put|hx-delete|data|poster|srcset)='?"?([^"' >]*)`)

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrfOf returns the CSRF token of the page's forms.
func csrfOf(t testing.TB, page string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(page)
	require.NotNil(t, m, "the page has a form with a CSRF token: %s", page)
	return m[1]
}

// signIn signs in with token and returns the answer to the form.
func (c *consoleClient) signIn(token string) (*http.Response, string) {
	c.t.Helper()
	_, page := c.do("GET", "/console/signin", nil, nil)
	return c.do("POST", "/console/signin", url.Values{"csrf": {csrfOf(c.t, page)}, "token": {token}}, nil)
}

func cookieNamed(resp *http.Response, name string) *http.Cookie {
	for _, c := range resp.Cookies() {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// TestConsoleSecurity checks what a browser enforces on the console's
// behalf: cookie flags, the CSP on every page, CSRF tokens on every change,
// the limit on wrong tokens, sign-out everywhere, and the JSON API that
// still takes the bearer token alone.
func TestConsoleSecurity(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 1, nil)
	status, body := f.createTenant(t, "acme", true)
	require.Equal(t, http.StatusCreated, status, body)
	c := newConsoleClient(t, f.admin, nil)

	t.Run("signed out, every page asks to sign in", func(t *testing.T) {
		for _, p := range []string{"/console/", "/console/tenants", "/console/tenants/acme", "/console/operations"} {
			resp, _ := c.do("GET", p, nil, nil)
			require.Equal(t, http.StatusSeeOther, resp.StatusCode, p)
			require.Equal(t, "/console/signin?next="+url.QueryEscape(p), resp.Header.Get("Location"))
		}
		resp, _ := c.do("POST", "/console/act/suspend", url.Values{"slug": {"acme"}}, nil)
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	})

	t.Run("the sign-in form needs its CSRF token", func(t *testing.T) {
		resp, page := c.do("POST", "/console/signin", url.Values{"token": {testToken}}, nil)
		require.Equal(t, http.StatusForbidden, resp.StatusCode)
		require.Contains(t, page, "came from another site")
		require.Nil(t, cookieNamed(resp, "tp_console"))
	})

	var session *http.Cookie
	t.Run("sign in gives a session cookie with its flags", func(t *testing.T) {
		resp, _ := c.signIn(testToken)
		require.Equal(t, http.StatusSeeOther, resp.StatusCode)
		require.Equal(t, "/console/", resp.Header.Get("Location"))
		session = cookieNamed(resp, "tp_console")
		require.NotNil(t, session)
		require.True(t, session.HttpOnly)
		require.Equal(t, http.SameSiteStrictMode, session.SameSite)
		require.False(t, session.Secure, "plain HTTP: a Secure cookie would never come back")
		require.Equal(t, "/console/", session.Path)
		require.Greater(t, session.MaxAge, 0)
		require.WithinDuration(t, time.Now().Add(8*time.Hour), session.Expires, time.Minute)
	})

	t.Run("every page has the CSP and no external URL", func(t *testing.T) {
		for _, p := range []string{"/console/", "/console/tenants", "/console/tenants?q=acm&state=active", "/console/tenants/acme",
			"/console/operations", "/console/billing", "/console/orphans", "/console/act/suspend?slug=acme", "/console/signin", "/console/nope"} {
			resp, page := c.do("GET", p, nil, nil)
			require.Less(t, resp.StatusCode, 500, p)
			csp := resp.Header.Get("Content-Security-Policy")
			require.Contains(t, csp, "default-src 'none'", p)
			require.Contains(t, csp, "script-src 'self'", p)
			require.NotContains(t, csp, "unsafe-inline", p)
			require.Equal(t, "DENY", resp.Header.Get("X-Frame-Options"), p)
			for _, m := range urlAttrRE.FindAllStringSubmatch(page, -1) {
				require.Regexp(t, `^(/console/|\?|#)`, m[2], "%s: %s points outside the console", p, m[0])
			}
			require.NotRegexp(t, `(?i)<script>|<style|style="|\son[a-z]+="`, page, "%s has inline script or style, which the CSP refuses", p)
		}
		resp, _ := c.do("GET", "/console/static/htmx-2.0.11.min.js", nil, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.NotEmpty(t, resp.Header.Get("Content-Security-Policy"))
	})

	t.Run("a form without the CSRF token is refused", func(t *testing.T) {
		resp, page := c.do("POST", "/console/act/suspend", url.Values{"slug": {"acme"}}, nil)
		require.Equal(t, http.StatusForbidden, resp.StatusCode)
		require.Contains(t, page, "CSRF token")
		_, tenant := call(t, "GET", f.admin+"/admin/v1/tenants/acme", testToken, nil)
		require.Equal(t, "active", tenant["state"])

		// A cross-site post carrying a token (say, one leaked) is refused by its origin.
		_, page = c.do("GET", "/console/act/suspend?slug=acme", nil, nil)
		token := csrfOf(t, page)
		resp, _ = c.do("POST", "/console/act/suspend", url.Values{"slug": {"acme"}, "csrf": {token}},
			map[string]string{"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
		require.Equal(t, http.StatusForbidden, resp.StatusCode)
		_, tenant = call(t, "GET", f.admin+"/admin/v1/tenants/acme", testToken, nil)
		require.Equal(t, "active", tenant["state"])

		// The same form from the console does it, as the console.
		resp, _ = c.do("POST", "/console/act/suspend", url.Values{"slug": {"acme"}, "csrf": {token}, "reason": {"test"}},
			map[string]string{"Origin": c.base, "Sec-Fetch-Site": "same-origin"})
		require.Equal(t, http.StatusSeeOther, resp.StatusCode)
		require.Equal(t, "/console/tenants/acme?done=suspend", resp.Header.Get("Location"))
		_, tenant = call(t, "GET", f.admin+"/admin/v1/tenants/acme", testToken, nil)
		require.Equal(t, "suspended", tenant["state"])
	})

	t.Run("errors show the API's message", func(t *testing.T) {
		_, page := c.do("GET", "/console/", nil, nil)
		token := csrfOf(t, page)
		resp, page := c.do("POST", "/console/act/suspend", url.Values{"slug": {"acme"}, "csrf": {token}}, nil)
		require.Equal(t, http.StatusConflict, resp.StatusCode)
		require.Contains(t, page, "suspended")
		resp, page = c.do("GET", "/console/tenants/nobody", nil, nil)
		require.Equal(t, http.StatusNotFound, resp.StatusCode)
		require.Contains(t, page, `tenant &#34;nobody&#34; not found`)
	})

	t.Run("the JSON API keeps its bearer token", func(t *testing.T) {
		req, err := http.NewRequest("GET", f.admin+"/admin/v1/servers", nil)
		require.NoError(t, err)
		req.AddCookie(session)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "a console session is no admin token")
	})

	t.Run("an expired session is refused", func(t *testing.T) {
		e := newConsoleClient(t, f.admin, nil)
		resp, _ := e.signIn(testToken)
		require.Equal(t, http.StatusSeeOther, resp.StatusCode)
		resp, _ = e.do("GET", "/console/", nil, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		_, err := f.app.store.Pool().Exec(t.Context(), `UPDATE console_sessions SET expires_at = now() - interval '1 second'
			WHERE token_hash <> sha256(convert_to($1, 'UTF8'))`, session.Value)
		require.NoError(t, err)
		resp, _ = e.do("GET", "/console/", nil, nil)
		require.Equal(t, http.StatusSeeOther, resp.StatusCode, "past its expiry a session signs in again")
		require.Equal(t, "/console/signin?next=%2Fconsole%2F", resp.Header.Get("Location"))
	})

	t.Run("sign-out ends the session on every replica", func(t *testing.T) {
		// A second process on the same catalog knows the session...
		other := setupEnv(t, f.app.cfg.DatabaseURL, nil)
		req, err := http.NewRequest("GET", other.admin+"/console/", nil)
		require.NoError(t, err)
		req.AddCookie(session)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)

		_, page := c.do("GET", "/console/", nil, nil)
		resp, _ = c.do("POST", "/console/signout", url.Values{"csrf": {csrfOf(t, page)}}, nil)
		require.Equal(t, http.StatusSeeOther, resp.StatusCode)
		gone := cookieNamed(resp, "tp_console")
		require.NotNil(t, gone)
		require.Less(t, gone.MaxAge, 0, "sign-out deletes the cookie")

		// ...and forgets it once signed out, even with the old cookie.
		for _, base := range []string{f.admin, other.admin} {
			req, err := http.NewRequest("GET", base+"/console/", nil)
			require.NoError(t, err)
			req.AddCookie(session)
			resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			require.Equal(t, http.StatusSeeOther, resp.StatusCode, base)
		}
		var n int
		require.NoError(t, f.app.store.Pool().QueryRow(t.Context(), `SELECT count(*) FROM console_sessions WHERE expires_at > now()`).Scan(&n))
		require.Zero(t, n, "no live session is left")
	})

	t.Run("on TLS the cookie is Secure", func(t *testing.T) {
		srv := httptest.NewUnstartedServer(f.app.adminServer.Handler)
		srv.StartTLS()
		defer srv.Close()
		tc := newConsoleClient(t, srv.URL, &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}) //nolint:gosec // the test's own certificate
		resp, _ := tc.signIn(testToken)
		require.Equal(t, http.StatusSeeOther, resp.StatusCode)
		ck := cookieNamed(resp, "tp_console")
		require.NotNil(t, ck)
		require.True(t, ck.Secure)
		require.True(t, ck.HttpOnly)
		require.Equal(t, http.SameSiteStrictMode, ck.SameSite)
	})
	t.Run("wrong tokens are rate limited", func(t *testing.T) {
		w := newConsoleClient(t, f.admin, nil)
		for i := range 5 {
			resp, page := w.signIn("wrong-token-" + strings.Repeat("x", i))
			require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "try %d", i)
			require.Contains(t, page, "Wrong admin token")
		}
		resp, page := w.signIn(testToken)
		require.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "after a burst of wrong tokens even the right one waits")
		require.NotEmpty(t, resp.Header.Get("Retry-After"))
		require.Contains(t, page, "Too many wrong tokens")
		require.Nil(t, cookieNamed(resp, "tp_console"))
	})

}

// TestConsoleOperations follows a tenant's move and a billing run started
// from the console to their pages, and reads the Fleet page with one server
// down.
func TestConsoleOperations(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 2, nil)
	status, body := f.createTenant(t, "acme", true)
	require.Equal(t, http.StatusCreated, status, body)
	from := body["server"].(string)
	to := map[string]string{"pg-1": "pg-2", "pg-2": "pg-1"}[from]
	c := newConsoleClient(t, f.admin, nil)
	resp, _ := c.signIn(testToken)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)

	_, page := c.do("GET", "/console/tenants/acme", nil, nil)
	require.Contains(t, page, `<option>`+to+`</option>`, "the tenant page offers the other server as a move target")
	token := csrfOf(t, page)

	resp, page = c.do("POST", "/console/act/move", url.Values{"slug": {"acme"}, "to": {to}, "mode": {"copy"}, "csrf": {token}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode, page)
	movePage := strings.TrimSuffix(resp.Header.Get("Location"), "?done=move")
	require.Regexp(t, `^/console/operations/moves/[0-9]+$`, movePage)
	resp, page = c.do("GET", movePage, nil, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, page, "by console")
	require.Eventually(t, func() bool {
		_, page = c.do("GET", movePage, nil, nil)
		return strings.Contains(page, `state-done">done`)
	}, 60*time.Second, 200*time.Millisecond, "the move's page never showed it done")
	require.NotContains(t, page, `hx-trigger`, "a finished move's page stops polling")
	require.Contains(t, page, "/console/act/revert-move?id=")
	_, tenant := call(t, "GET", f.admin+"/admin/v1/tenants/acme", testToken, nil)
	require.Equal(t, to, tenant["server"])

	period := time.Now().UTC().AddDate(0, -1, 0).Format("2006-01")
	resp, page = c.do("POST", "/console/act/start-billing", url.Values{"period": {period}, "csrf": {token}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode, page)
	resp, page = c.do("GET", resp.Header.Get("Location"), nil, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, page, "Billing run started.")
	require.Contains(t, page, period)

	resp, page = c.do("POST", "/console/act/start-billing", url.Values{"period": {"2026-13"}, "csrf": {token}}, nil)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode, "a bad period answers as the API does")
	require.Contains(t, page, "2026-13")

	_, page = c.do("GET", "/console/operations", nil, nil)
	require.Contains(t, page, movePage)
	require.Contains(t, page, `<td>`+period+`</td>`)

	// The Fleet page counts the tenant where it is now, by state and schema version.
	_, page = c.do("GET", "/console/", nil, nil)
	require.Contains(t, page, `href="/console/tenants?server=`+to+`&amp;state=active">active 1</a>`)
	require.Regexp(t, `srv-`+to+`"(?s:.)*v2: 1(?s:.)*srv-|srv-`+to+`"(?s:.)*v2: 1`, page)

	// An evacuation started by the API, followed on its console page until
	// it ends: here it fails, since the move's source is still kept on the
	// other server, and the page says so for the tenant.
	status, evac := call(t, "POST", f.admin+"/admin/v1/servers/"+to+"/drain", testToken, map[string]any{"evacuate": true, "mode": "copy"})
	require.Equal(t, http.StatusAccepted, status, evac)
	evacPage := fmt.Sprintf("/console/operations/evacuations/%v", evac["id"])
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		resp, page = c.do("GET", evacPage, nil, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, page)
		if !strings.Contains(page, "hx-trigger") { // no longer live: the page stops polling
			break
		}
		require.True(t, time.Now().Before(deadline), "the evacuation's page never showed it ended: %s", evacText(page))
	}
	require.Contains(t, page, `state-failed">failed`, evacText(page))
	require.Contains(t, page, "keeps tenant acme&#39;s source of move", "the tenant's own error is on the page")
	_, servers := call(t, "GET", f.admin+"/admin/v1/servers", testToken, nil)
	for _, srv := range servers["servers"].([]any) {
		srv := srv.(map[string]any)
		_, page = c.do("GET", "/console/", nil, nil)
		require.Regexp(t, `srv-`+srv["name"].(string)+`"><a [^>]+>[^<]+</a> <span class="state state-`+srv["state"].(string)+`">`, page, "the Fleet page shows each server's placement state")
	}

	// The move is reverted from the console, as the evacuation's error says.
	resp, page = c.do("POST", "/console/act/revert-move", url.Values{"id": {strings.TrimPrefix(movePage, "/console/operations/moves/")}, "csrf": {token}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode, page)
	require.Equal(t, movePage+"?done=revert-move", resp.Header.Get("Location"))
	require.Eventually(t, func() bool {
		_, tenant := call(t, "GET", f.admin+"/admin/v1/tenants/acme", testToken, nil)
		return tenant["server"] == from && tenant["move_id"] == nil
	}, 60*time.Second, 200*time.Millisecond, "the revert never took acme back to %s", from)
	_, page = c.do("GET", "/console/operations", nil, nil)
	require.Regexp(t, `<td>`+to+` → `+from+`</td><td><span class="state state-done">done</span>`, page, "the revert is a move of its own, listed")

	// An orphan database: listed on the Orphans page, removed from there.
	orphan := "t_" + strings.Repeat("0", 32)
	conn, err := connect(t, f.servers[to].ManagedDSN(t, "postgres")) // as the server's admin role, which made it
	require.NoError(t, err)
	_, err = conn.Exec(t.Context(), "CREATE DATABASE "+orphan)
	require.NoError(t, err)
	require.NoError(t, conn.Close(t.Context()))
	_, page = c.do("GET", "/console/orphans", nil, nil)
	require.Contains(t, page, "<code>"+orphan+"</code>")
	_, page = c.do("GET", "/console/act/remove-orphans", nil, nil)
	require.Contains(t, page, "dropped for good", "removal asks first")
	resp, page = c.do("POST", "/console/act/remove-orphans", url.Values{"csrf": {token}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode, page)
	_, page = c.do("GET", resp.Header.Get("Location"), nil, nil)
	require.Contains(t, page, "Orphans removed.")
	require.NotContains(t, page, orphan)
	require.False(t, query[bool](t, f.servers[to].DSN("postgres"), `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, orphan))
	events, err := f.app.store.ListAudit(t.Context(), catalog.AuditFilter{Action: "orphans.removed"})
	require.NoError(t, err)
	require.Len(t, events, 1)
	require.Equal(t, "console", events[0].Actor)
	require.Equal(t, []any{to + ": database " + orphan}, events[0].Details["removed"])

	// A server that does not answer shows why, and the page still comes at once.
	f.servers[to].Stop(t)
	start := time.Now()
	resp, page = c.do("GET", "/console/", nil, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Less(t, time.Since(start), 10*time.Second)
	require.Contains(t, page, "0 of budget 80", "the live server is read")
	require.Regexp(t, `srv-`+to+`"(?s:.)*Connections</dt><dd><span class="error-inline">server &#34;`+to+`&#34;: `, page, "the stopped server shows why it was not read")
}

// evacText is the live section of an evacuation's page, for a failure message.
func evacText(page string) string {
	if i := strings.Index(page, `id="live"`); i >= 0 {
		return page[i:]
	}
	return page
}

// TestConsoleTiers: the Tenants page filters by tier and shows each
// tenant's; a pooled tenant's page promotes it, and the promotion is
// followed to done on its move's page.
func TestConsoleTiers(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 1, nil)
	f.createPool(t, "pg-1", 10)
	f.pooledWithKey(t, "small")
	status, body := f.createTenant(t, "big", true)
	require.Equal(t, http.StatusCreated, status, body)
	c := newConsoleClient(t, f.admin, nil)
	resp, _ := c.signIn(testToken)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)

	_, page := c.do("GET", "/console/tenants?tier=pooled", nil, nil)
	require.Contains(t, page, `href="/console/tenants/small"`)
	require.NotContains(t, page, `href="/console/tenants/big"`)
	require.Contains(t, page, `<option selected>pooled</option>`)
	_, page = c.do("GET", "/console/tenants?tier=dedicated", nil, nil)
	require.Contains(t, page, `href="/console/tenants/big"`)
	require.NotContains(t, page, `href="/console/tenants/small"`)
	resp, _ = c.do("GET", "/console/tenants?tier=shared", nil, nil)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode, "an unknown tier is refused as the API refuses it")
	status, list := call(t, "GET", f.admin+"/admin/v1/tenants?tier=pooled", testToken, nil)
	require.Equal(t, http.StatusOK, status, list)
	require.Len(t, list["tenants"], 1)

	_, page = c.do("GET", "/console/tenants/big", nil, nil)
	require.Contains(t, page, `id="action-demote"`, "a dedicated tenant can be demoted")
	require.NotContains(t, page, `action="/console/act/promote"`)
	_, page = c.do("GET", "/console/tenants/small", nil, nil)
	require.Contains(t, page, `pooled, in <code>`)
	require.Contains(t, page, `action="/console/act/promote"`)
	resp, page = c.do("POST", "/console/act/promote", url.Values{"slug": {"small"}, "to": {""}, "csrf": {csrfOf(t, page)}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode, page)
	movePage := strings.TrimSuffix(resp.Header.Get("Location"), "?done=promote")
	require.Regexp(t, `^/console/operations/moves/[0-9]+$`, movePage)
	require.Eventually(t, func() bool {
		_, page = c.do("GET", movePage, nil, nil)
		return strings.Contains(page, `state-done">done`)
	}, 60*time.Second, 200*time.Millisecond, "the promotion's page never showed it done")
	_, page = c.do("GET", "/console/tenants?tier=pooled", nil, nil)
	require.NotContains(t, page, `href="/console/tenants/small"`, "promoted: no longer pooled")
	_, tenant := call(t, "GET", f.admin+"/admin/v1/tenants/small", testToken, nil)
	require.Empty(t, tenant["pool"], tenant)
	require.NotEmpty(t, tenant["database"], tenant)

	// A change of plan, through the same code as PATCH /tenants/{slug}.
	_, page = c.do("GET", "/console/tenants/big", nil, nil)
	require.Contains(t, page, `action="/console/act/plan"`)
	require.Contains(t, page, `<option value="pro" selected>pro (dedicated)</option>`)
	resp, page = c.do("POST", "/console/act/plan", url.Values{"slug": {"big"}, "plan": {"platinum"}, "csrf": {csrfOf(t, page)}}, nil)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode, "an unknown plan is refused as the API refuses it")
	require.Contains(t, page, "plans: basic, enterprise, free, pro")
	resp, page = c.do("POST", "/console/act/plan", url.Values{"slug": {"big"}, "plan": {"enterprise"}, "csrf": {csrfOf(t, page)}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode, page)
	require.Equal(t, "/console/tenants/big?done=plan", resp.Header.Get("Location"))
	_, tenant = call(t, "GET", f.admin+"/admin/v1/tenants/big", testToken, nil)
	require.Equal(t, "enterprise", tenant["plan"], tenant)
	// Across tiers: the move that carries the plan, shown on its page.
	_, page = c.do("GET", "/console/tenants/big", nil, nil)
	resp, page = c.do("POST", "/console/act/plan", url.Values{"slug": {"big"}, "plan": {"free"}, "csrf": {csrfOf(t, page)}}, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode, page)
	movePage = strings.TrimSuffix(resp.Header.Get("Location"), "?done=plan")
	require.Regexp(t, `^/console/operations/moves/[0-9]+$`, movePage)
	_, page = c.do("GET", movePage, nil, nil)
	require.Contains(t, page, "enterprise → free, at the switch")
	f.waitMove(t, strings.TrimPrefix(movePage, "/console/operations/moves/"))
	_, tenant = call(t, "GET", f.admin+"/admin/v1/tenants/big", testToken, nil)
	require.Equal(t, "free", tenant["plan"], tenant)
	require.NotEmpty(t, tenant["pool"], tenant)
}
