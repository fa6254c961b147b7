package vm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/linux/netcni"
)

// A guest takes over its run's network the way Kata Containers and
// firecracker-containerd do: in the run's network namespace (made by
// netcni as for a container, with the sandbox's end of the veth in it) a
// tap device is made, tc redirects every frame arriving on the veth to the
// tap and the guest's frames from the tap out of the veth (those with the
// run's source address only, see redirect), and qemu, started inside that
// namespace, backs the guest's virtio-net NIC with the tap.
// The guest's NIC has the veth's MAC address, address and routes, so the
// host's end of the veth, its /32 route and kiln's firewall rules, which
// all name the sandbox's address, see the guest as they would a container.
// The namespace's own stack never sees a frame: ingress redirection comes
// before it.

const (
	// vethName is the sandbox's end of the veth (netcni's interface
	// prefix "eth" and the first interface).
	vethName = "eth0"
	// tapName is the guest's tap in the run's namespace.
	tapName = "kiln-tap0"
)

// inNetNS makes the guest's tap and the redirection in the network
// namespace nsPath, reads what the guest needs, and calls start there
// with the tap's queue: start's child process (qemu) is in the namespace
// and holds the tap, which was made non-persistent, so the tap goes when
// qemu exits. On error no tap is left (the redirection goes with it).
func inNetNS(nsPath string, start func(tap *os.File, nic guestNIC) error) error {
	return ns.WithNetNSPath(nsPath, func(ns.NetNS) error {
		veth, err := netlink.LinkByName(vethName)
		if err != nil {
			return fmt.Errorf("vm: network: %s in the run's namespace: %w", vethName, err)
		}
		nic := guestNIC{mac: veth.Attrs().HardwareAddr, mtu: veth.Attrs().MTU}
		addrs, err := netlink.AddrList(veth, netlink.FAMILY_V4)
		if err != nil || len(addrs) != 1 {
			return fmt.Errorf("vm: network: want one IPv4 address on %s, have %v (%v)", vethName, addrs, err)
		}
		a, ok := netip.AddrFromSlice(addrs[0].IP)
		if !ok {
			return fmt.Errorf("vm: network: address %v of %s", addrs[0].IP, vethName)
		}
		nic.addr = a.Unmap()
		if nic.routes, err = vethRoutes(veth); err != nil {
			return err
		}

		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: tapName},
			Mode:      netlink.TUNTAP_MODE_TAP,
			// The virtio-net header lets qemu pass offloads (checksum,
			// GSO) between the guest and the host's stack.
			Flags:      netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
			Queues:     1,
			NonPersist: true,
		}
		if err := netlink.LinkAdd(tap); err != nil {
			return fmt.Errorf("vm: network: make tap: %w", err)
		}
		defer func() {
			for _, f := range tap.Fds {
				f.Close()
			}
		}()
		if err := netlink.LinkSetMTU(tap, nic.mtu); err != nil {
			return fmt.Errorf("vm: network: tap mtu: %w", err)
		}
		if err := netlink.LinkSetUp(tap); err != nil {
			return fmt.Errorf("vm: network: tap up: %w", err)
		}
		if err := redirect(veth, tap, nil); err != nil {
			return fmt.Errorf("vm: network: redirect %s to the tap: %w", vethName, err)
		}
		if err := redirect(tap, veth, &nic.addr); err != nil {
			return fmt.Errorf("vm: network: redirect the tap to %s: %w", vethName, err)
		}
		return start(tap.Fds[0], nic)
	})
}

