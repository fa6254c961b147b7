//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kiln-build/kiln/config"
	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/linux/treestore"
)

// vmHost is a kiln host for VM runs, with no containerd at all: its
// [containerd] address points nowhere, so every run here proves that
// `kiln exec` of a vm job needs none.
func vmHost(t *testing.T) *testsupport.Host {
	testsupport.NeedVM(t)
	kiln := testsupport.BuildKiln(t)
	h := testsupport.NewHost(t, kiln, "/nonexistent/containerd.sock", "[vm]\naccel = \"tcg\"\n")
	h.MustKiln(t, "image", "create", "-n", "busybox", "-m", "busybox", "-q")
	return h
}

// assertVMClean: no guest process, no guest directory, no clone, no run.
func assertVMClean(t *testing.T, h *testsupport.Host) {
	t.Helper()
	if pids := testsupport.Guests(t, h.Dir); len(pids) > 0 {
		t.Errorf("guests still running: %v", pids)
	}
	entries, _ := os.ReadDir(filepath.Join(h.Dir, "vm"))
	for _, e := range entries {
		if e.IsDir() {
			t.Errorf("guest directory left: %s", e.Name())
		}
	}
	ov, err := treestore.NewOverlay(filepath.Join(h.Dir, "storage"))
	if err != nil {
		t.Fatal(err)
	}
	if cl, _ := ov.List(context.Background()); len(cl) > 0 {
		t.Errorf("clones left: %v", cl)
	}
	if runs, _ := os.ReadDir(filepath.Join(h.Dir, "runs")); len(runs) > 0 {
		t.Errorf("run directories left: %d", len(runs))
	}
}

// TestExecVM boots three guests under TCG: one runs a job to its end, one
// times out, one loses its `kiln exec` to SIGKILL and is reaped.
func TestExecVM(t *testing.T) {
	h := vmHost(t)
	job := func(t *testing.T, body string) string {
		return testsupport.WriteFile(t, "job.toml", "name = \"t\"\nimage = \"busybox\"\nisolation = \"vm\"\n"+body)
	}

	t.Run("exit code, own kernel, inputs, artifacts, no NIC", func(t *testing.T) {
		in := testsupport.WriteFile(t, "src.txt", "input-data\n")
		out := filepath.Join(t.TempDir(), "out")
		stdout, errOut, code := h.Kiln(t, "exec", job(t, `script = """
uname -r
cat /in/src.txt
touch /in/new 2>/dev/null && echo in-writable
ls /sys/class/net | tr '\n' ' '; echo
mkdir -p /out/sub && echo deep > /out/sub/deep.txt && ln -s /etc/passwd /out/passwd
exit 42
"""`), "--input", in, "-o", out)
		if code != 42 {
			t.Fatalf("exit %d, want 42\n%s%s", code, stdout, errOut)
		}
		lines := strings.Split(stdout, "\n")
		host, _ := os.ReadFile("/proc/sys/kernel/osrelease")
		if lines[0] == "" || lines[0] == strings.TrimSpace(string(host)) {
			t.Errorf("guest kernel %q, host kernel %q: want a kernel of its own", lines[0], host)
		}
		if !strings.Contains(stdout, "input-data") || strings.Contains(stdout, "in-writable") {
			t.Errorf("/in not there or writable:\n%s", stdout)
		}
		if !strings.Contains(stdout, "\nlo \n") {
			t.Errorf("want loopback as the only interface:\n%s", stdout)
		}
		if b, _ := os.ReadFile(filepath.Join(out, "sub", "deep.txt")); string(b) != "deep\n" {
			t.Errorf("artifact sub/deep.txt = %q", b)
		}
		if _, err := os.Lstat(filepath.Join(out, "passwd")); err == nil {
			t.Error("hostile link collected")
		}
		assertVMClean(t, h)
	})

	t.Run("timeout: SIGTERM through ACPI, then the guest is gone", func(t *testing.T) {
		stdout, errOut, code := h.Kiln(t, "exec", job(t, `timeout = "30s"
script = """
trap 'echo got-term; exit 5' TERM
echo up
while :; do sleep 1; done
"""`))
		if code != 124 || !strings.Contains(errOut, "timed out") {
			t.Fatalf("exit %d, stderr %q: want 124 and 'timed out'", code, errOut)
		}
		// A boot slower than the timeout never starts the job; only a job
		// that started must have been told.
		if strings.Contains(stdout, "up") && !strings.Contains(stdout, "got-term") {
			t.Errorf("the job did not get SIGTERM: %q", stdout)
		}
		assertVMClean(t, h)
	})

	t.Run("guest of a SIGKILLed exec is reaped", func(t *testing.T) {
		cmd := execUntilGuestUp(t, h, job(t, "script = \"echo guest-up; sleep 600\"\n"))
		pids := testsupport.Guests(t, h.Dir)
		if len(pids) != 1 {
			t.Fatalf("guests running: %v, want 1", pids)
		}
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		if err := syscall.Kill(pids[0], 0); err != nil {
			t.Fatalf("guest died with kiln exec (%v): nothing left for the reaper to prove", err)
		}
		nextExecReaps(t, h)
	})
}

