// Package treestore is kiln's storage backend of directory trees (Linux):
// a sandbox.Backend whose snapshots are plain trees and whose clones are
// writable copies of them, either overlayfs mounts over the snapshot
// (Overlay) or btrfs subvolume snapshots (Btrfs). The zfsstore package is
// its sibling for ZFS. On other systems the package is empty.
package treestore
