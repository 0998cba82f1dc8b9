// Package pgtest gives tests real, hermetic PostgreSQL: private clusters
// started with internal/pgcluster on free loopback ports, and a fresh
// database per test, cloned from a migrated template when asked.
//
// A test package that uses the shared server calls Main from its TestMain,
// which stops the server after the tests (see Main). Each test then takes a
// database of its own with NewDB. NewDB creates it with a unique name on the
// process-wide Shared server and drops it when the test ends, unless the test
// failed: then it is kept and its DSN logged. WithTemplate runs the setup
// (migrations, say) once per server and process into a template database;
// every NewDB after that is a CREATE DATABASE ... TEMPLATE, which takes
// milliseconds. Name templates with a hash of what the setup runs (HashFS).
// The examples (example_test.go) show each of these running, and catalog's
// main_test.go a test bundle built on them.
//
// Example functions have no *testing.T to give NewDB: they take their
// database with CreateDB, which returns its errors and a function that drops
// it.
//
// Tests that need several servers, or stop one to see what breaks, take
// private ones with NewServer; Server.Stop and Server.Start stop and restart
// it on the same port.
//
// Only the first `go test` process on a machine runs initdb: the result is
// cached in $TMPDIR/tenantplane-pgtest/initdb-<version>-<hash>, and every
// cluster starts from a copy of it. Cluster data lives in
// /dev/shm/tenantplane-pgtest/cluster-<pid>-* (tmpfs, when it has 1 GB free;
// else under $TMPDIR) and is removed when the cluster stops. Clusters of test
// processes that died (a timeout, a kill) are stopped and removed by the next
// test process that uses this package.
//
// Environment:
//
//   - TENANTPLANE_TEST_DATABASE_URL: use this existing server as the Shared one
//     (postgres:// URL; its user must be able to CREATE DATABASE). NewServer
//     still starts private clusters. Templates are kept there and reused by
//     name, so put a content hash (HashFS) in template names.
//   - TENANTPLANE_PGTEST_KEEP=1: when tests fail, leave the clusters running
//     (with the databases of the failed tests) and print how to stop them.
//   - TENANTPLANE_PGTEST_DIR: put the clusters' directories under this directory
//     instead (it must be traversable by the postgres user when tests run as root).
//   - TENANTPLANE_PG_BIN: where the PostgreSQL server binaries are (see pgcluster.FindBinDir).
package pgtest
