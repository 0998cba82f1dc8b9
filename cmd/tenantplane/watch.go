package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
)

// watchFlags are the --watch and --interval flags of a command that can
// follow a run (fan-out or billing).
type watchFlags struct {
	on       bool
	interval time.Duration
}

func (w *watchFlags) register(cmd *cobra.Command, usage string, interval time.Duration) {
	cmd.Flags().BoolVar(&w.on, "watch", false, usage)
	cmd.Flags().DurationVar(&w.interval, "interval", interval, "how often --watch asks for the run")
}

// follow asks the admin API for path every w.interval and hands each answer
// to step until step reports the run over (or fails). Ctrl-C stops the
// watching, not the run: it says so, naming the run (name) and the command
// that follows it again (again). end, when set, is called before anything
// else is written on the way out (it closes a progress bar).
func (o *adminOptions) follow(cmd *cobra.Command, w watchFlags, path, name, again string, end func(),
	step func(raw json.RawMessage) (over bool, err error)) error {
	if w.interval <= 0 {
		return fmt.Errorf("--interval must be positive, got %s", w.interval)
	}
	c, err := o.client(os.Getenv)
	if err != nil {
		return err
	}
	if end == nil {
		end = func() {}
	}
	ctx := cmd.Context()
	stopped := func() error {
		end()
		fmt.Fprintf(cmd.ErrOrStderr(), "Stopped watching; %s goes on. Follow it again with: %s\n", name, again)
		return nil
	}
	for {
		var raw json.RawMessage
		if err := c.do(ctx, "GET", path, nil, nil, &raw); err != nil {
			if errors.Is(err, context.Canceled) {
				return stopped()
			}
			end()
			return err
		}
		if over, err := step(raw); over || err != nil {
			end()
			return err
		}
		select {
		case <-ctx.Done():
			return stopped()
		case <-time.After(w.interval):
		}
	}
}
