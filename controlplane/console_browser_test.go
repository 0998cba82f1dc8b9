package controlplane

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
)

// The console's browser tests drive Debian's chromium, headless. Without it
// they fail, saying what to install: a browser test that skips proves nothing.

// chromiumPath finds the browser: TENANTPLANE_CHROMIUM, or chromium (or a
// Chrome) on PATH.
func chromiumPath(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("TENANTPLANE_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("the console's browser tests need Chromium and it is not installed: run `apt-get install chromium` " +
		"(Debian; .ci/run does so), or set TENANTPLANE_CHROMIUM to a Chromium or Chrome binary")
	return ""
}

// artifactsDir is where the browser tests save their screenshots:
// TENANTPLANE_CONSOLE_ARTIFACTS, or a directory under the system's temporary
// directory. The test prints it.
func artifactsDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("TENANTPLANE_CONSOLE_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "tenantplane-console-artifacts")
	}
	require.NoError(t, os.MkdirAll(dir, 0o755))
	return dir
}

// browser is a headless Chromium tab with every request it sent recorded.
type browser struct {
	ctx      context.Context
	dir      string // screenshots
	mu       sync.Mutex
	requests []string
	console  []string // what the pages wrote to the browser's console: errors, CSP refusals
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.WindowSize(1280, 800),
		// Root (CI) cannot run Chromium's sandbox; the pages are our own, on loopback.
		chromedp.NoSandbox,
		chromedp.Flag("disable-dev-shm-usage", true),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelCtx(); cancelAlloc() })
	b := &browser{ctx: ctx, dir: artifactsDir(t)}
	// The first Run starts the browser and lives as long as ctx: no timeout on it.
	require.NoError(t, chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*network.EventRequestWillBeSent); ok {
			b.mu.Lock()
			b.requests = append(b.requests, e.Request.URL)
			b.mu.Unlock()
		}
	}), "starting %s", chromiumPath(t))
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.console = append(b.console, m.String())
			b.mu.Unlock()
		}
	}()
	t.Logf("console screenshots go to %s", b.dir)
	return b
}

// do runs steps with a bound, so a page that never shows fails the test.
func (b *browser) do(t *testing.T, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	require.NoError(t, chromedp.Do(ctx, steps...))
}

func (b *browser) text(t *testing.T, sel string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	require.NoError(t, err, sel)
	return strings.TrimSpace(s)
}

func eval[T any](t *testing.T, b *browser, js string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js))
	require.NoError(t, err, js)
	return v
}

// shot saves a screenshot of the whole page as name.png, at 1280x800, and
// checks the page does not scroll sideways.
func (b *browser) shot(t *testing.T, name string) {
	t.Helper()
	b.save(t, name+".png", 1280)
}

// narrowShot saves the page at a phone's width too, and checks that it does
// not scroll sideways there either.
func (b *browser) narrowShot(t *testing.T, name string) {
	t.Helper()
	b.do(t, chromedp.EmulateViewport(390, 800))
	defer b.do(t, chromedp.EmulateViewport(1280, 800))
	b.save(t, name+"-narrow.png", 390)
}

func (b *browser) save(t *testing.T, file string, width int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(b.dir, file), png, 0o644))
	require.True(t, eval[bool](t, b, `document.documentElement.scrollWidth <= window.innerWidth`), "%s scrolls sideways at %d px", file, width)
}

// waitFor waits until the JavaScript condition holds on the page, such as
// the URL of the page a form submitted.
func (b *browser) waitFor(t *testing.T, cond string) {
	t.Helper()
	// A navigation destroys the page's context under a poll: ask anew.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](cond))
		cancel()
		if err == nil && ok {
			return
		}
		require.True(t, time.Now().Before(deadline), "waited 30s for %s (last error: %v)", cond, err)
		time.Sleep(50 * time.Millisecond)
	}
}

func (b *browser) sent() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.requests...)
}

