package netcni

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/containerd/pkg/netns"
	gocni "github.com/containerd/go-cni"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils"

	"github.com/kiln-build/kiln/config"
	"github.com/kiln-build/kiln/internal/cleanup"
	"github.com/kiln-build/kiln/internal/durable"
	"github.com/kiln-build/kiln/names"
)

// Defaults for Config's empty fields.
const (
	DefaultPluginDir = "/usr/lib/cni"
	DefaultSubnet    = "10.121.0.0/16"
)

// plugins are the CNI plugins a bridge sandbox needs, by file name.
var plugins = []string{"ptp", "host-local", "firewall", "loopback"}

// Chains kiln keeps in the filter table (see the package comment).
const (
	adminChain = "KILN-ADMIN"
	inputChain = "KILN-INPUT"
)

// Config says where a host's bridge networking keeps its state and what it
// hands out. Empty fields take the Default* values.
type Config struct {
	// StateDir holds each run's network namespace and resolv.conf
	// (runs/<run>/) and the IPAM leases (ipam/); <data_dir>/network.
	StateDir  string
	PluginDir string
	// Subnet is the IPv4 range sandboxes get addresses from.
	Subnet string
	// DNS are the nameservers written into sandboxes' resolv.conf; empty:
	// the host's own (see sandboxResolvConf).
	DNS []string
	// Deny are IPv4 networks (CIDR) sandboxes may not reach, besides
	// LinkLocal, which is always denied.
	Deny []string
	// Pool is how many networks to keep made ahead, so that a run takes
	// one instead of waiting for the plugins (0: none). Filling starts
	// with the first Setup; a taken network is never given back, so no
	// two runs ever share one. The worker keeps one per slot.
	Pool int
	Log  *slog.Logger
}

// CNI is bridge networking through the CNI plugins (see the package
// comment). Safe for concurrent use; several processes may share one
// StateDir as long as no two of them handle the same run.
type CNI struct {
	cfg    Config
	name   string // CNI network name, one per StateDir
	subnet netip.Prefix
	dns    []netip.Addr
	deny   []netip.Prefix // LinkLocal first, then Config.Deny
	cni    gocni.CNI

	hostMu    sync.Mutex
	hostReady bool

	runMu sync.Mutex
	runs  map[string]*runLock // per-run locks, while in use

	pool pool
}

