// Package idmap makes user namespaces that exist only to describe an id
// mapping, and idmapped mounts through them (open_tree, mount_setattr with
// MOUNT_ATTR_IDMAP): a tree whose files the host stores as uid k appears,
// on the mount, as uid base+k, so a process whose ids are mapped onto
// base.. (in a user namespace of its own with the same mapping) sees the
// tree's real owners and acts on it with its namespaced capabilities,
// while on the host it is an unprivileged id.
//
// Linux only (kernel 5.12+, and a file system that supports idmapped
// mounts).
package idmap
