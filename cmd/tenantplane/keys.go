package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// APIKey is a tenant's API key as listed: never the key itself.
type APIKey struct {
	ID         apiID    `json:"id"`
	Prefix     string   `json:"prefix"`
	CreatedAt  apiTime  `json:"created_at"`
	LastUsedAt apiTime  `json:"last_used_at"`
	RevokedAt  apiTime  `json:"revoked_at"`
	Scopes     []string `json:"scopes"`
	ExpiresAt  apiTime  `json:"expires_at"`
}

// CreatedKey is the answer to creating a key, the only one that holds the key.
type CreatedKey struct {
	ID        apiID    `json:"id"`
	Key       string   `json:"key"`
	Prefix    string   `json:"prefix"`
	CreatedAt apiTime  `json:"created_at"`
	Scopes    []string `json:"scopes"`
	ExpiresAt apiTime  `json:"expires_at"`
}

func newKeysCmd() *cobra.Command {
	cmd, o := newAdminGroup("keys", "Issue, list and revoke the API keys of a tenant")
	cmd.AddCommand(newKeysCreateCmd(o), newKeysListCmd(o), newKeysRevokeCmd(o))
	return cmd
}

func newKeysCreateCmd(o *adminOptions) *cobra.Command {
	var (
		scopes  []string
		expires time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create SLUG",
		Short: "Issue an API key for a tenant; the key is shown this once only",
		Long: `Issue an API key for a tenant; the key is shown this once only.

Without --scope the key may call everything (scope *); with it, only the
routes of the scopes given: users:read, users:write, usage:read, audit:read.
Without --expires it never expires; with it, it answers 401 from then on.
Rotate a key by issuing a new one: the old one works until its own expiry.`,
		Example: "  tenantplane keys create acme --scope users:read --scope usage:read --expires 720h",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if expires < 0 {
				return fmt.Errorf("--expires %s is not a positive duration such as 720h", expires)
			}
			body := map[string]any{}
			if len(scopes) > 0 {
				body["scopes"] = scopes
			}
			if expires > 0 {
				body["expires_at"] = time.Now().Add(expires).UTC().Format(time.RFC3339)
			}
			var send any // no body: every scope, no expiry
			if len(body) > 0 {
				send = body
			}
			raw, err := o.call(cmd, "POST", pathf("/tenants/%s/keys", args[0]), nil, send)
			if err != nil {
				return err
			}
			var k CreatedKey
			return o.print(cmd, raw, &k, func() error { return writeCreatedKey(cmd.OutOrStdout(), args[0], k) })
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&scopes, "scope", nil, "a scope of the key (repeat for more): users:read, users:write, usage:read, audit:read or * (default *)")
	f.DurationVar(&expires, "expires", 0, "the key expires this long from now, e.g. 720h (default: never)")
	return cmd
}

// scopesText is a key's scopes for a table cell.
func scopesText(scopes []string) string {
	if len(scopes) == 0 {
		return "*"
	}
	return strings.Join(scopes, ",")
}

func newKeysListCmd(o *adminOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "list SLUG",
		Short: "List a tenant's API keys (prefixes only; keys are never shown again)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := o.callAll(cmd, pathf("/tenants/%s/keys", args[0]), nil, "keys")
			if err != nil {
				return err
			}
			var page struct {
				Keys []APIKey `json:"keys"`
			}
			return o.print(cmd, raw, &page, func() error { return writeKeys(cmd.OutOrStdout(), page.Keys) })
		},
	}
}

func newKeysRevokeCmd(o *adminOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke SLUG KEY_ID",
		Short: "Revoke an API key; calls with it fail within a second",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			// The answer is 204 with no body: with --json there is nothing to print.
			if _, err := o.call(cmd, "DELETE", pathf("/tenants/%s/keys/%s", args[0], args[1]), nil, nil); err != nil {
				return err
			}
			if o.json {
				return nil
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "Revoked API key %s of tenant %s.\n", args[1], args[0])
			return err
		},
	}
}
