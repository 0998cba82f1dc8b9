package controlplane

import (
	"context"
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
func (a *App) catalogGuard(c *gin.Context) {
	if a.catalogWatch.Down(0) {
		httpapi.WriteError(c, catalogDown(""))
		return
	}
	ctx, cancel := context.WithCancelCause(c.Request.Context())
	done := a.catalogWatch.Watch(0, "catalog", a.catalogProbe, cancel)
	defer func() { done(); cancel(nil) }()
	c.Request = c.Request.WithContext(ctx)
	c.Next()
}
