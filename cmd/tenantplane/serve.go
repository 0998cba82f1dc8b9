package main

import (
	"os"

	"github.com/spf13/cobra"
	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/controlplane"
)

func newServeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "serve",
		Short: "Serve the tenant API and the admin API (configured by the environment; see README)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := controlplane.ConfigFromEnv(os.Getenv)
			if err != nil {
				return err
			}
			app, err := controlplane.New(cmd.Context(), cfg, newLogger())
			if err != nil {
				return err
			}
			return app.Run(cmd.Context())
		},
	}
}

func newDevCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Serve on the embedded default: a private PostgreSQL cluster under ./.data as catalog and first tenant server",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return controlplane.Dev(cmd.Context(), controlplane.DevOptions{
				Dir: dir, Getenv: os.Getenv, Logger: newLogger(), Out: cmd.OutOrStdout(),
			})
		},
	}
	cmd.Flags().StringVar(&dir, "data", ".data", "directory for the private cluster and its secrets")
	return cmd
}

func newCatalogCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "catalog", Short: "Manage the catalog database (DATABASE_URL)"}
	dsn := func() (string, error) {
		if v := os.Getenv("DATABASE_URL"); v != "" {
			return v, nil
		}
		return "", catalog.Errorf(catalog.CodeInvalid, "DATABASE_URL is not set; set it to the catalog database")
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "migrate",
		Short: "Apply the catalog migrations (safe to run while other processes start)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			url, err := dsn()
			if err != nil {
				return err
			}
			if err := catalog.Migrate(cmd.Context(), url); err != nil {
				return err
			}
			v, _, err := catalog.SchemaVersion(cmd.Context(), url)
			if err == nil {
				cmd.Printf("catalog at version %d\n", v)
			}
			return err
		},
	}, &cobra.Command{
		Use:   "version",
		Short: "Print the catalog schema version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			url, err := dsn()
			if err != nil {
				return err
			}
			v, dirty, err := catalog.SchemaVersion(cmd.Context(), url)
			if err != nil {
				return err
			}
			cmd.Printf("catalog at version %d (dirty: %t)\n", v, dirty)
			return nil
		},
	})
	return cmd
}
