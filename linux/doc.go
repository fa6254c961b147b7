// Package linux holds kiln's Linux-only sandbox parts: the containerd
// launcher (a run's clone becomes a runc container) and the btrfs and
// overlay storage backends. On other systems the package is empty.
package linux
