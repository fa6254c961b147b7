// Package config reads kiln's TOML configuration files: the host config
// (worker.toml, read by `kiln worker`, `kiln image` and `kiln exec`) and the
// server config (server.toml). Every default lives here and is written out in
// contrib/worker.toml and contrib/server.toml.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/durable"
	"github.com/kiln-build/kiln/names"
)

// DefaultHostConfigPath is where host-side commands look without --config.
const DefaultHostConfigPath = "/etc/kiln/worker.toml"

// Host is the configuration of one build host.
type Host struct {
	// DataDir holds runs (spool, inputs, outputs), the image metadata and,
	// for overlay, the storage itself.
	DataDir    string            `toml:"data_dir"`
	Containerd Containerd        `toml:"containerd"`
	Storage    Storage           `toml:"storage"`
	Run        RunDefaults       `toml:"run"`
	Limits     Limits            `toml:"limits"`
	Network    Network           `toml:"network"`
	Server     WorkerServer      `toml:"server"`
	Qemu       Qemu              `toml:"qemu"`
	Jail       Jail              `toml:"jail"`
	VM         VM                `toml:"vm"`
	HostTools  map[string]string `toml:"host_tools"`
	Hooks      map[string]Hook   `toml:"hooks"`
	// Caches are the host's shared caches a job may name (docs/caches.md).
	Caches  map[string]Cache `toml:"caches"`
	Images  ImageDefaults    `toml:"images"`
	Metrics WorkerMetrics    `toml:"metrics"`
	path    string
}

// Cache is one shared cache ([caches.NAME]): a run that names it sees, at
// Target, the files of Dir/<arch> and may add to them; what a successful
// run added is merged in (docs/caches.md).
type Cache struct {
	Dir     string   `toml:"dir"`      // host directory
	Target  string   `toml:"target"`   // absolute path in the sandbox
	MaxSize api.Size `toml:"max_size"` // LRU bound of all owners and arches together; 0: none
	// Shared: one tree per arch for every owner, instead of one per
	// owner; only for tools that verify what they read (docs/caches.md).
	Shared bool `toml:"shared"`
}

// WorkerMetrics says where `kiln worker run` serves its Prometheus metrics.
type WorkerMetrics struct {
	// Listen is host:port of an HTTP listener answering GET /metrics; ""
	// (the default) serves none. Unauthenticated, like the server's
	// /metrics: keep it on the loopback or a trusted network.
	Listen string `toml:"listen"`
}

// Containerd says how to reach the containerd daemon (Linux).
type Containerd struct {
	Address   string `toml:"address"`
	Namespace string `toml:"namespace"`
	Runtime   string `toml:"runtime"`
	// SharedShims lets kiln's containers take turns on a few long-lived
	// runc shims instead of starting one per container; each is kept
	// alive by an idle "kiln.shim-<hash of data dir and identity>-<n>" container.
	SharedShims bool `toml:"shared_shims"`
	// SandboxInit is the kiln-sandbox-init binary every container-tier
	// sandbox starts with, to install a seccomp filter compiled once per
	// worker. Empty: the one beside the kiln binary, else in PATH.
	SandboxInit string `toml:"sandbox_init"`
}

// Storage selects the clone backend.
type Storage struct {
	Kind string `toml:"kind"` // overlay | btrfs | zfs
	// Root is the directory for overlay and btrfs (for btrfs it must be on
	// a btrfs filesystem). Default: <data_dir>/storage.
	Root string `toml:"root"`
	// ZFSParent is the parent dataset for zfs, e.g. "zroot/kiln".
	ZFSParent string `toml:"zfs_parent"`
}

