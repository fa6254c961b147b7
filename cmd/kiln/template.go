package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/debsrc"
	"github.com/kiln-build/kiln/names"
)

func newJobTemplateCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "template",
		Short: "Print ready-made job files",
	}
	cmd.AddCommand(newDebianSourceTemplateCmd())
	return cmd
}

func newDebianSourceTemplateCmd() *cobra.Command {
	var o struct {
		image, arch, name, keyring string
		reproduce                  int
	}
	cmd := &cobra.Command{
		Use:   "debian-source FILE.dsc --image IMG",
		Short: "Print a job that builds a Debian source package's binary packages",
		Long: `Print a job file that builds the binary packages of a Debian source package.

The .dsc (clearsigned or not) and every file its Checksums-Sha256 field names
must be in the .dsc's directory with the right size and sha256; otherwise
nothing is printed and the error names the file and both checksums. With
--keyring, the .dsc's signature must verify against that keyring (gpgv).

The job's inputs are the .dsc and its files, with their sha256s. Its script
installs the build dependencies with apt (so the job has network = "bridge" and
the image must have apt sources), builds with dpkg-buildpackage -b -us -uc,
and leaves the .deb, .udeb, .buildinfo and .changes files in /out. Give the
files with --input when adding or running it:

  kiln job template debian-source hello_2.10-3.dsc --image bookworm > hello.toml
  kiln exec hello.toml --input hello_2.10-3.dsc --input hello_2.10.orig.tar.gz ...`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			j, err := debianSourceJob(cmd, args[0], o.image, o.arch, o.name, o.keyring, o.reproduce)
			if err != nil {
				return err
			}
			out := renderDebianSourceJob(filepath.Base(args[0]), j)
			// What is printed must be a job file kiln takes as it is.
			if _, err := api.ParseJobFile([]byte(out)); err != nil {
				return fmt.Errorf("internal error: the template is not a valid job: %w", err)
			}
			_, err = io.WriteString(cmd.OutOrStdout(), out)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.image, "image", "", "image to build in (a Debian image with apt sources; required)")
	f.StringVar(&o.arch, "arch", "", "architecture to build for (default: the image's)")
	f.StringVar(&o.name, "name", "", "job name (default: <source>-<version>, made a valid name)")
	f.StringVar(&o.keyring, "keyring", "", "OpenPGP keyring the .dsc's signature must verify against")
	f.IntVar(&o.reproduce, "reproduce", 0, "build on N hosts and compare (0 or 2-16)")
	_ = cmd.MarkFlagRequired("image")
	return cmd
}

func debianSourceJob(cmd *cobra.Command, dscPath, image, arch, name, keyring string, reproduce int) (*api.Job, error) {
	data, err := os.ReadFile(dscPath)
	if err != nil {
		return nil, err
	}
	d, err := debsrc.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dscPath, err)
	}
	if keyring != "" {
		if err := debsrc.VerifySignature(cmd.Context(), dscPath, keyring); err != nil {
			return nil, err
		}
	}
	if err := debsrc.Verify(filepath.Dir(dscPath), d); err != nil {
		return nil, err
	}
	dscName := filepath.Base(dscPath)
	if !names.Valid(dscName) {
		return nil, fmt.Errorf("%s: the .dsc's file name is not a plain name", dscPath)
	}
	dscSum, _, err := api.HashFile(dscPath)
	if err != nil {
		return nil, err
	}
	if name == "" {
		name = jobNameFrom(d.Source + "-" + d.Version)
	}
	j := &api.Job{
		Name:      name,
		Image:     image,
		Arch:      arch,
		Reproduce: reproduce,
		Timeout:   api.Duration(4 * time.Hour),
		Script:    debianSourceScript(dscName),
		Artifacts: []string{"*.deb", "*.udeb", "*.buildinfo", "*.changes"},
		Inputs:    []api.Input{{Path: dscName, SHA256: dscSum}},
	}
	j.Resources.Network = api.NetworkBridge
	for _, f := range d.Files {
		j.Inputs = append(j.Inputs, api.Input{Path: f.Name, SHA256: f.SHA256})
	}
	if err := j.Validate(); err != nil {
		return nil, err
	}
	return j, nil
}

var nameUnsafe = regexp.MustCompile(`[^a-zA-Z0-9._-]+`)

// jobNameFrom makes "hello-2.10-3" of a source and version (epochs' ':'
// and '+' and '~' become '-'), cut to a valid name's length.
func jobNameFrom(s string) string {
	s = strings.Trim(nameUnsafe.ReplaceAllString(s, "-"), "-.")
	s = strings.ReplaceAll(s, "..", ".")
	if len(s) > 63 {
		s = strings.TrimRight(s[:63], "-.")
	}
	return s
}

// renderDebianSourceJob writes j as a readable job file: the script as a
// multi-line string, and only the keys the template sets.
func renderDebianSourceJob(dsc string, j *api.Job) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Built from %s by `kiln job template debian-source`. Add or run it with:\n", dsc)
	fmt.Fprintf(&b, "#   kiln job add FILE %s\n", inputFlags(j))
	fmt.Fprintf(&b, "name = %q\nimage = %q\n", j.Name, j.Image)
	if j.Arch != "" {
		fmt.Fprintf(&b, "arch = %q\n", j.Arch)
	}
	if j.Reproduce > 0 {
		fmt.Fprintf(&b, "reproduce = %d\n", j.Reproduce)
	}
	fmt.Fprintf(&b, "timeout = %q\n", j.Timeout.Std().String())
	fmt.Fprintf(&b, "artifacts = [%s]\n", quoteList(j.Artifacts))
	fmt.Fprintf(&b, "script = %s\n", tomlMultiline(j.Script))
	b.WriteString("\n[resources]\nnetwork = \"bridge\" # apt fetches the build dependencies\n")
	for _, in := range j.Inputs {
		fmt.Fprintf(&b, "\n[[inputs]]\npath = %q\nsha256 = %q\n", in.Path, in.SHA256)
	}
	return b.String()
}

func quoteList(l []string) string {
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}

func inputFlags(j *api.Job) string {
	var b strings.Builder
	for i, in := range j.Inputs {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString("--input " + in.Path)
	}
	return b.String()
}

// debianSourceScript builds dsc from /in: the build dependencies come from
// apt, the packages go to /out. Unpacking needs dpkg-dev, which apt-get
// build-dep would bring only after the unpack, so it is installed first.
func debianSourceScript(dsc string) string {
	return fmt.Sprintf(`set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends dpkg-dev
dpkg-source -x /in/%s /work/src
cd /work/src
apt-get build-dep -y -q ./
dpkg-buildpackage -b -us -uc
find /work -maxdepth 1 -type f \( -name '*.deb' -o -name '*.udeb' -o -name '*.buildinfo' -o -name '*.changes' \) -exec cp {} /out/ \;
`, dsc)
}

// tomlMultiline writes s as a TOML multi-line literal string; the scripts
// the templates make never hold three single quotes.
func tomlMultiline(s string) string { return "'''\n" + s + "'''" }
