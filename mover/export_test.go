package mover

import "context"

// SetAfterPhase sets the hook that runs after each phase a move records (an
// error stops the job there, as a crash would), for the tests of package
// mover_test.
func SetAfterPhase(cfg *Config, fn func(ctx context.Context, moveID int64, phase string) error) {
	cfg.afterPhase = fn
}