// RunDefaults bound every run on this host.
type RunDefaults struct {
	// ConsoleCap is the old name of [limits] console, still read when
	// [limits] does not set console.
	ConsoleCap api.Size     `toml:"console_cap,omitempty"`
	KillGrace  api.Duration `toml:"kill_grace"` // SIGTERM to SIGKILL
	// User is who jobs run as inside the sandbox; "" = the sandbox's root.
	// Linux: numeric "uid[:gid]", ids up to 65535; FreeBSD: a user name of
	// the jail's image. A reproduce group's user variation wins over it.
	User string `toml:"user"`
	// AllowHostNetwork lets jobs ask for network = "host" (the host's own
	// network namespace); without it such runs are refused and the server
	// never offers them to this host.
	AllowHostNetwork bool `toml:"allow_host_network"`
	// DiffoscopeMax caps the bytes a diffoscope task downloads (both
	// runs' differing artifacts together); a larger task fails before
	// fetching anything, so one huge group cannot fill this host's disk.
	DiffoscopeMax api.Size `toml:"diffoscope_max"`
	// InputCacheMax bounds the job inputs kept in <data_dir>/cache/inputs
	// (downloaded once per host): past it the least recently used go,
	// except those used within the last hour; 0: no bound.
	InputCacheMax api.Size `toml:"input_cache_max"`
}

// Limits are this host's defaults and maxima for one run ([limits]). A job
// that asks for nothing gets the defaults; a job that asks for more than a
// maximum is not leased to this host (the maxima are part of its facts)
// and is refused by `kiln exec`. A zero maximum is filled in at load: the
// host's RAM, CPUs and the size of the storage's filesystem; pids and
// timeout have fixed ones.
type Limits struct {
	Memory     api.Size     `toml:"memory"`
	MemoryMax  api.Size     `toml:"memory_max"`
	CPUs       float64      `toml:"cpus"` // 0: all of the host's CPUs
	CPUsMax    float64      `toml:"cpus_max"`
	Pids       int64        `toml:"pids"`
	PidsMax    int64        `toml:"pids_max"`
	Timeout    api.Duration `toml:"timeout"`
	TimeoutMax api.Duration `toml:"timeout_max"`
	Disk       api.Size     `toml:"disk"`
	DiskMax    api.Size     `toml:"disk_max"`
	// Console is the console bytes kept per run (notes of kiln included);
	// past it the run goes on and the log says it was cut.
	Console api.Size `toml:"console"`
	// Artifacts and ArtifactBytes cap what is collected from /out: files
	// (and links) and their apparent bytes. Past either the run fails
	// with a clear error; a file is refused by its size before any of it
	// is read.
	Artifacts     int      `toml:"artifacts"`
	ArtifactBytes api.Size `toml:"artifact_bytes"`

	// explicit records the defaults the config file set; a built-in
	// default above a small host's maximum is lowered to it instead.
	explicit map[string]bool
}

// Defaults returns the per-run defaults as api.Limits.
func (l Limits) Defaults() api.Limits {
	return api.Limits{Memory: l.Memory, CPUs: l.CPUs, Pids: l.Pids, Timeout: l.Timeout, Disk: l.Disk}
}

// Max returns the per-run maxima as api.Limits, as the host reports them.
func (l Limits) Max() api.Limits {
	return api.Limits{Memory: l.MemoryMax, CPUs: l.CPUsMax, Pids: l.PidsMax, Timeout: l.TimeoutMax, Disk: l.DiskMax}
}

// Network configures sandboxes with network = "bridge" (Linux): their own
// network namespace with a veth to the host, NAT egress and DNS.
type Network struct {
	// Subnet is the IPv4 range sandboxes get their addresses from; pick
	// one that no network the host reaches uses.
	Subnet string `toml:"subnet"`
	// CNIPluginDir holds the CNI plugins (ptp, host-local, firewall).
	CNIPluginDir string `toml:"cni_plugin_dir"`
	// DNS are the nameservers sandboxes are given; empty: the host's own
	// (/etc/resolv.conf, or systemd-resolved's upstreams behind a stub).
	DNS []string `toml:"dns"`
	// Deny are IPv4 networks (CIDR) sandboxes may not reach, e.g. a LAN's
	// management network; link-local (169.254.0.0/16, the cloud metadata
	// service) is denied always.
	Deny []string `toml:"deny"`
	// Pool makes the worker keep one bridge network per slot made ahead
	// (once a bridge job has run), so that a run does not wait for the
	// plugins; each is used by one run only.
	Pool bool `toml:"pool"`
}

