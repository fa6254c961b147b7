package aptrepo

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ulikunitz/xz"
)

// Repo describes one repository's distribution: dists/SUITE with its
// components and architectures.
type Repo struct {
	Name       string // Label and Origin's suffix
	Suite      string
	Components []string
	Arches     []string
}

// Entry is one package in the repository: where its file is and what it
// hashes to.
type Entry struct {
	Package   *Package
	Component string
	Filename  string // PoolPath
	Size      int64
	SHA256    string
}

// File is one index file of a publication, by its path under the
// repository's root (dists/SUITE/...).
type File struct {
	Path string
	Data []byte
}

// Index writes the unsigned index files of r holding entries: for every
// component and architecture Packages, Packages.gz and Packages.xz (a
// package of architecture "all" is listed under each), then
// dists/SUITE/Release naming their sizes and SHA256 digests. The output
// depends only on its arguments (entries in any order), so that the same
// content and date publish the same bytes.
func Index(r Repo, entries []Entry, date time.Time) ([]File, error) {
	entries = slices.Clone(entries)
	slices.SortFunc(entries, func(a, b Entry) int {
		return strings.Compare(a.Filename, b.Filename)
	})
	var files []File
	for _, comp := range r.Components {
		for _, arch := range r.Arches {
			var plain bytes.Buffer
			for _, e := range entries {
				if e.Component != comp || (e.Package.Arch != arch && e.Package.Arch != "all") {
					continue
				}
				if plain.Len() > 0 {
					plain.WriteByte('\n')
				}
				plain.Write(e.Package.Paragraph(e.Filename, e.Size, e.SHA256))
			}
			dir := comp + "/binary-" + arch + "/"
			gz, err := gzipBytes(plain.Bytes())
			if err != nil {
				return nil, err
			}
			xzb, err := xzBytes(plain.Bytes())
			if err != nil {
				return nil, err
			}
			rel := fmt.Sprintf("Archive: %s\nComponent: %s\nOrigin: kiln %s\nLabel: %s\nArchitecture: %s\n", r.Suite, comp, r.Name, r.Name, arch)
			files = append(files,
				File{Path: dir + "Packages", Data: plain.Bytes()},
				File{Path: dir + "Packages.gz", Data: gz},
				File{Path: dir + "Packages.xz", Data: xzb},
				File{Path: dir + "Release", Data: []byte(rel)})
		}
	}
	var rel bytes.Buffer
	fmt.Fprintf(&rel, "Origin: kiln %s\nLabel: %s\nSuite: %s\nCodename: %s\nDate: %s\nArchitectures: %s\nComponents: %s\nAcquire-By-Hash: yes\nSHA256:\n",
		r.Name, r.Name, r.Suite, r.Suite, date.UTC().Format(time.RFC1123), strings.Join(r.Arches, " "), strings.Join(r.Components, " "))
	for _, f := range files {
		sum := sha256.Sum256(f.Data)
		fmt.Fprintf(&rel, " %s %d %s\n", hex.EncodeToString(sum[:]), len(f.Data), f.Path)
	}
	prefix := "dists/" + r.Suite + "/"
	for i := range files {
		files[i].Path = prefix + files[i].Path
	}
	return append(files, File{Path: prefix + "Release", Data: rel.Bytes()}), nil
}

func gzipBytes(b []byte) ([]byte, error) {
	var out bytes.Buffer
	w, err := gzip.NewWriterLevel(&out, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	// No name nor time in the header: the same Packages, the same bytes.
	if _, err := w.Write(b); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

func xzBytes(b []byte) ([]byte, error) {
	var out bytes.Buffer
	// A 1 MiB dictionary: a Packages index compresses as well (its
	// repeats are near each other), and the default 8 MiB made every
	// publication allocate about 100 MB.
	w, err := xz.WriterConfig{DictCap: 1 << 20}.NewWriter(&out)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(b); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// ByHashPath is the Acquire-By-Hash path of an index file: apt fetches
// dists/SUITE/COMP/binary-ARCH/by-hash/SHA256/<digest> so that a reader
// who got the old Release while the new one was published still finds
// the index files it names.
func ByHashPath(path, sha256 string) string {
	dir := path[:strings.LastIndexByte(path, '/')+1]
	return dir + "by-hash/SHA256/" + sha256
}
