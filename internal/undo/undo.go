// Package undo is the reverse-order undo of a set-up of several steps,
// shared by the sandbox launchers: a failed start takes back what it made,
// newest first, even when its ctx is what failed.
package undo

import (
	"context"
	"time"
)

// timeout bounds each undo of a failed set-up.
const timeout = 30 * time.Second

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
// context of its own, bounded by timeout, that ctx's end does not cancel:
// ctx may be what failed, and a half-made sandbox must still go. ctx's
// values (containerd's namespace) carry over.
func (u *Stack) Run(ctx context.Context) {
	for i := len(u.undos) - 1; i >= 0; i-- {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
		u.undos[i](cctx)
		cancel()
	}
	u.undos = nil
}
