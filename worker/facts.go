package worker

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/config"
	"github.com/kiln-build/kiln/platform"
	"github.com/kiln-build/kiln/qemu"
)

// factsTimeout bounds the probes that talk to daemons (containerd) and
// storage, so that a wedged daemon makes its fact "unreachable" instead of
// hanging `kiln host facts` or the worker.
const factsTimeout = 10 * time.Second

// HostFacts describes what this host can do, as `kiln host facts` prints it
// and the worker reports it. Keys are flat and stable:
//
//	os, kernel, distro, distro_version, arch, emulated_archs (comma list),
//	cpus, memory_bytes, data_dir, data_dir_free_bytes, storage, launcher,
//	containerd (version, or "unreachable"), isolations (comma list of
//	api.Isolation* the launcher offers), apparmor (Linux: "enabled (...)"
//	or "unavailable: ..."), slots, images (comma list),
//	image.<name>.arch, image.<name>.os, image.<name>.snapshots (versions,
//	oldest first), hook.<name> ("<stage>: <command>"), host_tool.<name>
//	(host dir), label.<key>, networks (the modes offered, comma list),
//	network.<mode> ("refused: <why>" for each mode not offered),
//	isolations (comma list: container, gvisor, vm; "none" when the host
//	can run nothing), vm ("yes" or "no: why"),
//	vm.kernel, vm.machine, kvm (yes|no),
//	limits.<resource> and limits.<resource>_max ([limits] after defaults:
//	memory, cpus, pids, timeout, disk; 0 is no bound), and per-OS extras
//	(freebsd-version, zpool.*).
//
// A fact that cannot be found is left out, or for probes that can fail
// (images, archs) its value starts with "unknown: " and says why; HostFacts
// itself never fails. ctx bounds every probe.
//
// host is the caller's open host, so that a running worker probes through
// its own containerd client and storage handle; nil opens one for the call
// (`kiln host facts`, enrollment), which creates data_dir if missing, as
// every host-side command does.
func HostFacts(ctx context.Context, cfg *config.Host, host *platform.Host) map[string]string {
	f := map[string]string{
		"os":       runtime.GOOS,
		"arch":     qemu.Native(),
		"cpus":     strconv.Itoa(runtime.NumCPU()),
		"data_dir": cfg.DataDir,
		"storage":  cfg.Storage.Kind,
		"slots":    strconv.Itoa(cfg.Server.Slots),
	}
	osFacts(ctx, f)
	if caps, err := qemu.Detect(ctx); err != nil {
		f["emulated_archs"] = "unknown: " + err.Error()
	} else {
		f["emulated_archs"] = strings.Join(caps.Emulated, ",")
	}
	if free, err := freeBytes(cfg.DataDir); err == nil {
		f["data_dir_free_bytes"] = strconv.FormatUint(free, 10)
	}
	def, most := cfg.Limits.Defaults(), cfg.Limits.Max()
	for _, l := range []struct {
		name      string
		def, most string
	}{
		{"memory", fmtSize(def.Memory), fmtSize(most.Memory)},
		{"cpus", strconv.FormatFloat(def.CPUs, 'f', -1, 64), strconv.FormatFloat(most.CPUs, 'f', -1, 64)},
		{"pids", strconv.FormatInt(def.Pids, 10), strconv.FormatInt(most.Pids, 10)},
		{"timeout", def.Timeout.Std().String(), most.Timeout.Std().String()},
		{"disk", fmtSize(def.Disk), fmtSize(most.Disk)},
	} {
		f["limits."+l.name], f["limits."+l.name+"_max"] = l.def, l.most
	}
	for k, v := range cfg.Server.Labels {
		f["label."+k] = v
	}
	for name, dir := range cfg.HostTools {
		f["host_tool."+name] = dir
	}
	for name, c := range cfg.Caches {
		f["cache."+name] = c.Dir + " -> " + c.Target
		if c.MaxSize > 0 {
			f["cache."+name] += " (max_size " + strconv.FormatInt(int64(c.MaxSize), 10) + " bytes)"
		}
	}
	for name, h := range cfg.Hooks {
		f["hook."+name] = h.Stage + ": " + strings.Join(h.Command, " ")
	}
	offered, refused := platform.Networks(cfg)
	f["networks"] = strings.Join(append([]string{"none"}, offered...), ",")
	for mode, why := range refused {
		f["network."+mode] = "refused: " + why
	}

	pctx, cancel := context.WithTimeout(ctx, factsTimeout)
	defer cancel()
	if host == nil {
		opened, err := platform.Open(pctx, cfg)
		if err != nil {
			f["images"] = "unknown: " + err.Error()
			launcherFacts(pctx, nil, f)
			toolFacts(pctx, cfg, f)
			return f
		}
		defer opened.Close()
		host = opened
	}
	imageFacts(pctx, host, f)
	launcherFacts(pctx, host, f)
	toolFacts(pctx, cfg, f)
	// Not under factsTimeout: the first KVM probe of a boot may take
	// longer (it boots a guest), and its answer is kept for the boot.
	vmFacts(ctx, host, f)
	return f
}

