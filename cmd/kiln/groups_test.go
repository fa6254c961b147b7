package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// runKiln runs this test binary as kiln itself (TestMain, KILN_TEST_MAIN=1),
// so that the exit code and stderr are the ones a script would see.
func runKiln(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), exe, args...)
	cmd.Env = append(os.Environ(), "KILN_TEST_MAIN=1", "KILN_SERVER=", "KILN_TOKEN=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("kiln %s: %v", strings.Join(args, " "), err)
	}
	return code, out.String(), errb.String()
}

// groupPaths lists every command group's words below root: "run",
// "host token", ...
func groupPaths(c *cobra.Command, prefix []string) [][]string {
	var out [][]string
	for _, sub := range c.Commands() {
		if !sub.HasSubCommands() {
			continue
		}
		p := append(append([]string(nil), prefix...), sub.Name())
		out = append(out, p)
		out = append(out, groupPaths(sub, p)...)
	}
	return out
}

// TestUnknownSubcommandFails: a misspelled subcommand of any command group
// exits non-zero and names the word it did not know, with a suggestion where
// one is close; a group alone still prints its help and exits 0.
func TestUnknownSubcommandFails(t *testing.T) {
	groups := groupPaths(newRoot(&globals{}), nil)
	if len(groups) < 10 {
		t.Fatalf("found only %d command groups: %v", len(groups), groups)
	}
	type tc struct {
		args    []string
		code    int    // 0: must exit 0; 1: must exit non-zero
		stderr  string // must contain
		stdout  string // must contain
		nostder bool   // stderr must be empty
	}
	cases := map[string]tc{
		"root unknown":     {args: []string{"nosuch"}, code: 1, stderr: `unknown command "nosuch" for "kiln"`},
		"run lsit":         {args: []string{"run", "lsit"}, code: 1, stderr: "Did you mean this?\n\tlist"},
		"run bisect":       {args: []string{"run", "bisect", "12"}, code: 1, stderr: `unknown command "bisect" for "kiln run"`},
		"run alone":        {args: []string{"run"}, code: 0, stdout: "kiln run [command]", nostder: true},
		"host token alone": {args: []string{"host", "token"}, code: 0, stdout: "kiln host token [command]", nostder: true},
	}
	for _, g := range groups {
		path := strings.Join(g, " ")
		cases[path+" nosuch"] = tc{
			args:   append(append([]string(nil), g...), "nosuch"),
			code:   1,
			stderr: `unknown command "nosuch" for "kiln ` + path + `"`,
		}
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			code, stdout, stderr := runKiln(t, c.args...)
			if (code != 0) != (c.code != 0) {
				t.Errorf("exit code %d, want %s; stderr:\n%s", code, map[bool]string{true: "non-zero", false: "0"}[c.code != 0], stderr)
			}
			if !strings.Contains(stderr, c.stderr) {
				t.Errorf("stderr %q does not contain %q", stderr, c.stderr)
			}
			if !strings.Contains(stdout, c.stdout) {
				t.Errorf("stdout %q does not contain %q", stdout, c.stdout)
			}
			if c.nostder && stderr != "" {
				t.Errorf("stderr not empty: %q", stderr)
			}
		})
	}
}
