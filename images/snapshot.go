package images

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/kiln-build/kiln/internal/durable"
)

// Unknown fills the fields of a snapshot whose metadata file is missing (a
// snapshot made outside kiln image, or metadata lost); such a snapshot is
// still listed and usable, only less described.
const Unknown = "unknown"

// Snapshot is one read-only, versioned state of an image and what is known
// about how it was made. It is also the metadata file's format.
type Snapshot struct {
	Name    string `json:"name"`
	Version string `json:"version"` // sortable UTC timestamp, 20261121T120000Z
	Arch    string `json:"arch"`    // canonical (Debian) name: amd64, arm64, ...
	OS      string `json:"os"`      // linux | freebsd
	Method  string `json:"method"`  // busybox | debootstrap | tar | dir | freebsd
	// Source is the method's argument: the tarball or tree of tar=/dir=.
	Source string `json:"source,omitempty"`
	// MethodVersion is the -v of the method: the suite for debootstrap, the
	// release for freebsd.
	MethodVersion string    `json:"method_version,omitempty"`
	Packages      []string  `json:"packages,omitempty"`
	Created       time.Time `json:"created"`
	Size          int64     `json:"size"`             // bytes used by the tree when committed
	Parent        string    `json:"parent,omitempty"` // version this one was updated from
	// Fleet and TarDigest are set on a snapshot of a server-held image
	// version (fleet.go): its NAME@VERSION on the server and the digest of
	// its tar.
	Fleet     string `json:"fleet,omitempty"`
	TarDigest string `json:"tar_digest,omitempty"`
}

// Ref returns "name@version", what Storage.Clone takes.
func (s Snapshot) Ref() string { return s.Name + "@" + s.Version }

// Image is one image with its newest snapshot.
type Image struct {
	Name      string   `json:"name"`
	Newest    Snapshot `json:"newest"`
	Snapshots int      `json:"snapshots"`
}

// versionLayout is a snapshot version: sortable as a string, UTC, one-second
// resolution (nextVersion keeps two versions of one image apart).
const versionLayout = "20060102T150405Z"

// nextVersion returns the version for a snapshot committed at now after
// newest (the image's newest version, "" for none). Within the same second
// as newest, or when the clock went back, it takes newest plus one second:
// versions stay unique and ordered without waiting, and Created keeps the
// true time.
func nextVersion(now time.Time, newest string) string {
	v := now.UTC().Truncate(time.Second)
	if t, err := time.Parse(versionLayout, newest); err == nil && !v.After(t) {
		v = t.Add(time.Second)
	}
	return v.Format(versionLayout)
}

func (m *Manager) metaPath(name, version string) string {
	return filepath.Join(m.metaDir, name, version+".json")
}

// readMeta returns the metadata of name@version, or ok=false when there is none.
func (m *Manager) readMeta(name, version string) (Snapshot, bool, error) {
	data, err := os.ReadFile(m.metaPath(name, version))
	if errors.Is(err, fs.ErrNotExist) {
		return Snapshot{}, false, nil
	}
	if err != nil {
		return Snapshot{}, false, err
	}
	var s Snapshot
	if err := json.Unmarshal(data, &s); err != nil {
		return Snapshot{}, false, fmt.Errorf("metadata %s: %w", m.metaPath(name, version), err)
	}
	s.Name, s.Version = name, version
	return s, true, nil
}

// writeMeta writes the metadata durably (internal/durable).
func (m *Manager) writeMeta(s Snapshot) error {
	p := m.metaPath(s.Name, s.Version)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return durable.WriteFile(p, append(data, '\n'), 0o600)
}

// removeStaleMeta deletes metadata files of name that no committed
// snapshot has (left by a build killed between writing them and Commit).
func (m *Manager) removeStaleMeta(name string, versions []string) {
	keep := map[string]bool{}
	for _, v := range versions {
		keep[v+".json"] = true
	}
	ents, _ := os.ReadDir(filepath.Join(m.metaDir, name))
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".json") && !keep[e.Name()] || strings.HasPrefix(e.Name(), ".meta-") {
			_ = os.Remove(filepath.Join(m.metaDir, name, e.Name()))
		}
	}
}

// treeSize is the disk space a tree uses (du-like: blocks, hard links once).
func treeSize(root string) int64 {
	var total int64
	seen := map[uint64]bool{}
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			total += fi.Size()
			return nil
		}
		if st.Nlink > 1 {
			if seen[uint64(st.Ino)] {
				return nil
			}
			seen[uint64(st.Ino)] = true
		}
		total += int64(st.Blocks) * 512
		return nil
	})
	return total
}
