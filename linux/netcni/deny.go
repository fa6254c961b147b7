package netcni

import "net/netip"

// LinkLocal is always denied to bridge sandboxes: on a cloud host it holds
// the instance metadata service, which hands the host's credentials to
// whoever asks. IPv6 (fe80::/10 among it) is off inside every sandbox.
var LinkLocal = netip.MustParsePrefix("169.254.0.0/16")