// New checks cfg and prepares the CNI configuration. It changes nothing
// on the host: the host is prepared on the first Setup.
func New(cfg Config) (*CNI, error) {
	if cfg.StateDir == "" || !filepath.IsAbs(cfg.StateDir) {
		return nil, fmt.Errorf("network state dir %q must be an absolute path", cfg.StateDir)
	}
	if cfg.PluginDir == "" {
		cfg.PluginDir = DefaultPluginDir
	}
	if cfg.Subnet == "" {
		cfg.Subnet = DefaultSubnet
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	cfg.Log = cfg.Log.With("component", "network")
	subnet, err := netip.ParsePrefix(cfg.Subnet)
	if err != nil || !subnet.Addr().Is4() || subnet.Bits() > 28 || subnet != subnet.Masked() {
		return nil, fmt.Errorf("network subnet %q: want an IPv4 network of at least 16 addresses, e.g. %s", cfg.Subnet, DefaultSubnet)
	}
	var dns []netip.Addr
	for _, s := range cfg.DNS {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() || a.IsLoopback() {
			return nil, fmt.Errorf("network dns %q: want an IPv4 address a sandbox can reach (not loopback)", s)
		}
		dns = append(dns, a)
	}
	deny := []netip.Prefix{LinkLocal}
	for _, s := range cfg.Deny {
		p, err := config.ParseDeny(s)
		if err != nil {
			return nil, err
		}
		deny = append(deny, p)
	}
	sum := sha256.Sum256([]byte(filepath.Clean(cfg.StateDir)))
	c := &CNI{
		cfg:    cfg,
		name:   "kiln-" + hex.EncodeToString(sum[:4]),
		subnet: subnet,
		dns:    dns,
		deny:   deny,
		runs:   map[string]*runLock{},
	}
	conf, err := c.confList()
	if err != nil {
		return nil, err
	}
	// The loopback plugin after the network, which so stays eth0: a
	// namespace the plugins make has lo down, so without it a job could
	// not use 127.0.0.1, and gVisor, which copies only the interfaces that
	// are up, would give it no loopback at all.
	c.cni, err = gocni.New(gocni.WithPluginDir([]string{cfg.PluginDir}), gocni.WithInterfacePrefix("eth"), gocni.WithConfListBytes(conf), gocni.WithLoNetwork)
	if err != nil {
		return nil, fmt.Errorf("cni configuration: %w", err)
	}
	return c, nil
}

// confList is the CNI network: ptp with host-local IPAM and NAT, then the
// firewall plugin, whose admin chain holds kiln's isolation rules.
func (c *CNI) confList() ([]byte, error) {
	ptp := map[string]any{
		"type":   "ptp",
		"ipMasq": true,
		"ipam": map[string]any{
			"type":    "host-local",
			"ranges":  [][]map[string]string{{{"subnet": c.subnet.String()}}},
			"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
			"dataDir": filepath.Join(c.cfg.StateDir, "ipam"),
		},
	}
	if mtu := uplinkMTU(); mtu > 0 {
		// A veth defaults to 1500; a smaller uplink would leave the
		// sandbox relying on path MTU discovery.
		ptp["mtu"] = mtu
	}
	return json.Marshal(map[string]any{
		"cniVersion": "1.0.0",
		"name":       c.name,
		"plugins": []any{ptp, map[string]any{
			"type":                   "firewall",
			"backend":                "iptables",
			"iptablesAdminChainName": adminChain,
		}},
	})
}

// Subnet is the IPv4 range sandbox addresses come from.
func (c *CNI) Subnet() string { return c.subnet.String() }

// StateDir is where the networks' state lives.
func (c *CNI) StateDir() string { return c.cfg.StateDir }

// Available reports why bridge networking cannot work on this host (a
// plugin or iptables missing), or nil.
func (c *CNI) Available() error {
	var missing []string
	for _, p := range plugins {
		if fi, err := os.Stat(filepath.Join(c.cfg.PluginDir, p)); err != nil || fi.IsDir() {
			missing = append(missing, filepath.Join(c.cfg.PluginDir, p))
		}
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		missing = append(missing, "iptables")
	}
	if len(missing) > 0 {
		return fmt.Errorf("bridge network needs %s (apt-get install containernetworking-plugins iptables, or set [network] cni_plugin_dir)", strings.Join(missing, ", "))
	}
	return nil
}

func (c *CNI) runDir(runID string) (string, error) {
	if !names.Valid(runID) {
		return "", fmt.Errorf("network: run id %q is not a safe name", runID)
	}
	return filepath.Join(c.cfg.StateDir, "runs", runID), nil
}

// cniID is the container ID the plugins know the run by; the leases and
// the NAT chain's name derive from it.
func cniID(runID string) string { return "kiln-" + runID }

// lock serialises Setup and Teardown of one run within this process.
func (c *CNI) lock(runID string) (unlock func()) {
	c.runMu.Lock()
	l := c.runs[runID]
	if l == nil {
		l = &runLock{}
		c.runs[runID] = l
	}
	l.users++
	c.runMu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		c.runMu.Lock()
		if l.users--; l.users == 0 {
			delete(c.runs, runID)
		}
		c.runMu.Unlock()
	}
}

type runLock struct {
	mu    sync.Mutex
	users int // holders and waiters; guarded by CNI.runMu
}

// Files of a network's state dir.
const (
	readyFile = "attachment.json" // the Attachment, written last
	idFile    = "cni-id"          // the plugins' container ID, written first
)

