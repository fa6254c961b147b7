// Package linux holds kiln's Linux-only container tier: the containerd
// launcher (a run's clone becomes a runc container). Storage is in
// linux/treestore, bridge networking in linux/netcni. On other systems the
// package is empty.
package linux
