package catalog_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

// Example sets up a catalog and registers the first server of the fleet:
// migrate the catalog database, open the store with the cipher of the
// secret key, then use it.
func Example() {
	ctx := context.Background()
	// Only for the example: an empty database to be the catalog.
	dsn, drop, err := pgtest.CreateDB(ctx)
	if err != nil {
		panic(err)
	}
	defer func() {
		if err := drop(); err != nil {
			panic(err)
		}
	}()

	if err := catalog.Migrate(ctx, dsn); err != nil {
		panic(err)
	}
	// A deployment reads its key from TENANTPLANE_SECRET_KEY instead.
	key, err := catalog.ParseKey(catalog.NewKey())
	if err != nil {
		panic(err)
	}
	cipher, err := catalog.NewCipher(key)
	if err != nil {
		panic(err)
	}
	store, err := catalog.Open(ctx, dsn, cipher, catalog.StoreConfig{})
	if err != nil {
		panic(err)
	}
	defer store.Close()

	srv, err := store.CreateServer(ctx, catalog.NewServer{
		Name:       "pg-1",
		DSN:        "postgres://tpadmin:s3cret@pg-1.internal:5432/postgres",
		Capacity:   500,
		ConnBudget: 100,
		Actor:      "example",
	})
	if err != nil {
		panic(err)
	}
	fmt.Println(srv.Name, srv.State, srv.Capacity, srv.DSNRedacted)

	_, err = store.CreateServer(ctx, catalog.NewServer{Name: "pg-1", DSN: "postgres://pg-2.internal/postgres", Capacity: 500, ConnBudget: 100})
	fmt.Println(catalog.CodeOf(err), errors.Is(err, catalog.ErrConflict))
	// Output:
	// pg-1 active 500 postgres://tpadmin@pg-1.internal:5432/postgres
	// conflict true
}

// ExampleCipher seals a secret for a catalog row. The associated data binds
// it to that row: a sealed value copied to another row does not open.
func ExampleCipher() {
	key, err := catalog.ParseKey(catalog.NewKey())
	if err != nil {
		panic(err)
	}
	cipher, err := catalog.NewCipher(key)
	if err != nil {
		panic(err)
	}
	sealed := cipher.Seal([]byte("postgres://tpadmin:s3cret@pg-1.internal/postgres"), []byte("server-dsn:pg-1"))

	plain, err := cipher.Open(sealed, []byte("server-dsn:pg-1"))
	fmt.Println(string(plain), err)
	_, err = cipher.Open(sealed, []byte("server-dsn:pg-2"))
	fmt.Println(err)
	// Output:
	// postgres://tpadmin:s3cret@pg-1.internal/postgres <nil>
	// cannot decrypt: wrong TENANTPLANE_SECRET_KEY or tampered value
}

// ExampleCodeOf finds the category of an error, however deep it is wrapped;
// an API maps it to a status in one place.
func ExampleCodeOf() {
	err := fmt.Errorf("register server: %w", catalog.Errorf(catalog.CodeConflict, "server %q exists", "pg-1"))
	fmt.Println(catalog.CodeOf(err), errors.Is(err, catalog.ErrConflict), catalog.MessageOf(err))
	fmt.Println(catalog.CodeOf(errors.New("something else")))
	// Output:
	// conflict true server "pg-1" exists
	// internal
}
