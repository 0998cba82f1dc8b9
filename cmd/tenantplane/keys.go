package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

// APIKey is a tenant's API key as listed: never the key itself.
type APIKey struct {
	ID         apiID   `json:"id"`
	Prefix     string  `json:"prefix"`
	CreatedAt  apiTime `json:"created_at"`
	LastUsedAt apiTime `json:"last_used_at"`
	RevokedAt  apiTime `json:"revoked_at"`
}

// CreatedKey is the answer to creating a key, the only one that holds the key.
type CreatedKey struct {
	ID        apiID   `json:"id"`
	Key       string  `json:"key"`
	Prefix    string  `json:"prefix"`
	CreatedAt apiTime `json:"created_at"`
}

func newKeysCmd() *cobra.Command {
	cmd, o := newAdminGroup("keys", "Issue, list and revoke the API keys of a tenant")
	cmd.AddCommand(newKeysCreateCmd(o), newKeysListCmd(o), newKeysRevokeCmd(o))
	return cmd
}

func newKeysCreateCmd(o *adminOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "create SLUG",
		Short: "Issue an API key for a tenant; the key is shown this once only",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := o.call(cmd, "POST", pathf("/tenants/%s/keys", args[0]), nil, nil)
			if err != nil {
				return err
			}
			var k CreatedKey
			return o.print(cmd, raw, &k, func() error { return writeCreatedKey(cmd.OutOrStdout(), args[0], k) })
		},
	}
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
