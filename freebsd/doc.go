// Package freebsd is kiln's FreeBSD jail launcher: each run becomes a
// persistent jail made from a generated jail.conf (path = the run's ZFS
// clone, no network unless asked, a devfs ruleset, enforce_statfs = 2, no
// child jails, nullfs mounts for /in, /out, /work and /host), limited with
// rctl(8) when racct is enabled, its job started with jexec(8), and removed
// with jail -r. It also reports FreeBSD host facts.
//
// What is verified where: FreeBSD cannot run on kiln's Linux CI machines.
// The pure code (conf.go, facts.go: jail.conf text, rctl rules, every
// jail/jexec/rctl argv, jls and zpool output parsing, run id recovery) is
// unit-tested on Linux against the golden files in testdata (go test
// -update rewrites them). The code that executes those commands
// (jail_freebsd.go: NewJails, Start, Wait, Signal, Kill, Delete, Reap;
// facts_freebsd.go: Facts) is only cross-compiled and vetted with
// GOOS=freebsd; it has not run on a FreeBSD host in CI.
package freebsd
