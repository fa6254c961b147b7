package testsupport

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"
)

// Deb builds a Debian binary package in memory: control is the control
// file as given (hostile ones too, which dpkg-deb would refuse to build),
// files maps paths below / to contents (executable when the path has
// "/bin/" in it). dpkg installs what it returns.
func Deb(control string, files map[string]string) []byte {
	epoch := time.Unix(1700000000, 0)
	tgz := func(entries map[string]string, dirs bool) []byte {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		tw := tar.NewWriter(zw)
		seen := map[string]bool{}
		var dir func(d string)
		dir = func(d string) {
			if d == "." || seen[d] {
				return
			}
			dir(path.Dir(d))
			seen[d] = true
			_ = tw.WriteHeader(&tar.Header{Name: "./" + d + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: epoch, Format: tar.FormatGNU})
		}
		_ = tw.WriteHeader(&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: epoch, Format: tar.FormatGNU})
		for _, name := range slices.Sorted(func(yield func(string) bool) {
			for k := range entries {
				if !yield(k) {
					return
				}
			}
		}) {
			if dirs {
				dir(path.Dir(name))
			}
			mode := int64(0o644)
			if strings.Contains("/"+name, "/bin/") {
				mode = 0o755
			}
			_ = tw.WriteHeader(&tar.Header{Name: "./" + name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(entries[name])), ModTime: epoch, Format: tar.FormatGNU})
			_, _ = tw.Write([]byte(entries[name]))
		}
		_ = tw.Close()
		_ = zw.Close()
		return b.Bytes()
	}
	var out bytes.Buffer
	out.WriteString("!<arch>\n")
	member := func(name string, data []byte) {
		fmt.Fprintf(&out, "%-16s%-12d%-6d%-6d%-8s%-10d`\n", name, epoch.Unix(), 0, 0, "100644", len(data))
		out.Write(data)
		if len(data)%2 == 1 {
			out.WriteByte('\n')
		}
	}
	member("debian-binary", []byte("2.0\n"))
	member("control.tar.gz", tgz(map[string]string{"control": control}, false))
	member("data.tar.gz", tgz(files, true))
	return out.Bytes()
}
