package controlplane

import (
	"bytes"
	"context"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/httpapi"
	"github.com/tenantplane/tenantplane/internal/stall"
)

// catalogDown is what an admin call answers while the catalog is found not
// answering, and the cause of the calls cancelled when it is found so.
func catalogDown(string) error {
	return catalog.Errorf(catalog.CodeUnavailable, "the catalog database is not answering; retry shortly")
}

// newCatalogWatch is the watchdog of the admin API's catalog: a call that
// has waited a second has the catalog probed on a fresh connection, within
// two seconds (a loaded catalog still answers that); one that does not
// answer has the calls waiting on it answer 503, and the next ones at once,
// until a probe finds it answering (internal/stall).
func newCatalogWatch(a *App) *stall.Watchdog {
	// On a fresh connection, not one of the pool's, which may be stuck on the hung wire.
	a.catalogProbe = stall.ConnProbe(a.store.Pool().Config().ConnConfig, nil)
	return stall.New(stall.Config{StallAfter: time.Second, ProbeTimeout: 2 * time.Second, Cause: catalogDown, Logger: a.logger})
}

// catalogGuard keeps admin calls from hanging on a catalog that hangs.
//
// A call cancelled because the catalog does not answer is answered at once,
// but its gin context is held for catalogConnectBound before it goes back
// to gin's pool: handlers pass the gin context to the catalog pool, which
// may go on making a connection in the background with it (pgxpool keeps
// the caller's values), and gin would hand the context to the next request
// meanwhile (a data race). The answer is written with its length and
// flushed first, so the client does not wait for that.
func (a *App) catalogGuard(c *gin.Context) {
	if a.catalogWatch.Down(0) {
		httpapi.WriteError(c, catalogDown(""))
		return
	}
	hw := &holdWriter{ResponseWriter: c.Writer}
	c.Writer = hw
	ctx, cancel := context.WithCancelCause(c.Request.Context())
	done := a.catalogWatch.Watch(0, "catalog", a.catalogProbe, func(cause error) {
		hw.hold()
		cancel(cause)
	})
	c.Request = c.Request.WithContext(ctx)
	c.Next()
	done()
	cancel(nil)
	c.Writer = hw.ResponseWriter
	if hw.release() {
		time.Sleep(catalogConnectBound)
	}
}

// catalogConnectBound outlasts a catalog connection attempt (the catalog
// pool's 5 s connect timeout).
const catalogConnectBound = 6 * time.Second

// holdWriter passes a response through, unless hold is called before any
// of it is written: then it keeps it, and release sends it whole.
type holdWriter struct {
	gin.ResponseWriter
	mu     sync.Mutex
	held   bool
	status int
	buf    bytes.Buffer
}

// hold keeps what is written from now on, if nothing was written yet.
func (w *holdWriter) hold() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.ResponseWriter.Written() {
		w.held, w.status = true, http.StatusOK
	}
}

func (w *holdWriter) WriteHeader(code int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.held {
		w.status = code
		return
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *holdWriter) WriteHeaderNow() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.held {
		w.ResponseWriter.WriteHeaderNow()
	}
}

func (w *holdWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.held {
		return w.buf.Write(b)
	}
	return w.ResponseWriter.Write(b)
}

func (w *holdWriter) WriteString(s string) (int, error) { return w.Write([]byte(s)) }

func (w *holdWriter) Status() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.held {
		return w.status
	}
	return w.ResponseWriter.Status()
}

// release sends a held response, with its length, and flushes it; it
// reports whether there was one.
func (w *holdWriter) release() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.held {
		return false
	}
	w.held = false
	w.ResponseWriter.Header().Set("Content-Length", strconv.Itoa(w.buf.Len()))
	w.ResponseWriter.WriteHeader(w.status)
	_, _ = w.ResponseWriter.Write(w.buf.Bytes())
	w.ResponseWriter.Flush()
	return true
}
