package linux

import (
	"context"
	"time"
)

// undoTimeout bounds each undo of a failed set-up.
const undoTimeout = 30 * time.Second

// undoStack is what a set-up of several steps has made so far, as the
// funcs that take it back: each step that made something pushes its undo;
// on failure run takes everything back, newest first; on success disarm
// keeps it all. Not safe for concurrent use.
type undoStack struct {
	undos []func(ctx context.Context)
}

// push adds the undo of what was just made.
func (u *undoStack) push(undo func(ctx context.Context)) {
	u.undos = append(u.undos, undo)
}

// disarm keeps what was made: a later run does nothing.
func (u *undoStack) disarm() { u.undos = nil }

// run calls every undo pushed, newest first, then disarms. Each gets a
// context of its own, bounded by undoTimeout, that ctx's end does not
// cancel: ctx may be what failed, and a half-made sandbox must still go.
// ctx's values (containerd's namespace) carry over.
func (u *undoStack) run(ctx context.Context) {
	for i := len(u.undos) - 1; i >= 0; i-- {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
		u.undos[i](cctx)
		cancel()
	}
	u.undos = nil
}