// vmFacts says whether the host runs isolation = "vm" and how.
func vmFacts(ctx context.Context, host *platform.Host, f map[string]string) {
	// The launcher's tiers (launcherFacts): container, and gvisor where
	// runsc is installed; none when it could not be reached.
	isolations := Isolations(f)
	defer func() {
		f["isolations"] = strings.Join(isolations, ",")
		if len(isolations) == 0 {
			f["isolations"] = noIsolation
		}
	}()
	v, err := host.VM()
	if err != nil {
		f["vm"] = "no: " + err.Error()
		return
	}
	isolations = append(isolations, api.IsolationVM)
	accel, machine := v.Accel(ctx)
	f["vm"] = "yes"
	f["vm.kernel"] = v.Kernel()
	f["vm.machine"] = machine
	f["kvm"] = "no"
	if accel == "kvm" {
		f["kvm"] = "yes"
	}
}

// noIsolation is the "isolations" fact of a host that can run nothing.
const noIsolation = "none"

// Isolations parses the "isolations" fact of HostFacts. It is never nil:
// api.Facts tells an empty list (this host runs nothing) from none sent
// (an older worker, which runs containers).
func Isolations(facts map[string]string) []string {
	if v := facts["isolations"]; v != "" && v != noIsolation {
		return strings.Split(v, ",")
	}
	return []string{}
}

func imageFacts(ctx context.Context, host *platform.Host, f map[string]string) {
	m := host.Images()
	list, err := m.List(ctx)
	if err != nil {
		f["images"] = "unknown: " + err.Error()
		return
	}
	names := make([]string, 0, len(list))
	for _, im := range list {
		names = append(names, im.Name)
	}
	f["images"] = strings.Join(names, ",")
	for _, im := range list {
		f["image."+im.Name+".arch"] = im.Newest.Arch
		f["image."+im.Name+".os"] = im.Newest.OS
		snaps, err := m.Snapshots(ctx, im.Name)
		if err != nil {
			f["image."+im.Name+".snapshots"] = "unknown: " + err.Error()
			continue
		}
		vs := make([]string, 0, len(snaps))
		for _, s := range snaps {
			vs = append(vs, s.Version)
		}
		f["image."+im.Name+".snapshots"] = strings.Join(vs, ",")
	}
}

// parseOSRelease reads os-release(5): KEY=value lines, values optionally
// quoted.
func parseOSRelease(data []byte) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		if uq, err := strconv.Unquote(v); err == nil {
			v = uq
		} else {
			v = strings.Trim(v, `'"`)
		}
		out[k] = v
	}
	return out
}

// distroFacts sets distro and distro_version from the first os-release
// file that exists.
func distroFacts(f map[string]string, paths ...string) {
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		rel := parseOSRelease(data)
		if rel["ID"] != "" {
			f["distro"] = rel["ID"]
		}
		if rel["VERSION_ID"] != "" {
			f["distro_version"] = rel["VERSION_ID"]
		}
		return
	}
}

// fmtSize writes a limit for people; 0 is "0" (no bound).
func fmtSize(s api.Size) string {
	if s == 0 {
		return "0"
	}
	return s.String()
}
