package vm

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// A guest takes over its run's network the way Kata Containers and
// firecracker-containerd do: in the run's network namespace (made by
// netcni as for a container, with the sandbox's end of the veth in it) a
// tap device is made, tc redirects every frame arriving on the veth to the
// tap and every frame from the tap out of the veth, and qemu, started
// inside that namespace, backs the guest's virtio-net NIC with the tap.
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
		for _, p := range [][2]netlink.Link{{veth, tap}, {tap, veth}} {
			if err := redirect(p[0], p[1]); err != nil {
				return fmt.Errorf("vm: network: redirect %s to %s: %w", p[0].Attrs().Name, p[1].Attrs().Name, err)
			}
		}
		return start(tap.Fds[0], nic)
	})
}

// redirect sends every frame that arrives on from out of to (an ingress
// qdisc with a match-all u32 filter and a mirred egress redirect).
func redirect(from, to netlink.Link) error {
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
	filter := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: from.Attrs().Index,
			Parent:    ingress.Handle,
			Priority:  1,
			Protocol:  unix.ETH_P_ALL,
		},
		Actions: []netlink.Action{netlink.NewMirredAction(to.Attrs().Index)},
	}
	if err := netlink.FilterAdd(filter); err != nil {
		return fmt.Errorf("mirred filter: %w", err)
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
