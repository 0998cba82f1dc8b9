package console

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/time/rate"

	"github.com/tenantplane/tenantplane/catalog"
)

const (
	// sessionCookie holds the session's token; the catalog keeps its hash.
	sessionCookie = "tp_console"
	// signInCookie holds the sign-in form's CSRF token until sign-in
	// (double submit: the form and the cookie must carry the same value).
	signInCookie = "tp_console_signin"
	// csrfField is every form's CSRF token.
	csrfField = "csrf"
)

// Wrong admin tokens are limited per client address: a burst of
// failedBurst, then one every failedEvery.
const (
	failedBurst = 5
	failedEvery = 2 * time.Second
)

// session is a signed-in operator.
type session struct {
	CSRF string
}

// sessions keeps the console's sessions in the catalog, so a sign-out on
// one replica ends the session on all.
type sessions struct {
	store *catalog.Store
	ttl   time.Duration
}

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand never fails on supported platforms
	return base64.RawURLEncoding.EncodeToString(b)
}

func hashToken(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// create records a new session and returns its token and expiry, dropping
// expired sessions on the way.
func (ss *sessions) create(ctx context.Context, now time.Time) (token string, expires time.Time, err error) {
	token, expires = randomToken(), now.Add(ss.ttl)
	err = ss.store.InTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM console_sessions WHERE expires_at < $1`, now); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO console_sessions (token_hash, csrf_token, expires_at) VALUES ($1, $2, $3)`,
			hashToken(token), randomToken(), expires)
		return err
	})
	return token, expires, catalog.Classify(err, "console session")
}

// lookup returns the live session of token; a missing, expired or ended
// one is CodeUnauthorized.
func (ss *sessions) lookup(ctx context.Context, token string, now time.Time) (session, error) {
	var s session
	err := ss.store.Pool().QueryRow(ctx, `SELECT csrf_token FROM console_sessions WHERE token_hash = $1 AND expires_at > $2`,
		hashToken(token), now).Scan(&s.CSRF)
	if errors.Is(err, pgx.ErrNoRows) {
		return session{}, catalog.Errorf(catalog.CodeUnauthorized, "your console session has ended: sign in again")
	}
	return s, catalog.Classify(err, "console session")
}

// end deletes the session of token.
func (ss *sessions) end(ctx context.Context, token string) error {
	_, err := ss.store.Pool().Exec(ctx, `DELETE FROM console_sessions WHERE token_hash = $1`, hashToken(token))
	return catalog.Classify(err, "console session")
}

// limiter is one client address's allowance of wrong tokens.
type limiter struct {
	mu  sync.Mutex
	lim *rate.Limiter
}

func (c *Console) limiterFor(r *http.Request) *limiter {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	l, _, _ := c.failures.PeekOrAdd(host, &limiter{lim: rate.NewLimiter(rate.Every(failedEvery), failedBurst)})
	if l == nil {
		l, _ = c.failures.Get(host)
	}
	return l
}

// blocked reports how long the client must wait before trying a token again.
func (l *limiter) blocked(now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lim.TokensAt(now) >= 1 {
		return 0
	}
	r := l.lim.ReserveN(now, 1)
	d := r.DelayFrom(now)
	r.CancelAt(now)
	return d
}

func (l *limiter) failed(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lim.AllowN(now, 1)
}

func (c *Console) setCookie(w http.ResponseWriter, r *http.Request, name, value string, expires time.Time) {
	ck := &http.Cookie{
		Name: name, Value: value, Path: Prefix, HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: r.TLS != nil, Expires: expires,
	}
	if value == "" {
		ck.MaxAge = -1
	} else {
		ck.MaxAge = int(math.Ceil(time.Until(expires).Seconds()))
	}
	http.SetCookie(w, ck)
}

// signInData is the sign-in page's.
type signInData struct{ Next string }

func (c *Console) signInPage(w http.ResponseWriter, r *http.Request) {
	c.showSignIn(w, r, http.StatusOK, "")
}

func (c *Console) showSignIn(w http.ResponseWriter, r *http.Request, status int, msg string) {
	csrf := randomToken()
	c.setCookie(w, r, signInCookie, csrf, c.cfg.Now().Add(time.Hour))
	c.render(w, status, "signin.html", page{Title: "Sign in", CSRF: csrf, Error: msg, Status: status,
		Data: signInData{Next: safeNext(r.FormValue("next"))}})
}

// safeNext keeps a redirect after sign-in on the console.
func safeNext(next string) string {
	u, err := url.Parse(next)
	if err != nil || u.Scheme != "" || u.Host != "" || !strings.HasPrefix(u.Path, Prefix) || strings.Contains(next, "\\") || strings.HasPrefix(next, "//") {
		return Prefix
	}
	return u.RequestURI()
}