// WorkerServer is the worker's link to the central server; `kiln worker
// enroll` fills it in.
type WorkerServer struct {
	URL   string `toml:"url"` // one address, or several replicas separated by commas
	Token string `toml:"token"`
	// ID is the identity of the server this host enrolled with. The
	// worker keys its runs by it and refuses assignments of another.
	ID string `toml:"server_id"`
	// TLSCA is a PEM file of CA certificates trusted for the server's
	// certificate besides the system's (a private CA).
	TLSCA  string            `toml:"tls_ca"`
	Name   string            `toml:"name"`
	Slots  int               `toml:"slots"`
	Labels map[string]string `toml:"labels"`
	// Heartbeat is the interval of lease renewals; keep it well below the
	// server's lease TTL.
	Heartbeat api.Duration `toml:"heartbeat"`
	// DrainTimeout bounds how long SIGTERM waits for running jobs.
	DrainTimeout api.Duration `toml:"drain_timeout"`
	// WarmPool keeps a ready clone of recently used images.
	WarmPool bool `toml:"warm_pool"`
	// SigningKey is the host's provenance signing key (ed25519, PKCS#8
	// PEM, 0600), made by `kiln worker enroll`; default
	// <data_dir>/signing.key (docs/publishing.md).
	SigningKey string `toml:"signing_key"`
}

// Qemu controls foreign-arch emulation.
type Qemu struct {
	// Register binfmt_misc handlers (with the F flag) from the definitions
	// the distribution ships when one is missing.
	Register bool `toml:"register"`
}

// Jail holds FreeBSD jail settings (see freebsd.Options).
type Jail struct {
	// DevfsRuleset filters each jail's /dev (devfs.rules(5)); 4 is the
	// system's devfsrules_jail.
	DevfsRuleset int `toml:"devfs_ruleset"`
	// ConfDir keeps the generated jail.conf of each running jail; default
	// /var/run/kiln/jails.
	ConfDir string `toml:"conf_dir"`
	// Securelevel above 0 raises each jail's kern.securelevel (builds that
	// install base with schg flags fail above 0).
	Securelevel int `toml:"securelevel"`
	// Allow switches on jail allow.* parameters by name, e.g. ["chflags"].
	Allow []string `toml:"allow"`
}

// VM configures the VM tier (jobs with isolation = "vm"; Linux). Empty
// values take the defaults of vm.Options.
type VM struct {
	Qemu    string `toml:"qemu"`    // qemu-system binary; default qemu-system-x86_64
	Kernel  string `toml:"kernel"`  // guest kernel; default the newest /boot/vmlinuz-*
	Modules string `toml:"modules"` // its modules; default /lib/modules/<version>
	Busybox string `toml:"busybox"` // static busybox for the guest's init; default /bin/busybox
	Machine string `toml:"machine"` // microvm | q35 | auto
	Accel   string `toml:"accel"`   // kvm | tcg | auto
}

// Hook is an admin-defined command run on the host, outside the sandbox.
type Hook struct {
	Stage   string       `toml:"stage"` // pre | post | cleanup
	Command []string     `toml:"command"`
	Timeout api.Duration `toml:"timeout"`
}

// ImageDefaults configure image methods.
type ImageDefaults struct {
	// Mirror for debootstrap; empty lets debootstrap use its own default.
	DebootstrapMirror string `toml:"debootstrap_mirror"`
	// FreeBSDDist is a URL or directory holding <version>/base.txz.
	FreeBSDDist string `toml:"freebsd_dist"`
}

