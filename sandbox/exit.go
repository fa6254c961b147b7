package sandbox

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// ExitOfCode is the Exit of a main process whose status is code. A shell
// reports a command that signal n killed as 128+n, and so do runc and a
// launcher's own wrappers (a guest's init, jexec's sh): such a code is
// reported as killed by signal n, named. A process that itself exits
// with such a code cannot be told apart and is reported as signalled too.
func ExitOfCode(code int) Exit {
	e := Exit{Code: code}
	if code > 128 && code < 128+65 {
		n := syscall.Signal(code - 128)
		if e.Signal = unix.SignalName(n); e.Signal == "" {
			e.Signal = fmt.Sprintf("SIG%d", int(n))
		}
	}
	return e
}