// TestExecVMBridge boots a guest with network = "bridge": its NIC is the
// run's veth (the container tier's network), with an address of the
// host's subnet, a default route, IPv4 only and a read-only resolv.conf;
// it reaches a listener outside the host but neither the host's loopback
// nor any of the host's addresses, not even from a forged source, and
// sees no host interface. Nothing of
// the network is left. With KILN_LONG_TESTS=1 a second guest loses its
// `kiln exec` to SIGKILL and the next exec reaps guest and network.
func TestExecVMBridge(t *testing.T) {
	testsupport.NeedCNI(t)
	h := vmHost(t)
	cfg, err := config.LoadHost(h.ConfigPath, true)
	if err != nil {
		t.Fatal(err)
	}
	subnet := netip.MustParsePrefix(cfg.Network.Subnet)
	egress := testsupport.StartEgressTarget(t)
	// What a cloud's metadata service is to a guest: [network] deny's
	// default (169.254.0.0/16) keeps a bridge guest from it, as it keeps a
	// container (the same CNI path).
	linkLocal := testsupport.StartLinkLocalTarget(t)
	loopPort := testsupport.HostListener(t, "127.0.0.1:0")
	anyPort := testsupport.HostListener(t, "0.0.0.0:0")
	icmpFrom := testsupport.ICMPWatch(t)
	const forged = "192.0.2.77" // TEST-NET-1: no host's, no sandbox's
	hostIP := testsupport.HostAddr(t)
	job := func(t *testing.T, script string) string {
		return testsupport.WriteFile(t, "job.toml", "name = \"t\"\nimage = \"busybox\"\nisolation = \"vm\"\n"+
			"script = '''\n"+script+"'''\n[resources]\nnetwork = \"bridge\"\n")
	}
	// assertNetworkClean: no run's network state, no address lease.
	assertNetworkClean := func(t *testing.T) {
		t.Helper()
		if runs, _ := os.ReadDir(filepath.Join(h.Dir, "network", "runs")); len(runs) > 0 {
			t.Errorf("network state left: %v", runs)
		}
		files, _ := filepath.Glob(filepath.Join(h.Dir, "network", "ipam", "*", "*"))
		for _, f := range files {
			if a, err := netip.ParseAddr(filepath.Base(f)); err == nil && subnet.Contains(a) {
				t.Errorf("address lease left: %s", f)
			}
		}
	}

	t.Run("view from inside, egress, no host", func(t *testing.T) {
		eIP, ePort, _ := net.SplitHostPort(egress.Addr)
		lIP, lPort, _ := net.SplitHostPort(linkLocal.Addr)
		stdout, errOut, code := h.Kiln(t, "exec", job(t, fmt.Sprintf(`exec 2>&1
echo "ifaces: $(ls /sys/class/net | tr '\n' ' ')"
echo "addr: $(ip -4 addr show dev eth0 | sed -n 's/.*inet \([0-9.]*\)\/.*/\1/p')"
gw=$(ip -4 route | sed -n 's/^default via \([0-9.]*\).*/\1/p')
echo "default: $gw"
echo "ipv6-off: $(cat /proc/sys/net/ipv6/conf/all/disable_ipv6)"
echo "resolv:"; cat /etc/resolv.conf; echo "end-resolv"
echo "resolv-writable: $(echo x 2>/dev/null >>/etc/resolv.conf && echo yes || echo no)"
echo "loopback: $(nc -w 2 127.0.0.1 %d </dev/null 2>&1)"
echo "gateway-loopback-port: $(nc -w 2 $gw %d </dev/null 2>&1)"
echo "gateway: $(nc -w 2 $gw %d </dev/null 2>&1)"
echo "host-addr: $(nc -w 2 %s %d </dev/null 2>&1)"
echo "egress: $(nc -w 10 %s %s </dev/null 2>&1)"
echo "link-local: $(nc -w 2 %s %s </dev/null 2>&1)"
# Root in its own kernel, the guest can forge its source: pings to the
# host from an address outside the subnet must not arrive.
ip addr add %s/32 dev eth0
ping -c 2 -W 1 -I %s $gw >/dev/null
ping -c 2 -W 1 -I %s %s >/dev/null
echo "forged-sent: yes"
`, loopPort, loopPort, anyPort, hostIP, anyPort, eIP, ePort, lIP, lPort, forged, forged, forged, hostIP)))
		if code != 0 {
			t.Fatalf("exit %d\n%s%s", code, stdout, errOut)
		}
		if got := testsupport.Field(stdout, "ifaces"); got != "eth0 lo" {
			t.Errorf("interfaces %q, want only eth0 and lo (no host interface):\n%s", got, stdout)
		}
		addr, err := netip.ParseAddr(testsupport.Field(stdout, "addr"))
		if err != nil || !subnet.Contains(addr) {
			t.Errorf("eth0 address %q not in %s:\n%s", testsupport.Field(stdout, "addr"), subnet, stdout)
		}
		if gw := testsupport.Field(stdout, "default"); gw != subnet.Addr().Next().String() {
			t.Errorf("default route via %q, want %s:\n%s", gw, subnet.Addr().Next(), stdout)
		}
		if testsupport.Field(stdout, "ipv6-off") != "1" {
			t.Errorf("IPv6 is not off in the guest:\n%s", stdout)
		}
		resolv := stdout[strings.Index(stdout, "resolv:\n"):strings.Index(stdout, "end-resolv")]
		if !strings.Contains(resolv, "nameserver ") || strings.Contains(resolv, "nameserver 127.") {
			t.Errorf("resolv.conf names no reachable server:\n%s", resolv)
		}
		if testsupport.Field(stdout, "resolv-writable") != "no" {
			t.Errorf("the guest could write its resolv.conf:\n%s", stdout)
		}
		for _, probe := range []string{"loopback", "gateway-loopback-port", "gateway", "host-addr"} {
			if strings.Contains(testsupport.Field(stdout, probe), testsupport.HostGreeting) {
				t.Errorf("the host is reachable from a bridge guest (%s):\n%s", probe, stdout)
			}
		}
		if !strings.Contains(testsupport.Field(stdout, "egress"), egress.Greeting) {
			t.Errorf("egress to %s failed (the probes above prove nothing):\n%s", egress.Addr, stdout)
		}
		if strings.Contains(testsupport.Field(stdout, "link-local"), linkLocal.Greeting) {
			t.Errorf("a bridge guest reached the link-local %s ([network] deny):\n%s", linkLocal.Addr, stdout)
		}
		if testsupport.Field(stdout, "forged-sent") != "yes" {
			t.Errorf("the guest did not send from a forged source:\n%s", stdout)
		} else if icmpFrom(forged) {
			t.Errorf("a packet with a forged source (%s) from the guest reached the host", forged)
		}
		assertVMClean(t, h)
		assertNetworkClean(t)
	})

	t.Run("guest of a SIGKILLed exec is reaped with its network", func(t *testing.T) {
		if os.Getenv("KILN_LONG_TESTS") != "1" {
			t.Skip("long test: set KILN_LONG_TESTS=1")
		}
		cmd := execUntilGuestUp(t, h, job(t, "echo guest-up; sleep 600\n"))
		if runs, _ := os.ReadDir(filepath.Join(h.Dir, "network", "runs")); len(runs) != 1 {
			t.Fatalf("networks of runs: %v, want 1", runs)
		}
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		if pids := testsupport.Guests(t, h.Dir); len(pids) != 1 {
			t.Fatalf("guests after kiln exec died: %v, want 1: nothing left for the reaper to prove", pids)
		}
		nextExecReaps(t, h)
		assertNetworkClean(t)
	})
}

// execUntilGuestUp starts `kiln exec` of jobPath and returns once its guest
// printed "guest-up"; the exec is killed at the end of the test.
func execUntilGuestUp(t *testing.T, h *testsupport.Host, jobPath string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(h.Bin, "exec", jobPath, "--config", h.ConfigPath)
	cmd.Dir = h.Dir
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	sc := bufio.NewScanner(stdout)
	up := false
	for !up && sc.Scan() {
		up = sc.Text() == "guest-up"
	}
	if !up {
		t.Fatalf("the guest never said it was up: %v", sc.Err())
	}
	return cmd
}

// nextExecReaps runs the next `kiln exec` on h, which reaps what a killed
// one left before it runs (its container job then fails: this host has no
// containerd), and checks that no guest is left.
func nextExecReaps(t *testing.T, h *testsupport.Host) {
	t.Helper()
	_, errOut, code := h.Kiln(t, "exec", testsupport.WriteFile(t, "c.toml", "name = \"c\"\nimage = \"busybox\"\nscript = \"true\"\n"))
	if code == 0 || !strings.Contains(errOut, "containerd") {
		t.Fatalf("container job on a host without containerd: exit %d, %q", code, errOut)
	}
	assertVMClean(t, h)
}
