package vm

import (
	"fmt"
	"net"
	"net/netip"
	"path"
	"strings"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/sandbox"
)

// guestInit is /init of the initramfs, run by busybox sh as the guest's
// PID 1. It loads the modules, mounts the run's control share "kiln" and
// sources /kiln/run (written by the host per run: hostname, the shares to
// mount under /root, the job's command line), sends the job's exit code
// on the virtio-serial port named kiln.exit (the control share is
// read-only), and reboots, which ends qemu (-no-reboot). A kernel
// command line with kiln.probe only says it booted: the KVM probe.
//
// Nothing here may print on the console except on failure: the console is
// the job's.
const guestInit = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /root /kiln /tmp
/bin/busybox mount -t proc proc /proc
case " $(/bin/busybox cat /proc/cmdline) " in
*" kiln.probe "*) echo kiln-probe-ok; /bin/busybox reboot -f ;;
esac
/bin/busybox --install -s /bin
export PATH=/bin
exitport=/dev/null
# report sends the status on the exit port and waits (bounded) for the
# host's ack: the write returns before qemu has the bytes.
report() { { echo "$1" >&3; timeout 10 head -c 1 <&3 >/dev/null; } 3<>"$exitport" 2>/dev/null; }
fail() { echo "kiln-init: $*" >&2; report 125; sync; echo 0 >/proc/sys/kernel/printk; reboot -f; }
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mmio=
for w in $(cat /proc/cmdline); do
	case $w in virtio_mmio.device=*) mmio="$mmio device=${w#virtio_mmio.device=}" ;; esac
done
while read -r m; do
	case $m in
	*/virtio_mmio.ko) insmod "/modules/$m" $mmio ;;
	*) insmod "/modules/$m" ;;
	esac || fail "insmod $m"
done </modules/order
for p in /sys/class/virtio-ports/*; do
	[ "$(cat "$p/name" 2>/dev/null)" = kiln.exit ] && exitport=/dev/${p##*/}
done
[ "$exitport" != /dev/null ] || fail "no exit port"
# The job's output reaches the host as written: no \r before each \n.
stty -onlcr </dev/console 2>/dev/null
p9=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o $p9 kiln /kiln || fail "mount control share"
mount -t 9p -o $p9,posixacl root /root || fail "mount root"
ip link set lo up 2>/dev/null
. /kiln/run
sync
report "$rc"
echo 0 >/proc/sys/kernel/printk
umount -a -r 2>/dev/null
reboot -f
`

// guestRun is the /kiln/run of one run: sourced by guestInit, it mounts
// the shares, sets the hostname, configures the NIC when nic is not nil,
// and runs the job chrooted into the clone with exactly spec.Env, leaving
// its status in rc.
func guestRun(spec sandbox.Spec, nic *guestNIC) (string, error) {
	var b strings.Builder
	b.WriteString("hostname " + shq(spec.Hostname) + "\n")
	// The kernel's file systems, as a container gets them.
	b.WriteString(`for d in proc sys dev tmp; do mkdir -p /root/$d; done
mount -t proc proc /root/proc || fail "mount /proc"
mount -t sysfs sys /root/sys
mount -t devtmpfs dev /root/dev
mkdir -p /root/dev/pts /root/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /root/dev/pts
mount -t tmpfs shm /root/dev/shm
`)
	for i, m := range spec.Mounts {
		if !path.IsAbs(m.Target) || path.Clean(m.Target) != m.Target || m.Target == "/" {
			return "", fmt.Errorf("mount target %q: %w", m.Target, errdefs.ErrInvalid)
		}
		opts := "trans=virtio,version=9p2000.L,msize=262144"
		if m.ReadOnly {
			opts += ",ro"
		}
		t := shq("/root" + m.Target)
		fmt.Fprintf(&b, "mkdir -p %s && mount -t 9p -o %s m%d %s || fail %s\n", t, opts, i, t, shq("mount "+m.Target))
	}
	if nic != nil {
		b.WriteString(nic.script())
	}
	b.WriteString("env -i")
	for _, e := range spec.Env {
		b.WriteString(" " + shq(e))
	}
	b.WriteString(` chroot /root /bin/sh -c 'cd -- "$1" || exit 125; shift; exec "$@"' kiln-cd ` + shq(spec.Cwd))
	for _, a := range spec.Args {
		b.WriteString(" " + shq(a))
	}
	// The job runs in the background so that an ACPI power button press
	// (QMP system_powerdown: a timeout or cancel) reaches it as SIGTERM,
	// as a container's init would get it; any byte from an input device
	// is such a press, the guest has no other input.
	b.WriteString(` </dev/null >/dev/console 2>&1 &
job=$!
for e in /dev/input/event*; do
	[ -e "$e" ] && { head -c 1 "$e" >/dev/null && kill -TERM "$job"; } 2>/dev/null &
done
wait "$job"; rc=$?
`)
	return b.String(), nil
}

// shq quotes s for sh.
func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// guestNIC is what the guest needs to take over the veth.
type guestNIC struct {
	mac    net.HardwareAddr
	addr   netip.Addr
	mtu    int
	routes []guestRoute // gateway-less ones first
	resolv []byte       // the run's resolv.conf
}

// script configures the guest's NIC as the veth it stands for was (the
// kernel has no ip= autoconfiguration in Debian's build): IPv4 only, as
// in a container; the address as a /32, reached through the routes; and
// the run's resolv.conf mounted read-only over the clone's, where a
// symlink or a missing file is replaced first (the clone is the run's).
func (n *guestNIC) script() string {
	var b strings.Builder
	b.WriteString(`for k in all default; do echo 1 >/proc/sys/net/ipv6/conf/$k/disable_ipv6; done
[ -e /sys/class/net/eth0 ] || fail "network: the guest has no eth0"
`)
	fmt.Fprintf(&b, "ip link set eth0 mtu %d up || fail 'network: eth0 up'\n", n.mtu)
	fmt.Fprintf(&b, "ip addr add %s/32 dev eth0 || fail 'network: address'\n", n.addr)
	for _, r := range n.routes {
		via := ""
		if r.via.IsValid() {
			via = " via " + r.via.String()
		}
		fmt.Fprintf(&b, "ip route add %s%s dev eth0 || fail %s\n", r.dst, via, shq("network: route "+r.dst+via))
	}
	fmt.Fprintf(&b, "printf '%%s' %s >/resolv.conf\n", shq(string(n.resolv)))
	b.WriteString(`r=/root/etc/resolv.conf
mkdir -p /root/etc
if [ -L "$r" ] || [ ! -f "$r" ]; then rm -rf "$r"; : >"$r"; fi
mount --bind /resolv.conf "$r" && mount -o remount,bind,ro "$r" || fail "mount /etc/resolv.conf"
`)
	return b.String()
}

// guestRoute is one IPv4 route of the veth: dst "default" or a prefix,
// via a gateway or none (on the link).
type guestRoute struct {
	dst string
	via netip.Addr
}
