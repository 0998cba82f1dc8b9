package billing_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/billing"
	"github.com/tenantplane/tenantplane/internal/startstop"
)

func TestServiceStartsOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	svc := b.service(t, billing.Config{})
	ctx := context.Background()
	require.NoError(t, svc.Start(ctx))
	require.ErrorIs(t, svc.Start(ctx), startstop.ErrStarted)
	require.NoError(t, svc.Stop(ctx))
	require.NoError(t, svc.Stop(ctx), "stopping twice does nothing")
}
