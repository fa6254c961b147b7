package idmap

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"sync"

	"golang.org/x/sys/unix"
)

// Namespaces keeps, per host range of RangeSize ids, the user namespace
// (Userns) its idmapped mounts are made through: making one takes a
// process, and a range's namespace is the same for every run that holds
// the range, so in steady state (a slot takes the same range run after
// run) a run makes none. A namespace lives as long as its open file, with
// no process, mount or file on disk of its own, so nothing outlives the
// holder: Close (or the process's exit) frees them all. There is one per
// range used, at most as many as runs were ever at once on the host. The
// zero value is ready; safe for concurrent use.
type Namespaces struct {
	mu sync.Mutex
	ns map[uint32]*os.File
}

// Get returns the user namespace of the range at base, as a file of the
// caller's own to close (a duplicate of the kept one, so that Close never
// pulls a descriptor from under a caller still using it).
func (n *Namespaces) Get(base uint32) (*os.File, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	f := n.ns[base]
	if f == nil {
		var err error
		if f, err = Userns(base, RangeSize); err != nil {
			return nil, err
		}
		if n.ns == nil {
			n.ns = map[uint32]*os.File{}
		}
		n.ns[base] = f
	}
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("user namespace of range %d: %w", base, err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// Kept returns the bases of the ranges whose namespaces are kept.
func (n *Namespaces) Kept() []uint32 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Collect(maps.Keys(n.ns))
}

// Close closes every kept namespace; a later Get makes them again.
func (n *Namespaces) Close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for base, f := range n.ns {
		f.Close()
		delete(n.ns, base)
	}
}
