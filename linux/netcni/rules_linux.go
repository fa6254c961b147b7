package netcni

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"

	"github.com/coreos/go-iptables/iptables"
)

// ensureRules puts kiln's isolation rules in place (idempotent; rules of
// an earlier subnet stay, harmless):
//
//   - KILN-ADMIN, which the firewall plugin jumps to from its CNI-FORWARD
//     chain before it accepts a sandbox's traffic: replies into the subnet
//     pass, every other packet into it is dropped, so nothing (another
//     sandbox, the LAN) can open a connection into a sandbox;
//   - in KILN-ADMIN too, for this subnet: what a sandbox sends to a
//     denied network (LinkLocal, Config.Deny) is dropped, except DNS to a
//     nameserver the sandbox is told about (a cloud's resolver may sit at
//     a link-local address, as on GCE); see ensureDeny;
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
	return c.ensureDeny(ipt, servers)
}

// Comments that mark KILN-ADMIN's rules for denied networks, by which
// ensureDeny finds those a changed config no longer wants.
const (
	denyComment    = "kiln: denied destination"
	denyDNSComment = "kiln: DNS to a nameserver in a denied network"
)

// denyRule is one rule of a subnet's denied networks in KILN-ADMIN.
type denyRule struct {
	dst   string // CIDR, as iptables -S prints it
	proto string // "udp" or "tcp" for a DNS exception, else ""
}

func (r denyRule) spec(subnet string) []string {
	if r.proto == "" {
		return []string{"-s", subnet, "-d", r.dst, "-m", "comment", "--comment", denyComment, "-j", "DROP"}
	}
	return []string{"-s", subnet, "-d", r.dst, "-p", r.proto, "-m", r.proto, "--dport", "53", "-m", "comment", "--comment", denyDNSComment, "-j", "RETURN"}
}

// listedDeny matches a rule of denyRule's making as iptables -S lists it.
var listedDeny = regexp.MustCompile(`^-A ` + adminChain + ` -s (\S+) -d (\S+) (?:-p (udp|tcp) -m (?:udp|tcp) --dport 53 )?-m comment --comment "?(` + denyComment + `|` + denyDNSComment + `)"? -j (?:DROP|RETURN)$`)

// ensureDeny makes KILN-ADMIN drop what the subnet sends to a denied
// network, and removes this subnet's rules for networks no longer denied
// (the config changed), so that the chain says what the config says. The
// DNS exceptions are inserted at the chain's head and the drops appended,
// so that the exceptions come first without a moment in which a denied
// network is open.
func (c *CNI) ensureDeny(ipt *iptables.IPTables, servers []netip.Addr) error {
	subnet := c.subnet.String()
	want := map[denyRule]bool{}
	for _, s := range servers {
		if !slices.ContainsFunc(c.deny, func(p netip.Prefix) bool { return p.Contains(s) }) {
			continue
		}
		for _, proto := range []string{"udp", "tcp"} {
			r := denyRule{dst: netip.PrefixFrom(s, 32).String(), proto: proto}
			want[r] = true
			if err := insertFirst(ipt, adminChain, r.spec(subnet)...); err != nil {
				return err
			}
		}
	}
	for _, p := range c.deny {
		r := denyRule{dst: p.String()}
		want[r] = true
		if err := ipt.AppendUnique("filter", adminChain, r.spec(subnet)...); err != nil {
			return err
		}
	}
	listed, err := ipt.List("filter", adminChain)
	if err != nil {
		return err
	}
	for _, l := range listed {
		m := listedDeny.FindStringSubmatch(l)
		if m == nil || m[1] != subnet {
			continue
		}
		r := denyRule{dst: m[2], proto: m[3]}
		if (r.proto != "") != (m[4] == denyDNSComment) || want[r] {
			continue
		}
		if err := ipt.DeleteIfExists("filter", adminChain, r.spec(subnet)...); err != nil {
			return fmt.Errorf("remove a rule for a network no longer denied (%s): %w", r.dst, err)
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