// DefaultHost returns the built-in defaults.
func DefaultHost() *Host {
	h := &Host{
		DataDir: "/var/lib/kiln",
		Containerd: Containerd{
			Address:     "/run/containerd/containerd.sock",
			Namespace:   "kiln",
			Runtime:     "io.containerd.runc.v2",
			SharedShims: true,
		},
		Storage: Storage{Kind: "overlay"},
		Network: Network{Subnet: "10.121.0.0/16", CNIPluginDir: "/usr/lib/cni", Pool: true},
		VM:      VM{Machine: "auto", Accel: "auto"},
		Run: RunDefaults{
			KillGrace:     api.Duration(10 * time.Second),
			DiffoscopeMax: 2 << 30,
			InputCacheMax: 10 << 30,
		},
		Limits: Limits{
			Memory:        2 << 30,
			Pids:          4096,
			PidsMax:       32768,
			Timeout:       api.Duration(api.DefaultTimeout),
			TimeoutMax:    api.Duration(24 * time.Hour),
			Disk:          10 << 30,
			Console:       64 << 20,
			Artifacts:     50000,
			ArtifactBytes: 10 << 30,
		},
		Server: WorkerServer{
			DrainTimeout: api.Duration(5 * time.Minute),
			Heartbeat:    api.Duration(5 * time.Second),
			WarmPool:     true,
		},
	}
	if runtime.GOOS == "freebsd" {
		h.Storage.Kind = "zfs"
		h.Storage.ZFSParent = "zroot/kiln"
		h.Jail.DevfsRuleset = 4
	}
	return h
}

// LoadHost reads path over the defaults. A missing file at the default path
// is not an error (the defaults apply); a missing file named explicitly is.
func LoadHost(path string, explicit bool) (*Host, error) {
	h := DefaultHost()
	h.path = path
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return h, h.finish()
	}
	if err != nil {
		return nil, fmt.Errorf("read host config: %w", err)
	}
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(h)
	if err != nil {
		return nil, fmt.Errorf("host config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return nil, fmt.Errorf("host config %s: unknown key %q", path, und[0].String())
	}
	if md.IsDefined("run", "console_cap") && !md.IsDefined("limits", "console") {
		h.Limits.Console = h.Run.ConsoleCap
	}
	h.Run.ConsoleCap = 0
	h.Limits.explicit = map[string]bool{"memory": md.IsDefined("limits", "memory"), "disk": md.IsDefined("limits", "disk")}
	return h, h.finish()
}

func (h *Host) finish() error {
	if h.Storage.Root == "" {
		h.Storage.Root = filepath.Join(h.DataDir, "storage")
	}
	if h.Server.Name == "" {
		h.Server.Name, _ = os.Hostname()
	}
	if h.Server.SigningKey == "" {
		h.Server.SigningKey = filepath.Join(h.DataDir, "signing.key")
	}
	if h.Server.Slots <= 0 {
		h.Server.Slots = max(1, runtime.NumCPU()/2)
	}
	if err := h.Limits.finish(h.Storage.Root); err != nil {
		return err
	}
	switch h.Storage.Kind {
	case "overlay", "btrfs", "zfs":
	default:
		return fmt.Errorf("host config: storage.kind %q: want overlay, btrfs or zfs", h.Storage.Kind)
	}
	for name, hk := range h.Hooks {
		if !names.Valid(name) {
			return fmt.Errorf("host config: hook name %q is not valid", name)
		}
		switch hk.Stage {
		case "pre", "post", "cleanup":
		default:
			return fmt.Errorf("host config: hook %q: stage %q: want pre, post or cleanup", name, hk.Stage)
		}
		if len(hk.Command) == 0 || !filepath.IsAbs(hk.Command[0]) {
			return fmt.Errorf("host config: hook %q: command must start with an absolute path", name)
		}
	}
	if p, err := netip.ParsePrefix(h.Network.Subnet); err != nil || !p.Addr().Is4() || p != p.Masked() || p.Bits() > 28 {
		return fmt.Errorf("host config: network.subnet %q: want an IPv4 network of at least 16 addresses, e.g. 10.121.0.0/16", h.Network.Subnet)
	}
	for _, d := range h.Network.DNS {
		if a, err := netip.ParseAddr(d); err != nil || !a.Is4() || a.IsLoopback() {
			return fmt.Errorf("host config: network.dns %q: want an IPv4 address that is not loopback (a sandbox's loopback is its own)", d)
		}
	}
	for _, d := range h.Network.Deny {
		if _, err := ParseDeny(d); err != nil {
			return fmt.Errorf("host config: %w", err)
		}
	}
	if !filepath.IsAbs(h.Network.CNIPluginDir) {
		return fmt.Errorf("host config: network.cni_plugin_dir %q: want an absolute path", h.Network.CNIPluginDir)
	}
	if h.Metrics.Listen != "" {
		if _, _, err := net.SplitHostPort(h.Metrics.Listen); err != nil {
			return fmt.Errorf("host config: metrics.listen %q: want host:port, e.g. 127.0.0.1:9464: %w", h.Metrics.Listen, err)
		}
	}
	for name, c := range h.Caches {
		if !names.Valid(name) || !filepath.IsAbs(c.Dir) {
			return fmt.Errorf("host config: caches.%s: dir %q: want a valid name and an absolute dir", name, c.Dir)
		}
		if !filepath.IsAbs(c.Target) || filepath.Clean(c.Target) != c.Target || c.Target == "/" {
			return fmt.Errorf("host config: caches.%s: target %q: want a clean absolute path below /", name, c.Target)
		}
		for _, reserved := range []string{"/in", "/out", "/host", "/proc", "/sys", "/dev"} {
			if c.Target == reserved || strings.HasPrefix(c.Target, reserved+"/") {
				return fmt.Errorf("host config: caches.%s: target %q: %s is kiln's or the kernel's", name, c.Target, reserved)
			}
		}
		if c.MaxSize < 0 {
			return fmt.Errorf("host config: caches.%s: max_size must not be negative", name)
		}
	}
	for name, dir := range h.HostTools {
		if !names.Valid(name) || !filepath.IsAbs(dir) {
			return fmt.Errorf("host config: host_tools %q = %q: want a valid name and an absolute path", name, dir)
		}
	}
	return checkRunUser(h.Run.User)
}