func (c *Console) signIn(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	now := c.cfg.Now()
	ck, err := r.Cookie(signInCookie)
	if err != nil || !sameOrigin(r) || !equal(ck.Value, r.PostFormValue(csrfField)) {
		c.showSignIn(w, r, http.StatusForbidden, "The sign-in form expired or came from another site: sign in again.")
		return
	}
	lim := c.limiterFor(r)
	if wait := lim.blocked(now); wait > 0 {
		w.Header().Set("Retry-After", fmt.Sprint(int(math.Ceil(wait.Seconds()))))
		c.showSignIn(w, r, http.StatusTooManyRequests, fmt.Sprintf("Too many wrong tokens from your address: try again in %s.", wait.Round(time.Second)))
		return
	}
	if !equal(c.cfg.AdminToken, r.PostFormValue("token")) {
		lim.failed(now)
		c.cfg.Logger.WarnContext(r.Context(), "console: wrong admin token", "remote", r.RemoteAddr)
		c.showSignIn(w, r, http.StatusUnauthorized, "Wrong admin token: use the value of TENANTPLANE_ADMIN_TOKEN.")
		return
	}
	ctx, cancel := bounded(r)
	defer cancel()
	token, expires, err := c.sessions.create(ctx, now)
	if err != nil {
		c.fail(w, r, session{}, err)
		return
	}
	c.audit(ctx, catalog.AuditEvent{Action: "console.sign_in", Subject: r.RemoteAddr})
	c.setCookie(w, r, signInCookie, "", time.Time{})
	c.setCookie(w, r, sessionCookie, token, expires)
	http.Redirect(w, r, safeNext(r.PostFormValue("next")), http.StatusSeeOther)
}

func (c *Console) signOut(w http.ResponseWriter, r *http.Request, _ session) {
	ck, _ := r.Cookie(sessionCookie)
	ctx, cancel := bounded(r)
	defer cancel()
	if err := c.sessions.end(ctx, ck.Value); err != nil {
		c.fail(w, r, session{}, err)
		return
	}
	c.audit(ctx, catalog.AuditEvent{Action: "console.sign_out", Subject: r.RemoteAddr})
	c.setCookie(w, r, sessionCookie, "", time.Time{})
	http.Redirect(w, r, Prefix+"signin", http.StatusSeeOther)
}

// audit records a console event that no part records itself.
func (c *Console) audit(ctx context.Context, ev catalog.AuditEvent) {
	ev.Actor = Actor
	if err := c.cfg.Store.RecordAudit(ctx, ev); err != nil {
		c.cfg.Logger.ErrorContext(ctx, "console: audit", "action", ev.Action, "error", err)
	}
}

func equal(want, got string) bool {
	w, g := sha256.Sum256([]byte(want)), sha256.Sum256([]byte(got))
	return want != "" && subtle.ConstantTimeCompare(w[:], g[:]) == 1
}

// sameOrigin refuses a request that a browser marks as sent from another
// site (Sec-Fetch-Site, then Origin): a second fence behind the CSRF token.
func sameOrigin(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
	default:
		return false
	}
	if o := r.Header.Get("Origin"); o != "" && o != "null" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return false
		}
	} else if o == "null" {
		return false
	}
	return true
}

// signedIn returns the request's session, or false after answering: a page
// sends the browser to sign in, anything else gets 401.
func (c *Console) signedIn(w http.ResponseWriter, r *http.Request) (session, bool) {
	ck, err := r.Cookie(sessionCookie)
	var s session
	if err == nil {
		ctx, cancel := bounded(r)
		defer cancel()
		s, err = c.sessions.lookup(ctx, ck.Value, c.cfg.Now())
		if err != nil && catalog.CodeOf(err) != catalog.CodeUnauthorized {
			c.fail(w, r, session{}, err)
			return session{}, false
		}
	}
	if err != nil {
		if r.Method == http.MethodGet && r.Header.Get("HX-Request") == "" {
			http.Redirect(w, r, Prefix+"signin?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
		} else {
			if r.Header.Get("HX-Request") != "" {
				w.Header().Set("HX-Redirect", Prefix+"signin") // a polling page goes to sign in
			}
			c.render(w, http.StatusUnauthorized, "error.html", page{Title: "Signed out", Status: http.StatusUnauthorized,
				Error: "Your console session has ended: sign in again."})
		}
		return session{}, false
	}
	return s, true
}

// get serves a page to a signed-in operator.
func (c *Console) get(h func(http.ResponseWriter, *http.Request, session)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s, ok := c.signedIn(w, r); ok {
			h(w, r, s)
		}
	})
}

// post serves a change to a signed-in operator whose form carries the
// session's CSRF token and comes from the console's own origin.
func (c *Console) post(h func(http.ResponseWriter, *http.Request, session)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		s, ok := c.signedIn(w, r)
		if !ok {
			return
		}
		if !sameOrigin(r) || !equal(s.CSRF, r.PostFormValue(csrfField)) {
			c.cfg.Logger.WarnContext(r.Context(), "console: form refused: CSRF token missing or wrong, or another site", "path", r.URL.Path, "remote", r.RemoteAddr)
			c.fail(w, r, s, catalog.Errorf(catalog.CodeForbidden, "this form is not from your console session (its CSRF token is missing or wrong): reload the page and try again"))
			return
		}
		h(w, r, s)
	})
}
