package billing

import "github.com/tenantplane/tenantplane/catalog"

// Store is billing's store, for the tests of package billing_test that
// check its methods directly.
type Store = store

// NewStore returns billing's store over a catalog.
func NewStore(cat *catalog.Store) *Store { return newStore(cat) }
