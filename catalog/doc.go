// Package catalog is tenantplane's source of truth: the catalog database that maps
// tenants to their own databases on a fleet of PostgreSQL servers.
//
// It owns the catalog schema (golang-migrate SQL files embedded in migrations/),
// a typed store over pgx, the error categories every other package uses, and the
// cipher that keeps credentials encrypted at rest. It imports none of the
// project's other packages; everything else imports it.
//
// A program migrates the catalog database (Migrate), builds a Cipher from
// the secret key (ParseKey, NewCipher), opens a Store on the database with it
// (Open) and goes through the Store from then on. The package example
// (example_test.go, run by go test) does exactly that and registers a
// server; the examples of Cipher and CodeOf show the cipher and the error
// categories on their own.
package catalog
