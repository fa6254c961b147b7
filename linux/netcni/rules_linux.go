package netcni

import (
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/coreos/go-iptables/iptables"
)

// ensureRules puts kiln's isolation rules in place (idempotent; rules of
// an earlier subnet stay, harmless):
//
//   - KILN-ADMIN, which the firewall plugin jumps to from its CNI-FORWARD
//     chain before it accepts a sandbox's traffic: replies into the subnet
//     pass, every other packet into it is dropped, so nothing (another
//     sandbox, the LAN) can open a connection into a sandbox;
//   - KILN-INPUT, jumped to first from INPUT: what the subnet sends to the
//     host's own addresses is dropped, except replies to connections the
//     host opened and DNS to a nameserver that is one of the host's
//     addresses.
//
// The plugins have no rule of this kind; the CNI-specific rules (accepts,
// NAT) remain the plugins' own.
func (c *CNI) ensureRules() error {
	ipt, err := iptables.NewWithProtocol(iptables.ProtocolIPv4)
	if err != nil {
		return err
	}
	subnet := c.subnet.String()
	for _, ch := range []string{adminChain, inputChain} {
		ok, err := ipt.ChainExists("filter", ch)
		if err != nil {
			return err
		}
		if !ok {
			if err := ipt.NewChain("filter", ch); err != nil {
				if ok, _ := ipt.ChainExists("filter", ch); !ok {
					return err
				}
			}
		}
	}
	if err := insertFirst(ipt, "INPUT", "-j", inputChain); err != nil {
		return err
	}
	// Appended in this order, so the RETURN for replies comes first.
	for _, rule := range [][]string{
		{"-d", subnet, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"},
		{"-d", subnet, "-m", "comment", "--comment", "kiln: no new connection into a sandbox", "-j", "DROP"},
	} {
		if err := ipt.AppendUnique("filter", adminChain, rule...); err != nil {
			return err
		}
	}
	if err := ipt.AppendUnique("filter", inputChain, "-s", subnet, "-m", "comment", "--comment", "kiln: sandboxes do not reach the host", "-j", "DROP"); err != nil {
		return err
	}
	// Replies to connections the host opened to a sandbox pass.
	if err := insertFirst(ipt, inputChain, "-s", subnet, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"); err != nil {
		return err
	}
	_, servers, err := sandboxResolvConf(c.dns, os.ReadFile)
	if err != nil {
		return err
	}
	for _, s := range localAddrs(servers) {
		for _, proto := range []string{"udp", "tcp"} {
			// Before the DROP, wherever that is.
			if err := insertFirst(ipt, inputChain, "-s", subnet, "-d", s.String(), "-p", proto, "--dport", "53", "-j", "RETURN"); err != nil {
				return err
			}
		}
	}
	return nil
}

func insertFirst(ipt *iptables.IPTables, chain string, rule ...string) error {
	ok, err := ipt.Exists("filter", chain, rule...)
	if err != nil || ok {
		return err
	}
	if err := ipt.Insert("filter", chain, 1, rule...); err != nil {
		return fmt.Errorf("insert into %s: %w", chain, err)
	}
	return nil
}

// localAddrs returns those of addrs that are the host's own.
func localAddrs(addrs []netip.Addr) []netip.Addr {
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		for _, ia := range ifaddrs {
			if n, ok := ia.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == a {
					out = append(out, a)
				}
			}
		}
	}
	return out
}
