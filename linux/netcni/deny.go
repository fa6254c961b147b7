package netcni

import (
	"fmt"
	"net/netip"
)

// LinkLocal is always denied to bridge sandboxes: on a cloud host it holds
// the instance metadata service, which hands the host's credentials to
// whoever asks. IPv6 (fe80::/10 among it) is off inside every sandbox.
var LinkLocal = netip.MustParsePrefix("169.254.0.0/16")

// ParseDeny parses one [network] deny entry: an IPv4 network in CIDR
// notation, its host bits zero. It is portable so that the config, which
// every OS reads, refuses what the firewall would.
func ParseDeny(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	switch {
	case err != nil:
		return netip.Prefix{}, fmt.Errorf("network deny %q: want an IPv4 network in CIDR notation, e.g. 192.168.10.0/24", s)
	case !p.Addr().Is4():
		return netip.Prefix{}, fmt.Errorf("network deny %q: bridge sandboxes have IPv4 only (IPv6 is off inside them); want an IPv4 network", s)
	case p != p.Masked():
		return netip.Prefix{}, fmt.Errorf("network deny %q: host bits set; did you mean %s?", s, p.Masked())
	}
	return p, nil
}
