// Command zfsadapter stands in for zfs(8) in kiln's tests, so go-zfs (which
// speaks current OpenZFS) can drive zfs-fuse 0.7 (which speaks an older
// dialect). testsupport.ZFS builds it as "zfs", puts it first on PATH and
// tells it where the real tool is in $KILN_ZFS_REAL.
//
// It translates exactly these differences, and passes every other command
// line to the real zfs unchanged (same arguments, stdin, stdout, stderr and
// exit status):
//
//   - `zfs list` with -p (alone or in a flag cluster such as -Hp, -rHp):
//     zfs-fuse's list has no -p. The adapter lists the datasets' names with
//     the real `zfs list` (same -r, -d, -t, -s, -S flags and operands, minus
//     -p), then reads the requested -o properties with
//     `zfs get -Hp -o name,property,value`, which prints exact numbers on
//     zfs-fuse, and prints them as `zfs list -Hp` would: tab-separated, one
//     line per dataset, in list order.
//   - the properties `written` and `logicalused` in a `zfs list -o` list:
//     zfs-fuse has neither; the adapter prints "-" (unknown) for them, which
//     go-zfs reads as 0.
//   - `-o sync=VALUE` on `zfs create` and `zfs clone`: zfs-fuse has no sync
//     property; the adapter drops the option.
package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
)

func main() {
	realZFS := os.Getenv("KILN_ZFS_REAL")
	if realZFS == "" {
		fmt.Fprintln(os.Stderr, "zfsadapter: KILN_ZFS_REAL is not set")
		os.Exit(2)
	}
	args := os.Args[1:]
	if len(args) > 0 {
		switch args[0] {
		case "list":
			if translated, ok := list(realZFS, args[1:]); ok {
				os.Exit(translated)
			}
		case "create", "clone":
			args = dropSync(args)
		}
	}
	if err := syscall.Exec(realZFS, append([]string{realZFS}, args...), os.Environ()); err != nil {
		fmt.Fprintln(os.Stderr, "zfsadapter:", err)
		os.Exit(2)
	}
}

// unsupported are properties zfs-fuse's list does not know.
var unsupported = map[string]bool{"written": true, "logicalused": true}

// dropSync removes "-o sync=..." (and "-osync=...") from args.
func dropSync(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		switch {
		case args[i] == "-o" && i+1 < len(args) && strings.HasPrefix(args[i+1], "sync="):
			i++
		case strings.HasPrefix(args[i], "-osync="):
		default:
			out = append(out, args[i])
		}
	}
	return out
}

// list handles `zfs list ARGS` if it needs translating; ok is false when
// the real zfs can run it as it is.
func list(realZFS string, args []string) (exit int, ok bool) {
	var (
		flags    []string // passed on, minus -p and -o
		fields   []string
		operands []string
		hasP     bool
	)
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") || a == "-" {
			operands = append(operands, a)
			continue
		}
		var keep []byte
		letters := a[1:]
		for j := 0; j < len(letters); j++ {
			c := letters[j]
			switch c {
			case 'p':
				hasP = true
			case 'o', 'd', 't', 's', 'S':
				val := letters[j+1:]
				if val == "" && i+1 < len(args) {
					i++
					val = args[i]
				}
				if c == 'o' {
					fields = strings.Split(val, ",")
				} else {
					flags = append(flags, "-"+string(c), val)
				}
				j = len(letters)
			default:
				keep = append(keep, c)
			}
		}
		if len(keep) > 0 {
			flags = append(flags, "-"+string(keep))
		}
	}
	needs := hasP
	for _, f := range fields {
		needs = needs || unsupported[f]
	}
	if !needs {
		return 0, false
	}
	if len(fields) == 0 {
		fields = []string{"name", "used", "available", "referenced", "mountpoint"}
	}
	// Names first, with the caller's selection and order.
	nameArgs := append(append([]string{"list", "-H"}, flags...), "-o", "name")
	out, code := run(realZFS, append(nameArgs, operands...))
	if code != 0 {
		return code, true
	}
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" {
			names = append(names, l)
		}
	}
	if len(names) == 0 {
		return 0, true
	}
	var props []string
	for _, f := range fields {
		if f != "name" && !unsupported[f] {
			props = append(props, f)
		}
	}
	values := map[string]map[string]string{}
	if len(props) > 0 {
		out, code := run(realZFS, append([]string{"get", "-Hp", "-o", "name,property,value", strings.Join(props, ",")}, names...))
		if code != 0 {
			return code, true
		}
		for _, l := range strings.Split(string(out), "\n") {
			parts := strings.SplitN(l, "\t", 3)
			if len(parts) != 3 {
				continue
			}
			if values[parts[0]] == nil {
				values[parts[0]] = map[string]string{}
			}
			values[parts[0]][parts[1]] = parts[2]
		}
	}
	var buf bytes.Buffer
	for _, n := range names {
		row := make([]string, len(fields))
		for i, f := range fields {
			switch v, ok := values[n][f]; {
			case f == "name":
				row[i] = n
			case ok:
				row[i] = v
			default:
				row[i] = "-"
			}
		}
		buf.WriteString(strings.Join(row, "\t") + "\n")
	}
	os.Stdout.Write(buf.Bytes())
	return 0, true
}

// run runs the real zfs, passing its stderr through, and returns its
// stdout and exit status.
func run(realZFS string, args []string) ([]byte, int) {
	cmd := exec.Command(realZFS, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); ok {
		return out, ee.ExitCode()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "zfsadapter:", err)
		return out, 2
	}
	return out, 0
}
