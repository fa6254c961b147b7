// Command kiln-sandbox-init is the first process of a container-tier
// sandbox. It installs the seccomp filter the worker compiled once for the
// sandbox's profile, then execs the job's own command, so runc does not
// compile the same allow-list with libseccomp in every container.
//
//	kiln-sandbox-init [--personality FLAGS] FILTER PROGRAM [ARG...]
//	kiln-sandbox-init --probe
//
// FILTER is a file of struct sock_filter (a classic BPF program, 8 bytes an
// instruction, host byte order). It is installed with no flags; the
// sandbox must already have no_new_privs set (runc sets it from the spec).
// PROGRAM without a slash is looked up in PATH, as runc does. Nothing of
// the job runs before the filter is in place; when it cannot be installed,
// nothing of the job runs at all (exit 126). A PROGRAM that cannot be run
// exits 127 (126 when it exists but is not executable), as a shell's does.
//
// --personality sets personality(2) flags before the filter is installed
// (the filter refuses them to the job): ADDR_NO_RANDOMIZE (0x40000),
// UNAME26 (0x20000) or both, the reproduce variations aslr and kernel.
// They take effect at the exec of PROGRAM and are inherited by what it
// runs. Any other flag is refused (exit 126, nothing runs).
//
// --probe is how the worker learns the filter runc builds from a profile:
// the worker starts it in a throw-away runc container with that profile,
// and reads the filter from the kernel while it waits. It writes "ready\n"
// to standard output and waits for standard input to close.
//
// The worker mounts this binary into every sandbox, so it is built
// static (it is, as long as it imports nothing that needs cgo) and linked
// into nothing else. docs/security.md describes the contract.
package main