// finish fills in the maxima that depend on the host and checks that
// every default is within its maximum.
func (l *Limits) finish(storageRoot string) error {
	if l.MemoryMax == 0 {
		l.MemoryMax = api.Size(hostMemory())
	}
	if l.CPUsMax == 0 {
		l.CPUsMax = float64(runtime.NumCPU())
	}
	if l.DiskMax == 0 {
		l.DiskMax = api.Size(fsSize(storageRoot))
	}
	if !l.explicit["memory"] && l.MemoryMax > 0 {
		l.Memory = min(l.Memory, l.MemoryMax)
	}
	if !l.explicit["disk"] && l.DiskMax > 0 {
		l.Disk = min(l.Disk, l.DiskMax)
	}
	switch {
	case l.Memory < 0 || l.MemoryMax < 0 || l.CPUs < 0 || l.CPUsMax < 0 || l.Pids < 0 || l.PidsMax < 0 ||
		l.Timeout < 0 || l.TimeoutMax < 0 || l.Disk < 0 || l.DiskMax < 0 || l.Artifacts < 0 || l.ArtifactBytes < 0:
		return errors.New("host config: [limits] values must not be negative")
	case l.Memory == 0 || l.Pids == 0:
		// A job that asks for nothing must never get an unbounded host.
		return errors.New("host config: [limits] memory and pids must be set (a run needs a bound)")
	case l.Console <= 0:
		return errors.New("host config: [limits] console must be positive")
	case l.Artifacts == 0 || l.ArtifactBytes == 0:
		return errors.New("host config: [limits] artifacts and artifact_bytes must be positive")
	}
	if over := l.Defaults().Over(l.Max()); over != "" {
		return fmt.Errorf("host config: [limits] default %s is above its maximum", over)
	}
	return nil
}

// Path is the file this config was read from (it may not exist).
func (h *Host) Path() string { return h.path }

// RunsDir holds per-run state: lock, inputs, outputs, console spool.
func (h *Host) RunsDir() string { return filepath.Join(h.DataDir, "runs") }

// Save writes the config back to its path atomically (0600: it may hold the
// worker's credential).
func (h *Host) Save() error {
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(h); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(h.path), 0o755); err != nil {
		return err
	}
	return durable.WriteFile(h.path, buf.Bytes(), 0o600)
}
