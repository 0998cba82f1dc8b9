// Command tenantplane is the tenantplane control plane: one binary that serves
// the tenant API, the admin API and the background work, and the CLI that
// operators drive it with.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "tenantplane:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "tenantplane",
		Short:         "A control plane for SaaS products that give every tenant its own PostgreSQL database",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServeCmd(), newDevCmd(), newCatalogCmd(), newServersCmd(), newTenantsCmd(), newKeysCmd())
	root.AddCommand(newFanoutCmd(), newMigrationsCmd(), newMovesCmd(), newEvacuationsCmd(), newPoolsCmd())
	root.AddCommand(newBillingCmd(), newUsageCmd())
	return root
}

func newLogger() *slog.Logger {
	level := slog.LevelInfo
	if os.Getenv("TENANTPLANE_LOG_LEVEL") == "debug" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}
