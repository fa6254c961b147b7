// Package cleanup is how kiln's teardown gets a context of its own: work
// that takes back what a run made must finish even when the run's ctx is
// what ended (a cancel, a timeout, a failed start), but not hang forever.
// It also holds Stack, the reverse-order undo of a set-up of several steps
// shared by the sandbox launchers. Modelled on containerd's
// internal/cleanup.
package cleanup

import (
	"context"
	"time"
)

// Bounds of teardown work, by size.
const (
	// Step bounds one teardown step: a signal, a container's or task's
	// delete, a network's teardown, one undo of a failed set-up.
	Step = 30 * time.Second
	// Kill bounds ending every process of a sandbox and deleting it.
	Kill = time.Minute
	// Teardown bounds a run's whole teardown: sandbox, network and clone.
	Teardown = 2 * time.Minute
)

// Context returns a context for teardown after ctx: it keeps ctx's values
// (containerd's namespace) but not its cancellation, and ends after d.
func Context(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), d)
}

// Stack is what a set-up of several steps has made so far, as the funcs
// that take it back: each step that made something pushes its undo; on
// failure Run takes everything back, newest first; on success Disarm keeps
// it all. Not safe for concurrent use.
type Stack struct {
	undos []func(ctx context.Context)
}

// Push adds the undo of what was just made.
func (u *Stack) Push(undo func(ctx context.Context)) {
	u.undos = append(u.undos, undo)
}

// Disarm keeps what was made: a later Run does nothing.
func (u *Stack) Disarm() { u.undos = nil }

// Run calls every undo pushed, newest first, then disarms. Each gets a
// context of its own (Context, bounded by Step): ctx may be what failed,
// and a half-made sandbox must still go.
func (u *Stack) Run(ctx context.Context) {
	for i := len(u.undos) - 1; i >= 0; i-- {
		cctx, cancel := Context(ctx, Step)
		u.undos[i](cctx)
		cancel()
	}
	u.undos = nil
}
