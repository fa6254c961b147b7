package config

import (
	"fmt"
	"net/netip"
)

// ParseDeny parses one [network] deny entry: an IPv4 network in CIDR
// notation, its host bits zero. It lives here, not in the network
// provider, so that the config, which every OS and the server read,
// refuses what the firewall would without linking host code.
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
