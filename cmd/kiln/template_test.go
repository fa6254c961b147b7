package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/debsrc"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// sourcePackage makes a tiny native Debian source package with dpkg-source
// -b and returns the .dsc's path.
func sourcePackage(t *testing.T) string {
	t.Helper()
	testsupport.NeedCommand(t, "dpkg-source")
	dir := t.TempDir()
	src := filepath.Join(dir, "hello-kiln-1.0")
	files := map[string]string{
		"debian/source/format": "3.0 (native)\n",
		"debian/control": `Source: hello-kiln
Section: misc
Priority: optional
Maintainer: kiln tests <tests@kiln.invalid>
Build-Depends: debhelper-compat (= 13)
Standards-Version: 4.6.2

Package: hello-kiln
Architecture: all
Description: kiln test package
 A tiny package built by kiln's tests.
`,
		"debian/changelog": `hello-kiln (1.0) unstable; urgency=medium

  * Initial release.

 -- kiln tests <tests@kiln.invalid>  Fri, 27 Nov 2026 12:00:00 +0000
`,
		"debian/rules":   "#!/usr/bin/make -f\n%:\n\tdh $@\n",
		"debian/install": "hello.txt usr/share/hello-kiln\n",
		"hello.txt":      "hello from kiln\n",
	}
	for name, body := range files {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if name == "debian/rules" {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("dpkg-source", "-b", "hello-kiln-1.0")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("dpkg-source -b: %v\n%s", err, out)
	}
	return filepath.Join(dir, "hello-kiln_1.0.dsc")
}

// kilnCmd runs the CLI in this process.
func kilnCmd(t *testing.T, args ...string) (stdout string, err error) {
	t.Helper()
	root := newRoot(&globals{})
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err = root.Execute()
	return out.String(), err
}

func TestDebianSourceTemplate(t *testing.T) {
	dsc := sourcePackage(t)
	dir := filepath.Dir(dsc)
	tarball := filepath.Join(dir, "hello-kiln_1.0.tar.xz")

	out, err := kilnCmd(t, "job", "template", "debian-source", dsc, "--image", "bookworm", "--reproduce", "2")
	if err != nil {
		t.Fatal(err)
	}
	j, err := api.ParseJobFile([]byte(out))
	if err != nil {
		t.Fatalf("template is not a valid job: %v\n%s", err, out)
	}
	dscSum, _, _ := api.HashFile(dsc)
	tarSum, _, _ := api.HashFile(tarball)
	want := []api.Input{{Path: "hello-kiln_1.0.dsc", SHA256: dscSum}, {Path: "hello-kiln_1.0.tar.xz", SHA256: tarSum}}
	if j.Name != "hello-kiln-1.0" || j.Image != "bookworm" || j.Reproduce != 2 || len(j.Inputs) != 2 || j.Inputs[0] != want[0] || j.Inputs[1] != want[1] {
		t.Fatalf("job: %+v", j)
	}
	for _, s := range []string{"dpkg-source -x /in/hello-kiln_1.0.dsc", "apt-get build-dep", "dpkg-buildpackage -b -us -uc"} {
		if !strings.Contains(j.Script, s) {
			t.Errorf("script lacks %q:\n%s", s, j.Script)
		}
	}

	t.Run("tampered tarball refused, the same way twice", func(t *testing.T) {
		orig, _ := os.ReadFile(tarball)
		t.Cleanup(func() { os.WriteFile(tarball, orig, 0o644) })
		bad := append([]byte{}, orig...)
		bad[len(bad)/2] ^= 0xff
		if err := os.WriteFile(tarball, bad, 0o644); err != nil {
			t.Fatal(err)
		}
		var msgs []string
		for i := 0; i < 2; i++ {
			out, err := kilnCmd(t, "job", "template", "debian-source", dsc, "--image", "bookworm")
			if !errors.Is(err, debsrc.ErrMismatch) || out != "" {
				t.Fatalf("try %d: err %v, printed %q", i, err, out)
			}
			msgs = append(msgs, err.Error())
		}
		badSum, _, _ := api.HashFile(tarball)
		for _, s := range []string{"hello-kiln_1.0.tar.xz", tarSum, badSum} {
			if !strings.Contains(msgs[0], s) {
				t.Errorf("error %q does not name %s", msgs[0], s)
			}
		}
		if msgs[0] != msgs[1] {
			t.Errorf("second refusal differs:\n%s\n%s", msgs[0], msgs[1])
		}
	})
	t.Run("missing file refused", func(t *testing.T) {
		moved := tarball + ".away"
		if err := os.Rename(tarball, moved); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Rename(moved, tarball) })
		if _, err := kilnCmd(t, "job", "template", "debian-source", dsc, "--image", "bookworm"); !errors.Is(err, debsrc.ErrMissing) || !strings.Contains(err.Error(), "hello-kiln_1.0.tar.xz") {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("clearsigned, with and without the right keyring", func(t *testing.T) {
		testsupport.NeedCommand(t, "gpg")
		gnupg := t.TempDir()
		gpg := func(args ...string) []byte {
			t.Helper()
			cmd := exec.Command("gpg", append([]string{"--batch", "--homedir", gnupg, "--pinentry-mode", "loopback", "--passphrase", ""}, args...)...)
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("gpg %v: %v", args, err)
			}
			return out
		}
		gpg("--quick-gen-key", "kiln-test@kiln.invalid", "ed25519", "sign", "never")
		keyring := filepath.Join(t.TempDir(), "keyring.gpg")
		if err := os.WriteFile(keyring, gpg("--export", "kiln-test@kiln.invalid"), 0o644); err != nil {
			t.Fatal(err)
		}
		signed := filepath.Join(dir, "signed.dsc")
		gpg("--output", signed, "--clearsign", dsc)
		out, err := kilnCmd(t, "job", "template", "debian-source", signed, "--image", "bookworm", "--keyring", keyring)
		if err != nil {
			t.Fatal(err)
		}
		if j, err := api.ParseJobFile([]byte(out)); err != nil || len(j.Inputs) != 2 || j.Inputs[1] != want[1] {
			t.Fatalf("clearsigned template: %v %+v", err, j)
		}
		other := filepath.Join(t.TempDir(), "empty.gpg")
		os.WriteFile(other, nil, 0o644)
		if _, err := kilnCmd(t, "job", "template", "debian-source", signed, "--image", "bookworm", "--keyring", other); !errors.Is(err, debsrc.ErrBadSignature) {
			t.Fatalf("wrong keyring: %v", err)
		}
	})
}
