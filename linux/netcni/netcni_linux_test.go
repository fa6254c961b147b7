package netcni_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/linux/netcni"
)

// leases are the host-local IPAM lease files of the network's state dir.
func leases(t *testing.T, stateDir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(filepath.Join(stateDir, "ipam"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasPrefix(d.Name(), "last_reserved_ip") && d.Name() != "lock" {
			out = append(out, d.Name())
		}
		return nil
	})
	return out
}

func hostRoute(t *testing.T, addr string) string {
	t.Helper()
	out, err := exec.Command("ip", "-4", "route", "show", addr+"/32").CombinedOutput()
	if err != nil {
		t.Fatalf("ip route: %v: %s", err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestSetupTeardown(t *testing.T) {
	n := testsupport.Network(t)
	state := n.StateDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	a, err := n.Setup(ctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	if !a.Addr.IsValid() || a.HostVeth == "" || a.NetNS == "" {
		t.Fatalf("attachment incomplete: %+v", a)
	}
	if subnet := netip.MustParsePrefix(n.Subnet()); !subnet.Contains(a.Addr) {
		t.Errorf("attachment address %s not in %s (lo's?)", a.Addr, subnet)
	}
	// lo is up, with 127.0.0.1 (the loopback plugin), so a job can use its
	// own loopback.
	out, err := exec.Command("nsenter", "--net="+a.NetNS, "ip", "-4", "-o", "addr", "show", "dev", "lo").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "127.0.0.1/8") {
		t.Errorf("lo in the namespace: %v: %s", err, out)
	}
	if _, err := os.Stat(filepath.Join("/sys/class/net", a.HostVeth)); err != nil {
		t.Errorf("host veth %s: %v", a.HostVeth, err)
	}
	if got := leases(t, state); !slices.Equal(got, []string{a.Addr.String()}) {
		t.Errorf("leases %v, want [%s]", got, a.Addr)
	}
	if r := hostRoute(t, a.Addr.String()); !strings.Contains(r, a.HostVeth) {
		t.Errorf("host route to %s: %q, want via %s", a.Addr, r, a.HostVeth)
	}
	resolv, err := os.ReadFile(a.ResolvConf)
	if err != nil || !strings.Contains(string(resolv), "nameserver ") {
		t.Errorf("resolv.conf: %v\n%s", err, resolv)
	}

	t.Run("setup again is the same", func(t *testing.T) {
		b, err := n.Setup(ctx, "r1")
		if err != nil || b != a {
			t.Fatalf("second Setup: %+v %v, want %+v", b, err, a)
		}
		if got := leases(t, state); len(got) != 1 {
			t.Errorf("leases after a second Setup: %v", got)
		}
	})
	if runs, err := n.List(ctx); err != nil || !slices.Equal(runs, []string{"r1"}) {
		t.Fatalf("List: %v %v", runs, err)
	}

	if err := n.Teardown(ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join("/sys/class/net", a.HostVeth)); !os.IsNotExist(err) {
		t.Errorf("host veth %s still there: %v", a.HostVeth, err)
	}
	if got := leases(t, state); len(got) != 0 {
		t.Errorf("leases left: %v", got)
	}
	if r := hostRoute(t, a.Addr.String()); r != "" {
		t.Errorf("host route left: %q", r)
	}
	if _, err := os.Stat(a.NetNS); !os.IsNotExist(err) {
		t.Errorf("namespace file left: %v", err)
	}
	if err := n.Teardown(ctx, "r1"); err != nil {
		t.Errorf("second Teardown: %v", err)
	}
	if runs, err := n.List(ctx); err != nil || len(runs) != 0 {
		t.Errorf("List after teardown: %v %v", runs, err)
	}
}

// A setup that a crash cut short (no attachment recorded) is cleared and
// made anew, leaving one lease.
func TestSetupAfterHalfSetup(t *testing.T) {
	n := testsupport.Network(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := n.Setup(ctx, "r2")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(n.StateDir(), "runs", "r2", "attachment.json")); err != nil {
		t.Fatal(err)
	}
	b, err := n.Setup(ctx, "r2")
	if err != nil {
		t.Fatal(err)
	}
	if b.HostVeth == a.HostVeth || b.NetNS == a.NetNS {
		t.Errorf("the half-made network was reused: %+v", b)
	}
	if _, err := os.Stat(filepath.Join("/sys/class/net", a.HostVeth)); !os.IsNotExist(err) {
		t.Errorf("the first veth %s is still there", a.HostVeth)
	}
	if got := leases(t, n.StateDir()); len(got) != 1 {
		t.Errorf("leases: %v, want one", got)
	}
}

func TestBadRunID(t *testing.T) {
	n, err := netcni.New(netcni.Config{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"", "..", "a/b", "../x", ".hidden"} {
		if _, err := n.Setup(context.Background(), id); err == nil {
			t.Errorf("Setup(%q) accepted", id)
		}
		if err := n.Teardown(context.Background(), id); err == nil {
			t.Errorf("Teardown(%q) accepted", id)
		}
	}
}

// With a pool, a run takes a network made ahead (never one another run
// had), the pool fills up again, and Close removes what is left in it.
func TestPool(t *testing.T) {
	n := testsupport.Network(t, func(c *netcni.Config) { c.Pool = 2 })
	state := n.StateDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	first, err := n.Setup(ctx, "r1") // made on the spot; starts the filling
	if err != nil {
		t.Fatal(err)
	}
	if err := n.WaitPool(ctx); err != nil {
		t.Fatal(err)
	}
	if got := leases(t, state); len(got) != 3 {
		t.Fatalf("leases %v, want r1's and two pooled", got)
	}
	a, err := n.Setup(ctx, "r2")
	if err != nil {
		t.Fatal(err)
	}
	id, err := os.ReadFile(filepath.Join(state, "runs", "r2", "cni-id"))
	if err != nil || !strings.HasPrefix(string(id), "kiln-p") {
		t.Fatalf("r2 was not given a pooled network: cni-id %q %v", id, err)
	}
	if !strings.HasPrefix(a.NetNS, filepath.Join(state, "runs", "r2")+"/") || a == first {
		t.Fatalf("attachment %+v", a)
	}
	if _, err := os.Stat(filepath.Join("/sys/class/net", a.HostVeth)); err != nil {
		t.Fatalf("taken network's veth: %v", err)
	}
	// The moved namespace is still the one the veth's other end is in.
	out, err := exec.Command("nsenter", "--net="+a.NetNS, "ip", "-4", "-o", "addr", "show", "dev", "eth0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), a.Addr.String()+"/") {
		t.Fatalf("eth0 in the taken namespace: %v: %s", err, out)
	}
	if again, err := n.Setup(ctx, "r2"); err != nil || again != a {
		t.Fatalf("Setup of a run with a pooled network again: %+v %v", again, err)
	}
	if err := n.WaitPool(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n.Teardown(ctx, "r2"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join("/sys/class/net", a.HostVeth)); !os.IsNotExist(err) {
		t.Errorf("veth %s left after teardown", a.HostVeth)
	}
	if err := n.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got := leases(t, state); !slices.Equal(got, []string{first.Addr.String()}) {
		t.Errorf("leases after Close %v, want only r1's %s", got, first.Addr)
	}
	if left, _ := os.ReadDir(filepath.Join(state, "pool")); len(left) != 0 {
		t.Errorf("pool left after Close: %v", left)
	}
}

// greeting dials addr from the network namespace at nsPath and returns
// the first line the listener sends, or the dial's error. A dropped
// connection fails when bound runs out: short where the destination must
// be out of reach, generous where it must answer.
func greeting(t *testing.T, nsPath, addr string, bound time.Duration) string {
	t.Helper()
	var out string
	err := ns.WithNetNSPath(nsPath, func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp", addr, bound)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Minute))
		line, err := bufio.NewReader(c).ReadString('\n')
		out = strings.TrimSpace(line)
		return err
	})
	if err != nil {
		return err.Error()
	}
	return out
}

// A sandbox reaches no link-local address (the metadata service's range)
// and no network of [network] deny, while other destinations stay
// reachable; a network taken out of deny is reachable again.
func TestDeny(t *testing.T) {
	linkLocal := testsupport.StartLinkLocalTarget(t)
	denied := testsupport.StartEgressTarget(t)
	allowed := testsupport.StartEgressTarget(t)
	deniedIP, _, _ := net.SplitHostPort(denied.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	n := testsupport.Network(t, func(c *netcni.Config) { c.Deny = []string{deniedIP + "/32"} })
	a, err := n.Setup(ctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	if got := greeting(t, a.NetNS, allowed.Addr, time.Minute); got != allowed.Greeting {
		t.Fatalf("an allowed destination %s is unreachable (the probes below prove nothing): %q", allowed.Addr, got)
	}
	if got := greeting(t, a.NetNS, linkLocal.Addr, 3*time.Second); got == linkLocal.Greeting {
		t.Errorf("a sandbox reached the link-local %s", linkLocal.Addr)
	}
	if got := greeting(t, a.NetNS, denied.Addr, 3*time.Second); got == denied.Greeting {
		t.Errorf("a sandbox reached %s, which [network] deny names", denied.Addr)
	}
	if err := n.Teardown(ctx, "r1"); err != nil {
		t.Fatal(err)
	}

	t.Run("a network no longer denied", func(t *testing.T) {
		again := testsupport.Network(t, func(c *netcni.Config) { c.Subnet = n.Subnet() })
		b, err := again.Setup(ctx, "r2")
		if err != nil {
			t.Fatal(err)
		}
		if got := greeting(t, b.NetNS, denied.Addr, time.Minute); got != denied.Greeting {
			t.Errorf("%s is still unreachable after it left [network] deny: %q", denied.Addr, got)
		}
		if got := greeting(t, b.NetNS, linkLocal.Addr, 3*time.Second); got == linkLocal.Greeting {
			t.Errorf("a sandbox reached the link-local %s", linkLocal.Addr)
		}
	})
}

// A nameserver in a denied network (a cloud's resolver at a link-local
// address) stays reachable on port 53, and on no other port.
func TestDenyNameserver(t *testing.T) {
	target := testsupport.StartLinkLocalTarget(t)
	ip, _, _ := net.SplitHostPort(target.Addr)
	var dns net.Listener
	if err := ns.WithNetNSPath(target.NetNS, func(ns.NetNS) error {
		var err error
		dns, err = net.Listen("tcp", net.JoinHostPort(ip, "53"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer dns.Close()
	go func() {
		for {
			c, err := dns.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, "hello-from-dns")
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := testsupport.Network(t, func(c *netcni.Config) { c.DNS = []string{ip} })
	a, err := n.Setup(ctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	if got := greeting(t, a.NetNS, dns.Addr().String(), time.Minute); got != "hello-from-dns" {
		t.Errorf("the sandbox's nameserver %s is unreachable on port 53: %q", ip, got)
	}
	if got := greeting(t, a.NetNS, target.Addr, 3*time.Second); got == target.Greeting {
		t.Errorf("a sandbox reached its link-local nameserver on a port other than 53 (%s)", target.Addr)
	}
}

func TestDenyRefused(t *testing.T) {
	for _, s := range []string{"", "169.254.0.0", "10.0.0.1/24", "fd00:ec2::254/128", "fe80::/10", "300.0.0.0/8"} {
		if _, err := netcni.New(netcni.Config{StateDir: t.TempDir(), Deny: []string{s}}); err == nil || !strings.Contains(err.Error(), "network deny") {
			t.Errorf("deny %q: %v, want refused", s, err)
		}
	}
	if _, err := netcni.New(netcni.Config{StateDir: t.TempDir(), Deny: []string{"192.168.10.0/24", "10.1.2.3/32"}}); err != nil {
		t.Errorf("good deny refused: %v", err)
	}
}
