package mover

import "context"

// SetAfterPhase sets the hook that runs after each phase a move records,
// and at StepCopied (an error stops the job there, as a crash would), for
// the tests of package mover_test.
func SetAfterPhase(cfg *Config, fn func(ctx context.Context, moveID int64, phase string) error) {
	cfg.afterPhase = fn
}

// StepCopied is the hook's point in an online move's copying phase where the
// copy is done and the stream's slot and publication exist.
const StepCopied = stepCopied
