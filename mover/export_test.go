package mover

import (
	"context"
	"time"
)

// SetAfterPhase sets the hook that runs after each phase a move records,
// and at StepCopied (an error stops the job there, as a crash would), for
// the tests of package mover_test.
func SetAfterPhase(cfg *Config, fn func(ctx context.Context, moveID int64, phase string) error) {
	cfg.afterPhase = fn
}

// StepCopied is the hook's point in an online move's copying phase where the
// copy is done and the stream's slot and publication exist.
const StepCopied = stepCopied

// StepKeepApplied is the hook's point where a keep has committed a
// transaction on the kept source and not yet confirmed it to its slot.
const StepKeepApplied = stepKeepApplied

// FenceVerifies is how many of s's fences verified every row (full) and how
// many only the rows written during an online move (changed).
func FenceVerifies(s *Service) (full, changed int64) {
	return s.verifies.full.Load(), s.verifies.changed.Load()
}

// LastFenceVerify is how long s's last fence verification took.
func LastFenceVerify(s *Service) time.Duration { return time.Duration(s.verifies.last.Load()) }

// SetEvacRetryDelay sets the pause before an evacuation's next try at a
// tenant (times the tries so far).
func SetEvacRetryDelay(cfg *Config, d time.Duration) { cfg.evacRetryDelay = d }
