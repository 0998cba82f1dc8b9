package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

// UsagePage is the usage of a period by tenant, as the admin API shows it.
type UsagePage struct {
	Period  string `json:"period"`
	Tenants []struct {
		Tenant string           `json:"tenant"`
		Usage  map[string]int64 `json:"usage"`
	} `json:"tenants"`
	Totals     map[string]int64 `json:"totals"`
	NextCursor string           `json:"next_cursor"`
}

func newUsageCmd() *cobra.Command {
	cmd, o := newAdminGroup("usage", "Show metered usage by tenant and meter; record usage events")
	cmd.AddCommand(newUsageShowCmd(o), newUsageRecordCmd(o))
	return cmd
}

func newUsageShowCmd(o *adminOptions) *cobra.Command {
	var period, tenant string
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show a period's usage (default: the open one) by tenant and meter, or one --tenant's",
		Example: `  tenantplane usage show
  tenantplane usage show --period 2026-03 --tenant acme`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			if period != "" {
				q.Set("period", period)
			}
			if tenant != "" {
				raw, err := o.call(cmd, "GET", pathf("/tenants/%s/usage", tenant), q, nil)
				if err != nil {
					return err
				}
				var u struct {
					Tenant string           `json:"tenant"`
					Period string           `json:"period"`
					Usage  map[string]int64 `json:"usage"`
				}
				return o.print(cmd, raw, &u, func() error {
					fmt.Fprintf(cmd.OutOrStdout(), "Usage of %s in %s:\n\n", u.Tenant, u.Period)
					t := newTable(cmd.OutOrStdout(), "METER", "QUANTITY")
					for _, m := range sortedKeys(u.Usage) {
						t.row(m, groupDigits(u.Usage[m]))
					}
					return t.flush()
				})
			}
			// Every page, so that the table is the whole period.
			var all UsagePage
			var raws []json.RawMessage
			for {
				raw, err := o.call(cmd, "GET", "/usage", q, nil)
				if err != nil {
					return err
				}
				var page UsagePage
				if err := json.Unmarshal(raw, &page); err != nil {
					return fmt.Errorf("the admin API's answer is not the JSON expected: %w", err)
				}
				raws = append(raws, raw)
				all.Period, all.Totals = page.Period, page.Totals
				all.Tenants = append(all.Tenants, page.Tenants...)
				if page.NextCursor == "" {
					break
				}
				q.Set("cursor", page.NextCursor)
			}
			if o.json {
				if len(raws) == 1 {
					return writeJSON(cmd.OutOrStdout(), raws[0])
				}
				raw, err := json.Marshal(all)
				if err != nil {
					return err
				}
				return writeJSON(cmd.OutOrStdout(), raw)
			}
			return writeUsage(cmd.OutOrStdout(), all)
		},
	}
	cmd.Flags().StringVar(&period, "period", "", "the month, YYYY-MM (default: the open one)")
	cmd.Flags().StringVar(&tenant, "tenant", "", "one tenant's usage (slug)")
	return cmd
}

func writeUsage(w io.Writer, page UsagePage) error {
	if len(page.Tenants) == 0 {
		_, err := fmt.Fprintf(w, "No usage in %s.\n", page.Period)
		return err
	}
	meters := sortedKeys(page.Totals)
	for _, tn := range page.Tenants {
		for m := range tn.Usage {
			if !slices.Contains(meters, m) {
				meters = append(meters, m)
			}
		}
	}
	slices.Sort(meters)
	header := []string{"TENANT"}
	for _, m := range meters {
		header = append(header, strings.ToUpper(m))
	}
	fmt.Fprintf(w, "Usage in %s:\n\n", page.Period)
	t := newTable(w, header...)
	for _, tn := range page.Tenants {
		cells := []string{tn.Tenant}
		for _, m := range meters {
			cells = append(cells, groupDigits(tn.Usage[m]))
		}
		t.row(cells...)
	}
	cells := []string{"TOTAL"}
	for _, m := range meters {
		cells = append(cells, groupDigits(page.Totals[m]))
	}
	t.row(cells...)
	return t.flush()
}

func sortedKeys(m map[string]int64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func newUsageRecordCmd(o *adminOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "record FILE",
		Short: "Record usage events from a JSON file (- for stdin): [{id, tenant, meter, quantity, timestamp}]",
		Long: `Record usage events from a JSON array of {id, tenant, meter, quantity,
timestamp}. An id counts once, for good: sending a file again counts nothing
twice. An invalid event (unknown tenant or meter, negative quantity, a
timestamp in the future) refuses the whole file, naming each bad event.`,
		Example: `  tenantplane usage record events.json
  echo '[{"id":"job-42","tenant":"acme","meter":"api_calls","quantity":3,"timestamp":"2026-03-04T10:00:00Z"}]' | tenantplane usage record -`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var r io.Reader = cmd.InOrStdin()
			if args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return err
				}
				defer f.Close()
				r = f
			}
			var events []json.RawMessage
			if err := json.NewDecoder(r).Decode(&events); err != nil {
				return fmt.Errorf("%s is not a JSON array of events: %w", args[0], err)
			}
			raw, err := o.call(cmd, "POST", "/usage/events", nil, events)
			if err != nil {
				return err
			}
			var res struct {
				Accepted   int `json:"accepted"`
				Duplicates int `json:"duplicates"`
			}
			return o.print(cmd, raw, &res, func() error {
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "Recorded %s new events; %s were recorded before.\n",
					strconv.Itoa(res.Accepted), strconv.Itoa(res.Duplicates))
				return err
			})
		},
	}
}
