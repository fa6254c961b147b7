package testsupport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/kiln-build/kiln/linux/netcni"
)

// NeedCNI requires what bridge networking uses: root, the CNI plugins of
// Debian's containernetworking-plugins and iptables.
func NeedCNI(t testing.TB) {
	t.Helper()
	NeedRoot(t)
	for _, p := range []string{"ptp", "host-local", "firewall", "loopback"} {
		Need(t, fileExists(filepath.Join(netcni.DefaultPluginDir, p)), "CNI plugin "+p+" in "+netcni.DefaultPluginDir+" (apt-get install containernetworking-plugins)")
	}
	NeedCommand(t, "iptables")
	NeedCommand(t, "ip")
}

// Network makes bridge networking for a test: its own state dir and
// subnet, then whatever opts change. Every run it still has at the end is
// torn down, and so is its pool.
func Network(t testing.TB, opts ...func(*netcni.Config)) *netcni.CNI {
	t.Helper()
	NeedCNI(t)
	state, err := os.MkdirTemp("", "kiln-net-")
	if err != nil {
		t.Fatal(err)
	}
	cfg := netcni.Config{StateDir: state, Subnet: Subnet(t)}
	for _, o := range opts {
		o(&cfg)
	}
	n, err := netcni.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := n.Close(ctx); err != nil {
			t.Errorf("network pool cleanup: %v", err)
		}
		runs, _ := n.List(ctx)
		for _, r := range runs {
			if err := n.Teardown(ctx, r); err != nil {
				t.Errorf("network cleanup of %s: %v", r, err)
			}
		}
		unmountBelow(state)
		os.RemoveAll(state)
	})
	return n
}

// EgressTarget is a TCP listener outside the host, as a sandbox's egress
// sees one: in a network namespace of its own (ip netns add) joined to the
// host by a veth pair, with a route from the host, in 198.18.0.0/15 (the
// range for benchmarking networks, so nothing real is ever addressed).
// Each connection is greeted with Greeting.
type EgressTarget struct {
	Addr     string // ip:port
	Greeting string
	NetNS    string // path of its network namespace, for more listeners
}

// StartEgressTarget makes the namespace and listener; cleanup removes
// both.
func StartEgressTarget(t testing.TB) *EgressTarget {
	t.Helper()
	NeedCommand(t, "ip")
	i := slot(t, "egress")
	return startTarget(t, fmt.Sprintf("kiln-egress-%d", i), fmt.Sprintf("kegh%d", i), fmt.Sprintf("kegn%d", i),
		fmt.Sprintf("198.18.%d.1", i), fmt.Sprintf("198.18.%d.2", i))
}

// StartLinkLocalTarget is StartEgressTarget at a link-local address
// (169.254.77.2 and up, never the metadata service's 169.254.169.254): what
// the instance metadata service is to a sandbox on a cloud host.
func StartLinkLocalTarget(t testing.TB) *EgressTarget {
	t.Helper()
	NeedCommand(t, "ip")
	i := slot(t, "linklocal")
	// /30s in 169.254.77.0-169.254.80.255, one a slot.
	third, fourth := 77+i/64, 4*(i%64)
	host, nsAddr := fmt.Sprintf("169.254.%d.%d", third, fourth+1), fmt.Sprintf("169.254.%d.%d", third, fourth+2)
	return startTarget(t, fmt.Sprintf("kiln-linklocal-%d", i), fmt.Sprintf("kllh%d", i), fmt.Sprintf("klln%d", i), host, nsAddr)
}

// startTarget makes the namespace name, joined to the host by the veth
// pair hostIf-nsIf with the /30 addresses hostIP and nsIP, and a listener
// on nsIP in it.
func startTarget(t testing.TB, name, hostIf, nsIf, hostIP, nsIP string) *EgressTarget {
	t.Helper()
	ipCmd := func(args ...string) error {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	// What a killed test run left in this slot goes first. The veth is
	// deleted on its own: a deleted namespace takes its end of the pair
	// down only some time later, when the kernel frees the namespace.
	_ = ipCmd("link", "del", hostIf)
	_ = ipCmd("netns", "del", name)
	if err := ipCmd("netns", "add", name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = ipCmd("link", "del", hostIf)
		_ = ipCmd("netns", "del", name)
	})
	for _, args := range [][]string{
		{"link", "add", hostIf, "type", "veth", "peer", "name", nsIf, "netns", name},
		{"addr", "add", hostIP + "/30", "dev", hostIf},
		{"link", "set", hostIf, "up"},
		{"-n", name, "addr", "add", nsIP + "/30", "dev", nsIf},
		{"-n", name, "link", "set", nsIf, "up"},
		{"-n", name, "link", "set", "lo", "up"},
		{"-n", name, "route", "add", "default", "via", hostIP},
	} {
		if err := ipCmd(args...); err != nil {
			t.Fatal(err)
		}
	}
	var ln net.Listener
	err := ns.WithNetNSPath("/run/netns/"+name, func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", nsIP+":0")
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", name, err)
	}
	t.Cleanup(func() { ln.Close() })
	e := &EgressTarget{Addr: ln.Addr().String(), Greeting: "hello-from-egress-target", NetNS: "/run/netns/" + name}
	go func() {
		for {
			c, err := ln.Accept()
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				continue
			}
			fmt.Fprintln(c, e.Greeting)
			c.Close()
		}
	}()
	return e
}

// ICMPWatch records the source of every ICMP packet the host takes in (a
// raw socket sees them after the firewall's INPUT rules), for tests that a
// sandbox cannot reach the host with a forged source address. seen says
// whether a packet from src has come; cleanup closes the socket.
func ICMPWatch(t testing.TB) (seen func(src string) bool) {
	t.Helper()
	NeedRoot(t)
	c, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var mu sync.Mutex
	from := map[string]bool{}
	go func() {
		buf := make([]byte, 1<<16)
		for {
			_, addr, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			mu.Lock()
			from[addr.String()] = true
			mu.Unlock()
		}
	}()
	return func(src string) bool {
		mu.Lock()
		defer mu.Unlock()
		return from[src]
	}
}
