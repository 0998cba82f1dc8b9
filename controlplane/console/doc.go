// Package console is the operator console: server-rendered pages at
// /console/ on the admin listener, over the same parts the admin API calls
// (the catalog store, the provisioner, fan-out, the mover, billing).
//
// Pages are html/template files embedded in the binary, with one stylesheet
// and a vendored htmx (static/, with its license) that only refreshes a
// running operation's page; every page reads without script. An operator
// signs in once with the admin token and gets a session cookie (HttpOnly,
// SameSite=Strict, Secure on TLS) whose hash is kept in the catalog
// (console_sessions), so every replica knows it and sign-out ends it
// everywhere. Every form carries the session's CSRF token and must come from
// the console's origin; every answer carries a Content-Security-Policy that
// allows nothing but the console's own files.
//
// Changes are actions (actions.go): a link or GET form opens a confirmation
// page saying what the action will do, and its POST does it through the
// part that owns it, with the actor "console", so the audit log records it
// as the admin API's calls are recorded.
//
// controlplane wires it:
//
//	con, err := console.New(console.Config{AdminToken: token, Store: store, Provisioner: prov,
//		Fanout: fan, Moves: moves, Billing: bill, Orphans: findOrphans})
//	mux.Handle(console.Prefix, con)
package console
