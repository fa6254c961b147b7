package freebsd

import (
	"bufio"
	"fmt"
	"log/slog"
	"math"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/sandbox"
)

// NamePrefix starts the name of every jail kiln creates, followed by its
// owner and "_"; Reap touches no other jail, nor another owner's.
const NamePrefix = "kiln_"

// Options configure the jail launcher.
type Options struct {
	// Owner is the identity of the data dir the launcher works for
	// (platform.Identity): letters and digits. Each jail's name carries
	// it, so that Reap touches this owner's jails alone, as the Linux
	// launchers' kiln.owner label does. Required.
	Owner string
	// ConfDir holds the generated jail.conf of each running jail
	// (default /var/run/kiln/jails). jail -r needs the file to unmount
	// what the jail mounted, and Reap reads the run id from it.
	ConfDir string
	// DevfsRuleset is the devfs.rules(5) ruleset for the jail's /dev
	// (default 4, devfsrules_jail).
	DevfsRuleset int
	// User runs the job inside the jail (a user name in the image's
	// passwd); "" is root of the jail.
	User string
	// Securelevel, when above 0, raises the jail's kern.securelevel. Left
	// unset by default because builds that install base (chflags schg)
	// fail above 0.
	Securelevel int
	// Allow switches on allow.* parameters by name, e.g. "raw_sockets",
	// "chflags", "mlock"; every allow.* that kiln names is off otherwise.
	Allow []string
	// Logger receives warnings (racct disabled); nil means slog.Default().
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.ConfDir == "" {
		o.ConfDir = "/var/run/kiln/jails"
	}
	if o.DevfsRuleset == 0 {
		o.DevfsRuleset = 4
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// deniedAllows are written out as off so the conf says what the jail may
// not do, whatever jail(8)'s defaults become.
var deniedAllows = []string{"chflags", "mlock", "mount", "quotas", "raw_sockets", "reserved_ports", "set_hostname", "socket_af", "sysvipc"}

var (
	allowRe  = regexp.MustCompile(`^[a-z][a-z0-9_.]*$`)
	hostRe   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]{0,253}[A-Za-z0-9])?$`)
	safePath = regexp.MustCompile(`^/[A-Za-z0-9._@%+=:,/-]*$`)
	runIDRe  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	// An owner has no '_': no owner's names start with another's prefix.
	ownerRe = regexp.MustCompile(`^[A-Za-z0-9]{1,64}$`)
)

// checkOwner refuses an owner that would not make a name prefix of its own.
func checkOwner(owner string) error {
	if !ownerRe.MatchString(owner) {
		return fmt.Errorf("%w: jail owner %q: want 1 to 64 letters and digits (the data dir's identity)", errdefs.ErrInvalid, owner)
	}
	return nil
}

// ownerPrefix starts the name of every jail of owner.
func ownerPrefix(owner string) string { return NamePrefix + owner + "_" }

// JailName is owner's jail for runID: the owner's prefix plus the run id
// with every character jail(8) would misread ('.' nests jails) replaced
// by '_'.
func JailName(owner, runID string) string {
	b := []byte(runID)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			b[i] = '_'
		}
	}
	return ownerPrefix(owner) + string(b)
}

// Owned reports whether jail name is one a launcher of owner made.
func Owned(owner, name string) bool {
	return strings.HasPrefix(name, ownerPrefix(owner)) && len(name) > len(ownerPrefix(owner))
}

// ConfPath is where the launcher keeps the conf of jail name.
func ConfPath(opts Options, name string) string {
	return filepath.Join(opts.withDefaults().ConfDir, name+".conf")
}

// validate rejects what would not survive jail.conf's and fstab's quoting:
// kiln's own paths never need spaces, quotes or control characters.
func validate(spec sandbox.Spec) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: jail spec: "+format, append([]any{errdefs.ErrInvalid}, a...)...)
	}
	if !runIDRe.MatchString(spec.RunID) {
		return bad("run id %q", spec.RunID)
	}
	if !safePath.MatchString(spec.Root) || filepath.Clean(spec.Root) != spec.Root || spec.Root == "/" {
		return bad("root %q must be a clean absolute path other than / without spaces or quotes", spec.Root)
	}
	if spec.Hostname != "" && !hostRe.MatchString(spec.Hostname) {
		return bad("hostname %q", spec.Hostname)
	}
	targets := map[string]bool{}
	for _, m := range spec.Mounts {
		if !safePath.MatchString(m.Source) || filepath.Clean(m.Source) != m.Source {
			return bad("mount source %q must be a clean absolute path without spaces or quotes", m.Source)
		}
		if !safePath.MatchString(m.Target) || filepath.Clean(m.Target) != m.Target || m.Target == "/" || m.Target == "/dev" || strings.HasPrefix(m.Target, "/dev/") {
			return bad("mount target %q must be a clean absolute path below / and outside /dev", m.Target)
		}
		if targets[m.Target] {
			return bad("mount target %q given twice", m.Target)
		}
		targets[m.Target] = true
	}
	for _, e := range spec.Env {
		k, _, ok := strings.Cut(e, "=")
		if !ok || k == "" || strings.ContainsAny(k, " \t\n") {
			return bad("env entry %q is not KEY=VALUE", e)
		}
	}
	if _, _, err := sandbox.ParseUser(spec.User); err != nil {
		return err
	}
	if spec.Cwd != "" && !filepath.IsAbs(spec.Cwd) {
		return bad("cwd %q must be absolute", spec.Cwd)
	}
	if spec.MemoryBytes < 0 || spec.Pids < 0 || spec.CPUs < 0 || math.IsNaN(spec.CPUs) {
		return bad("negative resource limit")
	}
	return nil
}

// sortedMounts orders mounts so a parent is mounted before anything below
// it; jail(8) unmounts in reverse order.
func sortedMounts(ms []sandbox.Mount) []sandbox.Mount {
	out := slices.Clone(ms)
	slices.SortStableFunc(out, func(a, b sandbox.Mount) int {
		return strings.Count(a.Target, "/") - strings.Count(b.Target, "/")
	})
	return out
}

// JailConf renders the jail.conf(5) block for spec. The jail is persistent
// (it lives until jail -r, not until its last process exits), has no
// network unless spec.Network is host (then it shares the host's
// addresses; bridge is refused), a /dev filtered by opts.DevfsRuleset,
// sees only its own mounts (enforce_statfs 2), cannot create child jails,
// and gets spec.Mounts as nullfs mounts.
func JailConf(spec sandbox.Spec, opts Options) (string, error) {
	opts = opts.withDefaults()
	if err := checkOwner(opts.Owner); err != nil {
		return "", err
	}
	if err := validate(spec); err != nil {
		return "", err
	}
	for _, a := range opts.Allow {
		if !allowRe.MatchString(a) {
			return "", fmt.Errorf("%w: jail allow parameter %q", errdefs.ErrInvalid, a)
		}
	}
	host := spec.Hostname
	if host == "" {
		host = spec.RunID
	}
	name := JailName(opts.Owner, spec.RunID)
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, "\t"+format+";\n", a...) }
	fmt.Fprintf(&b, "# Written by kiln for one run; removed with the jail.\n")
	fmt.Fprintf(&b, "# kiln-run-id: %s\n", spec.RunID)
	fmt.Fprintf(&b, "%s {\n", name)
	p("path = %q", spec.Root)
	p("host.hostname = %q", host)
	p("persist")
	switch spec.Network.OrNone() {
	case sandbox.NetworkHost:
		p("ip4 = inherit")
		p("ip6 = inherit")
	case sandbox.NetworkNone:
		p("ip4 = disable")
		p("ip6 = disable")
	default:
		// A VNET jail with its own epair would be the FreeBSD bridge.
		return "", fmt.Errorf("network %q: jails have none or host: %w", spec.Network, errdefs.ErrUnsupported)
	}
	p("mount.devfs")
	p("devfs_ruleset = %d", opts.DevfsRuleset)
	p("enforce_statfs = 2")
	p("children.max = 0")
	if opts.Securelevel > 0 {
		p("securelevel = %d", opts.Securelevel)
	}
	for _, a := range deniedAllows {
		if !slices.Contains(opts.Allow, a) {
			p("allow.no%s", a)
		}
	}
	for _, a := range opts.Allow {
		p("allow.%s", a)
	}
	p("exec.clean")
	// Kill means kill: the worker sends SIGTERM itself and waits its grace
	// period before it removes the jail.
	p("stop.timeout = 0")
	for _, m := range sortedMounts(spec.Mounts) {
		mode := "rw"
		if m.ReadOnly {
			mode = "ro"
		}
		p("mount += %q", fmt.Sprintf("%s %s nullfs %s 0 0", m.Source, filepath.Join(spec.Root, m.Target), mode))
	}
	b.WriteString("}\n")
	return b.String(), nil
}

// RunIDFromConf reads the run id JailConf recorded in a conf file.
func RunIDFromConf(conf []byte) (string, bool) {
	sc := bufio.NewScanner(strings.NewReader(string(conf)))
	for sc.Scan() {
		if id, ok := strings.CutPrefix(sc.Text(), "# kiln-run-id: "); ok {
			return strings.TrimSpace(id), true
		}
	}
	return "", false
}

// MountTargets lists the host paths a conf mounts (nullfs targets and the
// jail's /dev), in the order to unmount them.
func MountTargets(conf []byte) []string {
	var root string
	var targets []string
	sc := bufio.NewScanner(strings.NewReader(string(conf)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if v, ok := strings.CutPrefix(line, "path = "); ok {
			root, _ = strconv.Unquote(strings.TrimSuffix(v, ";"))
		}
		if v, ok := strings.CutPrefix(line, "mount += "); ok {
			entry, err := strconv.Unquote(strings.TrimSuffix(v, ";"))
			if f := strings.Fields(entry); err == nil && len(f) >= 2 {
				targets = append(targets, f[1])
			}
		}
	}
	// jail(8) mounts devfs after the conf's mounts: undo in reverse.
	slices.Reverse(targets)
	if root != "" {
		targets = append([]string{filepath.Join(root, "dev")}, targets...)
	}
	return targets
}

// RctlRules are the rctl(8) rules bounding jail name: memory (resident),
// processes, and CPU in percent of one CPU. Empty when r sets no limit.
func RctlRules(jailName string, r sandbox.Resources) []string {
	var rules []string
	subj := "jail:" + jailName + ":"
	if r.MemoryBytes > 0 {
		rules = append(rules, subj+"memoryuse:deny="+strconv.FormatInt(r.MemoryBytes, 10))
	}
	if r.Pids > 0 {
		rules = append(rules, subj+"maxproc:deny="+strconv.FormatInt(r.Pids, 10))
	}
	if r.CPUs > 0 {
		rules = append(rules, subj+"pcpu:deny="+strconv.FormatInt(int64(math.Ceil(r.CPUs*100)), 10))
	}
	return rules
}

// RctlAddArgv adds rules; RctlRemoveArgv removes every rule of a jail.
func RctlAddArgv(rules []string) []string { return append([]string{"rctl", "-a"}, rules...) }

// RctlRemoveArgv removes every rctl rule whose subject is jail name.
func RctlRemoveArgv(jailName string) []string { return []string{"rctl", "-r", "jail:" + jailName} }

// CreateArgv creates jail name from its conf file.
func CreateArgv(confPath, jailName string) []string {
	return []string{"jail", "-f", confPath, "-c", jailName}
}

// RemoveArgv removes jail name, killing its processes; with the conf file
// it also unmounts what the conf mounted (without it jail(8) does not know
// about those mounts, and the caller must unmount them).
func RemoveArgv(jailName, confPath string) []string {
	if confPath == "" {
		return []string{"jail", "-r", jailName}
	}
	return []string{"jail", "-f", confPath, "-r", jailName}
}

// JexecArgv runs spec.Args in jail name as user ("" is root), with exactly
// spec.Env as its environment (env -i) and spec.Cwd (default /work) as its
// working directory. jexec -l gives a login-like start (the user's groups
// and login class); the sh wrapper changes directory because jexec and
// env(1) of older releases cannot.
//
// spec.User ("uid[:gid]", numeric) wins over user: jexec -U wants a name
// from the jail's passwd, which a varied uid (reproduce groups) need not
// have, so the process is started as root and chroot(8) -u/-g, which takes
// numeric ids, drops to it ("/" keeps the jail's root).
func JexecArgv(jailName string, spec sandbox.Spec, user string) []string {
	if user == "" || spec.User != "" {
		user = "root"
	}
	cwd := spec.Cwd
	if cwd == "" {
		cwd = "/work"
	}
	args := spec.Args
	if len(args) == 0 {
		args = []string{"/bin/sh"}
	}
	argv := []string{"jexec", "-l", "-U", user, jailName}
	if spec.User != "" {
		uid, gid, _ := sandbox.ParseUser(spec.User) // checked by validate
		argv = append(argv, "/usr/sbin/chroot", "-u", strconv.FormatUint(uint64(uid), 10), "-g", strconv.FormatUint(uint64(gid), 10), "/")
	}
	argv = append(argv, "/usr/bin/env", "-i")
	argv = append(argv, spec.Env...)
	argv = append(argv, "/bin/sh", "-c", `cd "$1" || exit 127; shift; exec "$@"`, "kiln-cwd", cwd)
	return append(argv, args...)
}

// ParseJlsNames returns owner's jail names from `jls name` output: never
// another owner's, nor a jail kiln did not make.
func ParseJlsNames(out []byte, owner string) []string {
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.TrimSpace(l); Owned(owner, l) {
			names = append(names, l)
		}
	}
	return names
}

// RunIDFromName recovers a run id from owner's jail name when its conf
// file is gone; exact for run ids made of letters, digits and '-'.
func RunIDFromName(owner, name string) string {
	return strings.ReplaceAll(strings.TrimPrefix(name, ownerPrefix(owner)), "_", "-")
}
