package vm

import (
	"os"
	"strconv"
	"strings"
)

// kernelCmdline keeps the console for the job (quiet, loglevel=1: only
// emergencies) and turns a panic into a reboot, which ends qemu
// (-no-reboot) instead of leaving a hung guest. The rest spares the boot
// work a throwaway guest does not need; each item is measured in
// docs/benchmarks.md: no crypto self-tests, no delay-loop calibration,
// no W+X page-table walk (rodata=off), no i8042 probing.
func kernelCmdline(machine, accel string) string {
	c := plainCmdline +
		" cryptomgr.notests mitigations=off nokaslr tsc=reliable no_timer_check lpj=4000000" +
		" i8042.noaux i8042.nokbd i8042.nopnp random.trust_cpu=on rodata=off"
	if machine == "microvm" {
		c += " pci=off"
		if accel == "tcg" {
			// microvm has no HPET or PM timer to calibrate the TSC
			// against; under TCG the guest's TSC is the host's.
			c += " tsc_early_khz=" + strconv.Itoa(hostTSCkHz())
		}
	}
	return c
}

// plainCmdline is what kiln cannot do without.
const plainCmdline = "console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init"

// hostTSCkHz is the host CPU's clock from /proc/cpuinfo, or 2 GHz.
func hostTSCkHz() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && f > 0 {
				return int(f * 1000)
			}
		}
	}
	return 2_000_000
}

// machineArgs are the qemu arguments that set up the machine itself.
func machineArgs(machine, accel string, cpus int, mem int64) []string {
	args := []string{"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"}
	switch machine {
	case "microvm":
		// ACPI stays on: Debian's kernel finds virtio-mmio devices only
		// through it (no CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES).
		args = append(args, "-M", "microvm,x-option-roms=off,rtc=on")
	default:
		args = append(args, "-M", "q35")
		if _, err := os.Stat(qboot); err == nil {
			args = append(args, "-bios", qboot)
		}
	}
	if accel == "kvm" {
		args = append(args, "-accel", "kvm", "-cpu", "host")
	} else {
		// qemu64 boots a third faster than max under TCG: fewer
		// features for the kernel to set up and emulate.
		args = append(args, "-accel", "tcg,thread=multi", "-cpu", "qemu64")
	}
	return append(args, "-smp", strconv.Itoa(cpus), "-m", strconv.FormatInt(mem>>20, 10)+"M")
}

// qboot is a minimal firmware that boots a -kernel in a few ms, where
// SeaBIOS takes hundreds.
const qboot = "/usr/share/qemu/qboot.rom"

func virtioDevice(machine, kind string) string {
	if machine == "microvm" {
		return kind + "-device"
	}
	return kind + "-pci"
}

// qemuOpt escapes a value for qemu's comma-separated options.
func qemuOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// firstOpt is the first value of a qemu option string, unescaped (qemuOpt).
func firstOpt(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				i++
			} else {
				break
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
