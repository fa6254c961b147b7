package netcni

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/kiln-build/kiln/errdefs"
)

// Network is a host's bridge networking as launchers drive it (CNI on
// Linux). It keeps its state on disk by run ID, so a process that did not
// set a run's network up (a restarted worker, the reaper) can tear it
// down. Safe for concurrent use; Setup and Teardown of one run are
// serialised.
type Network interface {
	// Setup makes runID's pinned network namespace with its veth,
	// address, routes, NAT and firewall rules, and its resolv.conf.
	// Idempotent: a run that is set up gets the same Attachment again, a
	// half-made one is torn down and made anew. ctx bounds the setup;
	// when it ends mid-way, what was made is torn down before Setup
	// returns.
	Setup(ctx context.Context, runID string) (Attachment, error)
	// Teardown removes everything Setup made for runID, and with its
	// namespace whatever else lives in it (a guest's tap). Idempotent: a
	// run with nothing set up is success. ctx bounds it; what a failed
	// or cancelled Teardown leaves stays listed for a later one.
	Teardown(ctx context.Context, runID string) error
	// List returns the runs that have network state on this host.
	List(ctx context.Context) ([]string, error)
}

// Provider gives a launcher's runs their "bridge" networks: the container
// and the VM tier both go through it, and it is the one place that says
// why a host has none. The zero Provider has none. Safe for concurrent use.
type Provider struct {
	net Network
	why error
}

// NewProvider provides n's networks. With n nil it provides none, and
// refuses bridge runs saying why (nil: no reason known).
func NewProvider(n Network, why error) Provider {
	return Provider{net: n, why: why}
}

// Available is nil when runs can have a bridge network here, else why
// not, wrapping errdefs.ErrUnsupported.
func (p Provider) Available() error {
	if p.net != nil {
		return nil
	}
	why := p.why
	if why == nil {
		why = errors.New("this host has no bridge networking")
	}
	return fmt.Errorf("network \"bridge\": %w: %w", why, errdefs.ErrUnsupported)
}

// Attach sets up runID's network (see Network.Setup); Close of the result
// takes it down. Without networking it fails as Available says.
func (p Provider) Attach(ctx context.Context, runID string) (*Attached, error) {
	if err := p.Available(); err != nil {
		return nil, err
	}
	a, err := p.net.Setup(ctx, runID)
	if err != nil {
		return nil, err
	}
	return &Attached{Attachment: a, net: p.net, run: runID}, nil
}

// Adopt returns a handle on runID's network as another process set it up
// (a sandbox reattached after a restart), for its Close to take down with
// the sandbox; its Attachment is empty. nil without networking.
func (p Provider) Adopt(runID string) *Attached {
	if p.net == nil {
		return nil
	}
	return &Attached{net: p.net, run: runID}
}

// Teardown takes down runID's network for the reaper, which holds no
// Attached of it. Without networking there is none: success.
func (p Provider) Teardown(ctx context.Context, runID string) error {
	if p.net == nil {
		return nil
	}
	return p.net.Teardown(ctx, runID)
}

// List returns the runs with network state on this host; none without
// networking.
func (p Provider) List(ctx context.Context) ([]string, error) {
	if p.net == nil {
		return nil, nil
	}
	return p.net.List(ctx)
}

// Attached is a run's network, set up: Close takes it down. Safe for
// concurrent use.
type Attached struct {
	Attachment
	net Network
	run string

	mu     sync.Mutex
	closed bool
}

// Close tears the run's network down (see Network.Teardown). Idempotent:
// once it has succeeded, later calls do nothing; after a failure the next
// call tries again. A nil Attached (a run without a network) is closed.
func (a *Attached) Close(ctx context.Context) error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	if err := a.net.Teardown(ctx, a.run); err != nil {
		return err
	}
	a.closed = true
	return nil
}