// Setup gives runID a network namespace with its veth, address, routes,
// NAT and firewall rules, and a resolv.conf. Idempotent: a run that is set
// up gets its Attachment again; a half-made one (a crash, a cancel) is
// torn down and made anew. ctx bounds the plugin calls; when it ends
// mid-way, what was made is torn down (with a context of its own) before
// Setup returns.
func (c *CNI) Setup(ctx context.Context, runID string) (Attachment, error) {
	dir, err := c.runDir(runID)
	if err != nil {
		return Attachment{}, err
	}
	if err := c.prepareHost(); err != nil {
		return Attachment{}, err
	}
	unlock := c.lock(runID)
	defer unlock()
	if data, err := os.ReadFile(filepath.Join(dir, readyFile)); err == nil {
		var a Attachment
		if err := json.Unmarshal(data, &a); err == nil {
			return a, nil
		}
	}
	if err := c.teardown(ctx, runID, dir); err != nil {
		return Attachment{}, fmt.Errorf("network: clear what an earlier setup of %s left: %w", runID, err)
	}
	if c.cfg.Pool > 0 {
		defer c.refill()
		if a, ok := c.take(dir); ok {
			return a, nil
		}
	}
	return c.make(ctx, runID, dir)
}

// make sets up a network in dir, known to the plugins as cniID(runID).
func (c *CNI) make(ctx context.Context, runID, dir string) (_ Attachment, retErr error) {
	defer func() {
		if retErr == nil {
			return
		}
		tctx, cancel := cleanup.Context(ctx, cleanup.Step)
		defer cancel()
		if err := c.teardown(tctx, runID, dir); err != nil {
			c.cfg.Log.Error("cleanup after failed setup", "run", runID, "err", err)
		}
	}()
	resolv, _, err := sandboxResolvConf(c.dns, os.ReadFile)
	if err != nil {
		return Attachment{}, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Attachment{}, fmt.Errorf("network: %w", err)
	}
	// Recorded first: Teardown finds the plugins' name for the network
	// here, also for a network made for the pool and taken by a run.
	if err := os.WriteFile(filepath.Join(dir, idFile), []byte(cniID(runID)), 0o600); err != nil {
		return Attachment{}, fmt.Errorf("network: %w", err)
	}
	a := Attachment{ResolvConf: filepath.Join(dir, "resolv.conf")}
	if err := os.WriteFile(a.ResolvConf, resolv, 0o644); err != nil {
		return Attachment{}, fmt.Errorf("network: %w", err)
	}
	ns, err := netns.NewNetNS(filepath.Join(dir, "netns"))
	if err != nil {
		return Attachment{}, fmt.Errorf("network: make namespace: %w", err)
	}
	a.NetNS = ns.GetPath()
	res, err := c.cni.Setup(ctx, cniID(runID), a.NetNS)
	if err != nil {
		return Attachment{}, fmt.Errorf("network: cni add %s: %w", runID, err)
	}
	for name, ifc := range res.Interfaces {
		if ifc.Sandbox == "" {
			a.HostVeth = name
		}
		for _, ipc := range ifc.IPConfigs {
			// The loopback plugin reports lo's 127.0.0.1 too.
			if addr, ok := netip.AddrFromSlice(ipc.IP); ok && c.subnet.Contains(addr.Unmap()) {
				a.Addr = addr.Unmap()
			}
		}
	}
	if !a.Addr.IsValid() || a.HostVeth == "" {
		return Attachment{}, fmt.Errorf("network: cni add %s: the plugins reported no address in %s or no host interface", runID, c.subnet)
	}
	data, err := json.Marshal(a)
	if err != nil {
		return Attachment{}, err
	}
	if err := durable.WriteFile(filepath.Join(dir, readyFile), data, 0o600); err != nil {
		return Attachment{}, fmt.Errorf("network: %w", err)
	}
	return a, nil
}

// Teardown removes everything Setup made for runID: the veth, the lease,
// the NAT and firewall rules, the namespace and its files. Idempotent: a
// run with nothing set up is success. ctx bounds the plugin calls; a
// Teardown that fails or is cancelled keeps what is left recorded, so a
// later Teardown (the reaper's) finishes it.
func (c *CNI) Teardown(ctx context.Context, runID string) error {
	dir, err := c.runDir(runID)
	if err != nil {
		return err
	}
	unlock := c.lock(runID)
	defer unlock()
	return c.teardown(ctx, runID, dir)
}

