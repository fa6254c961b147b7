package linux

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/linux/netcni"
	"github.com/kiln-build/kiln/sandbox"
)

// newBridgeLauncher is newLauncher with bridge networking in a subnet of
// the test's own.
func newBridgeLauncher(t *testing.T) (*Containerd, *netcni.CNI) {
	t.Helper()
	n := testsupport.Network(t)
	c, _ := newLauncherWith(t, ContainerdConfig{ShareShimDir: t.TempDir(), ShimGroups: 1, Network: n})
	return c, n
}

const addrCmd = `ip -4 addr show dev eth0 | sed -n 's/.*inet \([0-9.]*\)\/.*/\1/p'`

// TestContainerdBridge: a bridge sandbox, in each tier, sees only its own
// interfaces, has a default route and DNS, reaches a server outside the
// host through NAT, and reaches neither the host (loopback or any of its
// addresses) nor another sandbox.
func TestContainerdBridge(t *testing.T) {
	c, n := newBridgeLauncher(t)
	egress := testsupport.StartEgressTarget(t)
	linkLocal := testsupport.StartLinkLocalTarget(t)
	loopPort := testsupport.HostListener(t, "127.0.0.1:0")
	anyPort := testsupport.HostListener(t, "0.0.0.0:0")
	host := testsupport.HostAddr(t)
	subnet := netip.MustParsePrefix(strings.TrimSpace(n.Subnet()))

	for _, tier := range tiers(t) {
		t.Run(tier, func(t *testing.T) {
			if tier == api.IsolationGVisor {
				testsupport.NeedCommand(t, "runsc")
			}
			t.Run("view from inside", func(t *testing.T) {
				eIP, ePort, _ := net.SplitHostPort(egress.Addr)
				lIP, lPort, _ := net.SplitHostPort(linkLocal.Addr)
				spec, console := shSpec(t, fmt.Sprintf(`exec 2>&1
echo "ifaces: $(ls /sys/class/net | tr '\n' ' ')"
echo "links: $(sed -n 's/^ *\([^ :]*\):.*/\1/p' /proc/net/dev | sort | tr '\n' ' ')"
echo "addr: $(%s)"
gw=$(ip -4 route | sed -n 's/^default via \([0-9.]*\).*/\1/p')
echo "default: $gw"
echo "ipv6-off: $(cat /proc/sys/net/ipv6/conf/all/disable_ipv6)"
echo "inet6: $(ip -6 addr | tr '\n' ' ')"
mkdir -p /tmp/www && echo own-loopback >/tmp/www/index.html
httpd -p 127.0.0.1:7001 -h /tmp/www
echo "own-loopback: $(printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 127.0.0.1 7001 2>&1 | tail -n 1)"
echo "resolv:"; cat /etc/resolv.conf; echo "end-resolv"
echo "loopback: $(nc -w 2 127.0.0.1 %d </dev/null 2>&1)"
echo "gateway: $(nc -w 2 $gw %d </dev/null 2>&1)"
echo "host-addr: $(nc -w 2 %s %d </dev/null 2>&1)"
echo "egress: $(nc -w 10 %s %s </dev/null 2>&1)"
echo "link-local: $(nc -w 2 %s %s </dev/null 2>&1)"
`, addrCmd, loopPort, anyPort, host, anyPort, eIP, ePort, lIP, lPort))
				spec.Network = sandbox.NetworkBridge
				spec.Isolation = tier
				if exit := run(t, c, spec); exit.Code != 0 {
					t.Fatalf("exit %+v:\n%s", exit, console.String())
				}
				out := console.String()
				if got := testsupport.Field(out, "links"); got != "eth0 lo" {
					t.Errorf("interfaces %q in /proc/net/dev, want only eth0 and lo (no host interface):\n%s", got, out)
				}
				// gVisor's sysfs is its own and lists eth0 only.
				if got := testsupport.Field(out, "ifaces"); got != "eth0 lo" && (tier != api.IsolationGVisor || got != "eth0") {
					t.Errorf("interfaces %q in /sys/class/net, want only eth0 and lo (no host interface):\n%s", got, out)
				}
				if got := testsupport.Field(out, "own-loopback"); got != "own-loopback" {
					t.Errorf("the sandbox cannot reach a listener on its own 127.0.0.1: %q\n%s", got, out)
				}
				addr, err := netip.ParseAddr(testsupport.Field(out, "addr"))
				if err != nil || !subnet.Contains(addr) {
					t.Errorf("eth0 address %q not in %s:\n%s", testsupport.Field(out, "addr"), subnet, out)
				}
				if gw := testsupport.Field(out, "default"); gw != subnet.Addr().Next().String() {
					t.Errorf("default route via %q, want %s:\n%s", gw, subnet.Addr().Next(), out)
				}
				// gVisor has no IPv6 sysctls; it has no IPv6 address
				// either, as the veth it took over had none.
				if testsupport.Field(out, "ipv6-off") != "1" && tier != api.IsolationGVisor {
					t.Errorf("IPv6 is not off in the sandbox:\n%s", out)
				}
				if got := testsupport.Field(out, "inet6"); got != "" {
					t.Errorf("the sandbox has IPv6 addresses: %q\n%s", got, out)
				}
				resolv := out[strings.Index(out, "resolv:\n"):strings.Index(out, "end-resolv")]
				if !strings.Contains(resolv, "nameserver ") || strings.Contains(resolv, "nameserver 127.") {
					t.Errorf("resolv.conf names no reachable server:\n%s", resolv)
				}
				for _, probe := range []string{"loopback", "gateway", "host-addr"} {
					if strings.Contains(testsupport.Field(out, probe), testsupport.HostGreeting) {
						t.Errorf("the host is reachable from a bridge sandbox (%s):\n%s", probe, out)
					}
				}
				if !strings.Contains(testsupport.Field(out, "egress"), egress.Greeting) {
					t.Errorf("egress to %s failed:\n%s", egress.Addr, out)
				}
				if strings.Contains(testsupport.Field(out, "link-local"), linkLocal.Greeting) {
					t.Errorf("a bridge sandbox reached the link-local %s:\n%s", linkLocal.Addr, out)
				}
			})

			t.Run("another sandbox is unreachable", func(t *testing.T) {
				a, aConsole := shSpec(t, fmt.Sprintf(`exec 2>&1
mkdir -p /www && echo from-sandbox-a > /www/index.html
echo "addr: $(%s)"
exec httpd -f -p 7000 -h /www`, addrCmd))
				a.Network = sandbox.NetworkBridge
				a.Isolation = tier
				start(t, c, a)
				waitFor(t, aConsole, "addr: ")
				aAddr := net.JoinHostPort(testsupport.Field(aConsole.String(), "addr"), "7000")
				// The host may open connections to a sandbox: that shows the
				// listener is up before the other sandbox tries it.
				deadline := time.Now().Add(testTimeout)
				for {
					body, err := httpGet("http://" + aAddr + "/")
					if err == nil && strings.Contains(body, "from-sandbox-a") {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("sandbox A's listener never answered the host: %v\n%s", err, aConsole.String())
					}
					time.Sleep(50 * time.Millisecond)
				}
				eIP, ePort, _ := net.SplitHostPort(egress.Addr)
				b, bConsole := shSpec(t, fmt.Sprintf(`exec 2>&1
echo "peer: $(printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 %s 7000 2>&1 | tr '\r\n' '  ')"
echo "egress: $(nc -w 10 %s %s </dev/null 2>&1)"
`, testsupport.Field(aConsole.String(), "addr"), eIP, ePort))
				b.Network = sandbox.NetworkBridge
				b.Isolation = tier
				if exit := run(t, c, b); exit.Code != 0 {
					t.Fatalf("exit %+v:\n%s", exit, bConsole.String())
				}
				out := bConsole.String()
				if strings.Contains(testsupport.Field(out, "peer"), "from-sandbox-a") {
					t.Errorf("sandbox B reached sandbox A's listener at %s:\n%s", aAddr, out)
				}
				if !strings.Contains(testsupport.Field(out, "egress"), egress.Greeting) {
					t.Errorf("sandbox B has no egress (the probe above proves nothing):\n%s", out)
				}
			})

			t.Run("teardown on delete", func(t *testing.T) {
				spec, console := shSpec(t, "echo up; sleep 1000")
				spec.Network = sandbox.NetworkBridge
				spec.Isolation = tier
				ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
				defer cancel()
				sb, err := c.Start(ctx, spec)
				if err != nil {
					t.Fatal(err)
				}
				waitFor(t, console, "up")
				att := attachment(t, n, spec.RunID)
				if err := sb.Delete(ctx); err != nil {
					t.Fatal(err)
				}
				assertNetworkGone(t, n, spec.RunID, att)
			})
		})
	}

	t.Run("reap removes a network whose container never came", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		id := runID(t)
		att, err := n.Setup(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Reap(ctx, func(run string) bool { return run != id }); err != nil {
			t.Fatal(err)
		}
		assertNetworkGone(t, n, id, att)
	})
}

