package scheduler

import (
	"errors"
	"testing"
)

// TestRefuseDial: the sender's Dialer.Control refuses link-local and
// metadata addresses (whatever name resolved to them) and lets loopback
// and private receivers through.
func TestRefuseDial(t *testing.T) {
	for _, tc := range []struct {
		addr    string
		refused bool
	}{
		{"169.254.169.254:80", true},
		{"169.254.0.1:443", true},
		{"[fe80::1]:80", true},
		{"[fe80::1%eth0]:80", true},
		{"[::ffff:169.254.169.254]:80", true},
		{"[fd00:ec2::254]:80", true},
		{"0.0.0.0:80", true},
		{"[::]:80", true},
		{"224.0.0.1:80", true},
		{"not an address", true},
		{"127.0.0.1:8080", false},
		{"[::1]:8080", false},
		{"10.1.2.3:443", false},
		{"192.168.1.1:80", false},
		{"93.184.216.34:443", false},
	} {
		err := refuseDial("tcp", tc.addr, nil)
		if (err != nil) != tc.refused || (err != nil && !errors.Is(err, errRefusedAddr)) {
			t.Errorf("%s: %v, want refused %v", tc.addr, err, tc.refused)
		}
	}
}
