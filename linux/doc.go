// Package linux is kiln's container tier on Linux: the containerd launcher,
// which runs each run's clone as a runc or gVisor container. Its files go
// by concern:
//
//   - the launcher: containerd_linux.go (Start), create_linux.go (the
//     phases of a start over one undo stack, internal/cleanup), attach_linux.go,
//     reap_linux.go, sandbox_linux.go (a started container);
//   - the runtimes: runtime_linux.go (what differs between runc and runsc),
//     gvisor_linux.go;
//   - the OCI spec, as pure functions: spec_linux.go, harden_linux.go;
//   - tasks and shims: task_linux.go, shim_linux.go, shimtask_linux.go,
//     warm_linux.go;
//   - user namespaces, set up and undone together: userns_linux.go,
//     idranges_linux.go, idmapoverlay_linux.go;
//   - seccomp: seccompinit_linux.go.
//
// Storage is in linux/treestore, bridge networking in linux/netcni. On
// other systems the package is empty.
package linux
