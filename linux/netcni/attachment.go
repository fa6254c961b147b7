package netcni

import "net/netip"

// Attachment is a run's network as the launcher needs it. It is portable
// (the rest of the package is Linux's) so that launchers' option types,
// which every OS compiles, can name it.
type Attachment struct {
	NetNS      string     `json:"netns"`       // path of the pinned network namespace
	ResolvConf string     `json:"resolv_conf"` // host file to mount at /etc/resolv.conf
	Addr       netip.Addr `json:"addr"`        // the sandbox's IPv4 address
	HostVeth   string     `json:"host_veth"`   // the host's end of its veth
}