// redirect sends the frames that arrive on from out of to: an ingress
// qdisc with u32 filters whose action is a mirred egress redirect. With
// src nil every frame goes. With src set (frames from the guest) only IPv4
// packets from src and ARP that names src as its sender go: the guest is
// root in its own kernel and can forge any source, where a container
// cannot (no CAP_NET_RAW), and kiln's firewall rules on the host match
// the sandbox's source address, so a forged one would pass KILN-INPUT to
// the host's own addresses. Every other frame is sent back out of from,
// to the guest that sent it: tc's drop action (act_gact) is missing from
// some kernels (this machine's has mirred only), and up the namespace's
// own stack a forged packet could still draw an answer out of the veth.
func redirect(from, to netlink.Link, src *netip.Addr) error {
	ingress := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: from.Attrs().Index,
		Handle:    netlink.MakeHandle(0xffff, 0),
		Parent:    netlink.HANDLE_INGRESS,
	}}
	// A fresh qdisc: one left by an earlier start of the run (its guest
	// gone, its network kept) would still redirect to that guest's tap.
	if err := netlink.QdiscDel(ingress); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove old ingress qdisc: %w", err)
	}
	if err := netlink.QdiscAdd(ingress); err != nil {
		return fmt.Errorf("ingress qdisc: %w", err)
	}
	filter := func(prio uint16, proto uint16, keys []netlink.TcU32Key, action netlink.Action) *netlink.U32 {
		f := &netlink.U32{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: from.Attrs().Index, Parent: ingress.Handle, Priority: prio, Protocol: proto},
			Actions:     []netlink.Action{action},
		}
		if keys != nil {
			f.Sel = &netlink.TcU32Sel{Flags: netlink.TC_U32_TERMINAL, Keys: keys}
		}
		return f
	}
	mirred := netlink.NewMirredAction(to.Attrs().Index)
	var filters []*netlink.U32
	if src == nil {
		filters = []*netlink.U32{filter(1, unix.ETH_P_ALL, nil, mirred)}
	} else {
		a := binary.BigEndian.Uint32(src.AsSlice())
		filters = []*netlink.U32{
			// The IPv4 header's source address, at offset 12.
			filter(1, unix.ETH_P_IP, []netlink.TcU32Key{{Mask: 0xffffffff, Val: a, Off: 12}}, mirred),
			// ARP's sender address is at offset 14; u32 keys are
			// aligned words, so it is matched in two halves.
			filter(2, unix.ETH_P_ARP, []netlink.TcU32Key{
				{Mask: 0x0000ffff, Val: a >> 16, Off: 12},
				{Mask: 0xffff0000, Val: a << 16, Off: 16},
			}, mirred),
			filter(3, unix.ETH_P_ALL, nil, netlink.NewMirredAction(from.Attrs().Index)),
		}
	}
	for _, f := range filters {
		if err := netlink.FilterAdd(f); err != nil {
			return fmt.Errorf("filter: %w", err)
		}
	}
	return nil
}

// vethRoutes are the IPv4 routes the plugins gave the veth (the kernel's
// own prefix routes left out: the guest's address is a /32), those on the
// link first so that the gateway is reachable when the others are added.
func vethRoutes(veth netlink.Link) ([]guestRoute, error) {
	rs, err := netlink.RouteList(veth, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("vm: network: routes of %s: %w", vethName, err)
	}
	var out []guestRoute
	for _, r := range rs {
		if r.Protocol == unix.RTPROT_KERNEL {
			continue
		}
		g := guestRoute{dst: "default"}
		if r.Dst != nil {
			p, ok := netip.AddrFromSlice(r.Dst.IP)
			ones, _ := r.Dst.Mask.Size()
			if !ok {
				continue
			}
			if pfx := netip.PrefixFrom(p.Unmap(), ones); pfx.Bits() > 0 {
				g.dst = pfx.String()
			}
		}
		if r.Gw != nil {
			gw, ok := netip.AddrFromSlice(r.Gw)
			if !ok {
				continue
			}
			g.via = gw.Unmap()
		}
		out = append(out, g)
	}
	slices.SortStableFunc(out, func(a, b guestRoute) int {
		switch {
		case !a.via.IsValid() && b.via.IsValid():
			return -1
		case a.via.IsValid() && !b.via.IsValid():
			return 1
		}
		return 0
	})
	if !slices.ContainsFunc(out, func(r guestRoute) bool { return r.dst == "default" }) {
		return nil, errors.New("vm: network: the run's namespace has no default route")
	}
	return out, nil
}

// net is the guests' bridge networking, the container tier's provider:
// Options.Network, or why there is none.
func (l *Launcher) net() netcni.Provider {
	return netcni.NewProvider(l.opts.Network, l.opts.NetworkUnavailable)
}