// TestConsoleInBrowser is an operator's session in a real Chromium: a wrong
// token refused, sign-in, a tenant found by search and suspended, a
// migration run followed from running to done without a reload, and every
// page looked at (screenshots), with no request leaving the console.
func TestConsoleInBrowser(t *testing.T) {
	t.Parallel()
	b := newBrowser(t)
	dir := migrationsDir(t)
	env := map[string]string{"TENANTPLANE_TENANT_MIGRATIONS": dir, "TENANTPLANE_SECRET_KEY": catalog.NewKey()}
	f := setupFleet(t, 1, env)
	f.createTenants(t, "initech", 2)
	status, body := f.createTenant(t, "globex", true)
	require.Equal(t, http.StatusCreated, status, body)
	// A month of API calls for one tenant, for its usage chart: day d has d*10 calls.
	now := time.Now().UTC()
	var events []map[string]any
	for d := 1; d <= now.Day(); d++ {
		at := time.Date(now.Year(), now.Month(), d, 12, 0, 0, 0, time.UTC)
		if at.After(now) {
			at = now
		}
		events = append(events, map[string]any{"id": fmt.Sprintf("ev-%d", d), "tenant": "initech-00", "meter": "api_calls", "quantity": d * 10, "timestamp": at.Format(time.RFC3339)})
	}
	status, body = call(t, "POST", f.admin+"/admin/v1/usage/events", testToken, events)
	require.Equal(t, http.StatusOK, status, body)
	base := f.admin + "/console/"
	parent := t // the redeployed App lives as long as the whole test

	t.Run("a wrong token is refused", func(t *testing.T) {
		b.do(t, chromedp.Navigate(base), chromedp.WaitVisible(chromedp.CSS("#token")))
		require.True(t, strings.HasPrefix(eval[string](t, b, `location.pathname`), "/console/signin"), "signed out, the console asks to sign in")
		b.shot(t, "01-signin")
		b.do(t, chromedp.SendKeys(chromedp.CSS("#token"), "not-the-admin-token-at-all"), chromedp.Submit(chromedp.CSS("#signin")),
			chromedp.WaitVisible(chromedp.CSS("#error")))
		require.Contains(t, b.text(t, "#error"), "Wrong admin token")
		b.shot(t, "02-signin-wrong-token")
		cookies, err := chromedp.Call(b.ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{base}})
		require.NoError(t, err)
		for _, c := range cookies.Cookies {
			require.NotEqual(t, "tp_console", c.Name, "a wrong token gets no session")
		}
	})

	t.Run("sign in", func(t *testing.T) {
		b.do(t, chromedp.SendKeys(chromedp.CSS("#token"), testToken), chromedp.Submit(chromedp.CSS("#signin")),
			chromedp.WaitVisible(chromedp.CSS(".server")))
		require.Equal(t, "/console/", eval[string](t, b, `location.pathname`))
		require.Contains(t, b.text(t, ".server h2"), "pg-1")
		require.Contains(t, b.text(t, ".server"), "3 of 100")
		b.shot(t, "03-fleet")
		b.narrowShot(t, "03-fleet")
		// From the keyboard: the first Tab reaches the skip link, Enter jumps to the content.
		b.do(t, chromedp.KeyEvent("\t"))
		require.Equal(t, "skip", eval[string](t, b, `document.activeElement.className`))
		b.do(t, chromedp.KeyEvent("\r"))
		b.waitFor(t, `location.hash === "#main"`)
		cookies, err := chromedp.Call(b.ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{base}})
		require.NoError(t, err)
		var session *network.Cookie
		for _, c := range cookies.Cookies {
			if c.Name == "tp_console" {
				session = c
			}
		}
		require.NotNil(t, session, "signed in, the browser holds the session cookie")
		require.True(t, session.HTTPOnly)
		require.Equal(t, network.CookieSameSiteStrict, session.SameSite)
		require.Greater(t, session.Expires, float64(time.Now().Unix()), "the session cookie has an expiry")
	})

	t.Run("find a tenant and suspend it", func(t *testing.T) {
		b.do(t, chromedp.Click(chromedp.CSS(`nav a[href="/console/tenants"]`)), chromedp.WaitVisible(chromedp.CSS("#q")))
		require.Equal(t, 3, eval[int](t, b, `document.querySelectorAll("#tenants tbody tr").length`))
		b.do(t, chromedp.SendKeys(chromedp.CSS("#q"), "GLOB"), chromedp.Submit(chromedp.CSS("#q")))
		b.waitFor(t, `location.search.includes("q=GLOB") && document.readyState === "complete"`)
		require.Equal(t, 1, eval[int](t, b, `document.querySelectorAll("#tenants tbody tr").length`), "the search finds globex alone")
		b.shot(t, "04-tenants-search")
		b.narrowShot(t, "04-tenants-search")

		b.do(t, chromedp.Click(chromedp.CSS(`#tenants a[href="/console/tenants/globex"]`)), chromedp.WaitVisible(chromedp.CSS("#tenant-state")))
		require.Equal(t, "active", b.text(t, "#tenant-state"))
		// By keyboard: Enter on the action, a reason typed, Enter on the confirmation.
		b.do(t, chromedp.Focus(chromedp.CSS("#action-suspend")), chromedp.KeyEvent("\r"), chromedp.WaitVisible(chromedp.CSS("#confirm-button")))
		require.Contains(t, b.text(t, ".question"), "Suspend this tenant?")
		require.Equal(t, "confirm-button", eval[string](t, b, `document.activeElement.id`), "the confirmation's button has the focus")
		b.shot(t, "05-confirm-suspend")
		b.do(t, chromedp.SendKeys(chromedp.CSS("#reason"), "browser test"), chromedp.Focus(chromedp.CSS("#confirm-button")), chromedp.KeyEvent("\r"),
			chromedp.WaitVisible(chromedp.CSS("#notice")))
		require.Equal(t, "suspended", b.text(t, "#tenant-state"))
		require.Equal(t, "Suspended.", b.text(t, "#notice"))
		require.Contains(t, b.text(t, "#audit tbody tr:first-child"), "console")
		b.shot(t, "06-tenant-suspended")
		b.narrowShot(t, "06-tenant-suspended")

		// The API agrees, and the audit log names the console.
		st, tn := call(t, "GET", f.admin+"/admin/v1/tenants/globex", testToken, nil)
		require.Equal(t, http.StatusOK, st)
		require.Equal(t, "suspended", tn["state"])
		events, err := f.app.store.ListAudit(context.Background(), catalog.AuditFilter{TenantID: tn["id"].(string), Newest: true, Limit: 1})
		require.NoError(t, err)
		require.Equal(t, "console", events[0].Actor)
		require.Equal(t, "suspended", events[0].ToState)
		require.Equal(t, "browser test", events[0].Reason)
	})

	t.Run("a migration run goes from running to done without a reload", func(t *testing.T) {
		// A new tenant migration, slow enough to be seen running, and a
		// redeploy that brings it. The session lives in the catalog: the new
		// process knows it.
		require.NoError(t, os.WriteFile(filepath.Join(dir, "000003_slow.up.sql"), []byte("SELECT pg_sleep(2); CREATE TABLE notes (id bigserial PRIMARY KEY);"), 0o644))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "000003_slow.down.sql"), []byte("DROP TABLE notes;"), 0o644))
		f.redeploy(parent, env)
		base = f.admin + "/console/"

		b.do(t, chromedp.Navigate(base+"operations"), chromedp.WaitVisible(chromedp.CSS("#start-run")))
		b.do(t, chromedp.SendKeys(chromedp.CSS(`input[name="concurrency"]`), "1"), chromedp.Click(chromedp.CSS("#start-run")),
			chromedp.WaitVisible(chromedp.CSS("#confirm-button")))
		b.do(t, chromedp.Click(chromedp.CSS("#confirm-button")), chromedp.WaitVisible(chromedp.CSS("#run-state")))
		require.Contains(t, eval[string](t, b, `location.pathname`), "/console/operations/runs/")
		b.do(t, chromedp.Evaluate[chromedp.Void](`window.sameDocument = true`))
		// The progress section is swapped every second: read it in one step
		// in the page, never by a node id that a swap may have replaced.
		live := func(sel string) string {
			return eval[string](t, b, `(document.querySelector("`+sel+`")?.textContent ?? "").trim()`)
		}
		require.Equal(t, "running", live("#run-state"))
		b.shot(t, "07-run-running")

		deadline := time.Now().Add(60 * time.Second)
		for live("#run-state") != "done" {
			if time.Now().After(deadline) {
				t.Fatalf("the run's page never showed it done: %s", live("#progress"))
			}
			time.Sleep(200 * time.Millisecond)
		}
		require.True(t, eval[bool](t, b, `window.sameDocument === true`), "the page showed the run done without being reloaded")
		require.Equal(t, "3 of 3 done", live("#run-counts"), "the suspended tenant is migrated too")
		b.shot(t, "08-run-done")

		// Cancelling a finished run is refused, with the API's message and status.
		runPath := eval[string](t, b, `location.pathname`)
		b.do(t, chromedp.Navigate(base+"act/cancel-run?id="+strings.TrimPrefix(runPath, "/console/operations/runs/")),
			chromedp.WaitVisible(chromedp.CSS("#confirm-button")), chromedp.Click(chromedp.CSS("#confirm-button")), chromedp.WaitVisible(chromedp.CSS("#error")))
		require.Contains(t, b.text(t, "h1"), "409")
		require.Contains(t, b.text(t, "#error"), "done")
		b.shot(t, "08b-refused")
	})

	t.Run("every page", func(t *testing.T) {
		for _, p := range []struct{ path, name, sel string }{
			{"operations", "09-operations", "#runs"},
			{"billing", "10-billing", "#outlook"},
			{"orphans", "11-orphans", "#orphans"},
			{"tenants/initech-00", "12-tenant", "#usage-chart"},
		} {
			b.do(t, chromedp.Navigate(base+p.path), chromedp.WaitVisible(chromedp.CSS(p.sel)))
			if p.name == "10-billing" {
				require.Regexp(t, `^pro\s+3\s+\$`, b.text(t, "#outlook tbody tr"), "three pro tenants are expected to be invoiced")
				require.Contains(t, b.text(t, "#top"), "initech-00")
			}
			if p.name == "12-tenant" {
				require.Equal(t, now.Day(), eval[int](t, b, `[...document.querySelectorAll("#usage-chart rect.bar")].filter(r => r.getAttribute("height") > 0).length`),
					"one bar for each day with API calls")
				require.Contains(t, eval[string](t, b, `document.querySelector("#chart-title").textContent`), fmt.Sprintf("at most %d a day", now.Day()*10))
			}
			b.shot(t, p.name)
			b.narrowShot(t, p.name)
		}
	})

	t.Run("no request leaves the console", func(t *testing.T) {
		sent := b.sent()
		require.NotEmpty(t, sent)
		for _, u := range sent {
			parsed, err := url.Parse(u)
			require.NoError(t, err)
			if parsed.Scheme == "data" {
				continue // the browser's own (the console's CSP allows no data: URL)
			}
			require.Equal(t, "127.0.0.1", parsed.Hostname(), "the console asked the browser for %s", u)
		}
	})

	t.Run("no page broke its CSP or threw", func(t *testing.T) {
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, m := range b.console {
			require.NotRegexp(t, `(?i)content security policy|refused to|exception|uncaught`, m)
		}
	})

	t.Run("sign out", func(t *testing.T) {
		b.do(t, chromedp.Click(chromedp.CSS(".signout button")), chromedp.WaitVisible(chromedp.CSS("#token")))
		b.do(t, chromedp.Navigate(base+"tenants"), chromedp.WaitVisible(chromedp.CSS("#token")))
		require.Equal(t, "/console/signin", eval[string](t, b, `location.pathname`), fmt.Sprintf("signed out, %s asks to sign in", base+"tenants"))
	})
}
