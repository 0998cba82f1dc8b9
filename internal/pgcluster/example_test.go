package pgcluster_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/jackc/pgx/v5"

	"github.com/tenantplane/tenantplane/internal/pgcluster"
)

// A development cluster that keeps its data, and its port, across runs.
func Example() {
	ctx := context.Background()
	c, err := pgcluster.New(pgcluster.Config{
		Dir:      ".data/postgres",
		Password: "dev-only-password",
	})
	if errors.Is(err, pgcluster.ErrNoBinaries) {
		log.Fatal(err) // the message says what to install or set
	}
	if err != nil {
		log.Fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer c.Stop(ctx)

	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(ctx)
	var version string
	if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&version); err != nil {
		log.Fatal(err)
	}
	fmt.Println("PostgreSQL", version, "on port", c.Port())
}