func (c *CNI) teardown(ctx context.Context, runID, dir string) error {
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	id := cniID(runID)
	if b, err := os.ReadFile(filepath.Join(dir, idFile)); err == nil && len(b) > 0 {
		id = string(b)
	}
	nsPath := ""
	if entries, err := os.ReadDir(filepath.Join(dir, "netns")); err == nil && len(entries) > 0 {
		nsPath = filepath.Join(dir, "netns", entries[0].Name())
	}
	// gVisor's netstack takes the address off the veth it takes over
	// (runsc --network=sandbox), and ptp's DEL finds its NAT rule through
	// that address: without it the rule would stay.
	masq := netip.Addr{}
	if nsPath != "" && addrTakenOver(nsPath) {
		if a, ok := c.readyIn(dir); ok {
			masq = a.Addr
		}
	}
	// The namespace is still pinned here, so the plugins find the veth
	// and, through it, the NAT rules to remove.
	if err := c.cni.Remove(ctx, id, nsPath); err != nil {
		return fmt.Errorf("network: cni del %s: %w", runID, err)
	}
	if masq.IsValid() {
		// What ptp's DEL would have done with the address: the plugins'
		// own teardown, chain and comment.
		ipn := &net.IPNet{IP: masq.AsSlice(), Mask: net.CIDRMask(32, 32)}
		if err := ip.TeardownIPMasq(ipn, utils.FormatChainName(c.name, id), utils.FormatComment(c.name, id)); err != nil {
			return fmt.Errorf("network: NAT rule of %s: %w", runID, err)
		}
	}
	if nsPath != "" {
		if err := netns.LoadNetNS(nsPath).Remove(); err != nil {
			return fmt.Errorf("network: remove namespace of %s: %w", runID, err)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	return nil
}

// addrTakenOver reports whether the sandbox's interface in the namespace
// at nsPath is there without an IPv4 address (taken over by gVisor).
func addrTakenOver(nsPath string) bool {
	taken := false
	_ = ns.WithNetNSPath(nsPath, func(ns.NetNS) error {
		ifc, err := net.InterfaceByName(sandboxIf)
		if err != nil {
			return nil // no interface: DEL has nothing to find either
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			return nil
		}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
				return nil
			}
		}
		taken = true
		return nil
	})
	return taken
}

// sandboxIf is the sandbox's interface (gocni's prefix "eth", network 0).
const sandboxIf = "eth0"

// List returns the runs that have network state here (set up, or half
// made or torn down), for the reaper.
func (c *CNI) List(ctx context.Context) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(c.cfg.StateDir, "runs"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	out := make([]string, 0, len(entries))
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// prepareHost makes sure, once per process, that the plugins are there,
// the host forwards IPv4 and kiln's isolation rules are in place.
func (c *CNI) prepareHost() error {
	c.hostMu.Lock()
	defer c.hostMu.Unlock()
	if c.hostReady {
		return nil
	}
	if err := c.Available(); err != nil {
		return err
	}
	if err := enableForwarding(c.cfg.Log); err != nil {
		return err
	}
	if err := c.ensureRules(); err != nil {
		return fmt.Errorf("bridge network: kiln's firewall rules: %w", err)
	}
	c.hostReady = true
	return nil
}

const ipForward = "/proc/sys/net/ipv4/ip_forward"

// enableForwarding sets net.ipv4.ip_forward=1: without it no sandbox
// packet leaves the host.
func enableForwarding(log *slog.Logger) error {
	cur, err := os.ReadFile(ipForward)
	if err != nil {
		return fmt.Errorf("bridge network: read %s: %w", ipForward, err)
	}
	if strings.TrimSpace(string(cur)) == "1" {
		return nil
	}
	if err := os.WriteFile(ipForward, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("bridge network: set net.ipv4.ip_forward=1: %w", err)
	}
	log.Info("bridge network: set net.ipv4.ip_forward=1 for sandbox egress")
	return nil
}

// uplinkMTU is the MTU of the interface of the host's IPv4 default route,
// or 0 when there is none.
func uplinkMTU() int {
	data, err := os.ReadFile("/proc/net/route")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 3 || f[1] != "00000000" {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/sys/class/net", filepath.Base(f[0]), "mtu"))
		if err != nil {
			return 0
		}
		n, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || n < 576 {
			return 0
		}
		return n
	}
	return 0
}
