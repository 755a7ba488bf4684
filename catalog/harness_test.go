package catalog

import (
	"testing"

	"github.com/dgraph-io/badger/v4"

	"csbs/internal/kv"
)

// newTestCatalog opens a catalog on a fresh Badger database in t's temp
// dir. When the test ends it checks that every index entry and counter
// agrees with the objects (Check), as bbolt's tests check the database
// after each test.
func newTestCatalog(t testing.TB, opts Options) *Catalog {
	t.Helper()
	db, err := badger.Open(badger.DefaultOptions(t.TempDir()).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	c := New(kv.New(db), opts)
	if _, err := c.EnsureIndexes(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		checkCatalog(t, c)
		db.Close()
	})
	return c
}

// checkCatalog fails the test if the catalog's indexes or counters
// disagree with its objects.
func checkCatalog(t testing.TB, c *Catalog) {
	t.Helper()
	if err := c.Check(); err != nil {
		t.Error(err)
	}
}