func TestContainerdBridgeUnavailable(t *testing.T) {
	c, _ := newLauncher(t)
	spec, _ := shSpec(t, "true")
	spec.Network = sandbox.NetworkBridge
	if _, err := c.Start(context.Background(), spec); err == nil || !strings.Contains(err.Error(), "bridge") {
		t.Fatalf("a launcher without networking started a bridge sandbox: %v", err)
	}
}

func httpGet(url string) (string, error) {
	cl := http.Client{Timeout: 2 * time.Second}
	resp, err := cl.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func attachment(t *testing.T, n *netcni.CNI, run string) netcni.Attachment {
	t.Helper()
	a, err := n.Setup(context.Background(), run) // idempotent: the recorded one
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// assertNetworkGone checks that run's veth, host route, lease and state
// are gone.
func assertNetworkGone(t *testing.T, n *netcni.CNI, run string, att netcni.Attachment) {
	t.Helper()
	if _, err := os.Stat(filepath.Join("/sys/class/net", att.HostVeth)); !os.IsNotExist(err) {
		t.Errorf("veth %s still on the host: %v", att.HostVeth, err)
	}
	leases, _ := filepath.Glob(filepath.Join(n.StateDir(), "ipam", "*", att.Addr.String()))
	if len(leases) != 0 {
		t.Errorf("lease of %s left: %v", att.Addr, leases)
	}
	if _, err := os.Stat(filepath.Join(n.StateDir(), "runs", run)); !os.IsNotExist(err) {
		t.Errorf("network state of %s left: %v", run, err)
	}
	// The plugins' NAT rule and chain name the run in their comment.
	out, err := exec.Command("iptables", "-t", "nat", "-S").CombinedOutput()
	if err != nil {
		t.Fatalf("iptables: %v: %s", err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, `id: \"kiln-`+run+`\"`) {
			t.Errorf("NAT rule of %s left: %s", run, l)
		}
	}
}
