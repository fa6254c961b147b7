package qemu

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// ParseBinmiscctlList parses the output of FreeBSD's `binmiscctl list`: one
// block per image activator, "name:", "interpreter:", "flags:" (ENABLED,
// USE_MASK, PRE_OPEN), "magic size:", "magic offset:", "magic:" and "mask:"
// (bytes as 0xHH, continued on indented lines), blocks separated by a blank
// line.
func ParseBinmiscctlList(out []byte) ([]Handler, error) {
	var (
		hs    []Handler
		cur   *Handler
		field string // "magic" or "mask" while continuation lines may follow
	)
	flush := func() error {
		if cur == nil {
			return nil
		}
		if cur.Interpreter == "" {
			return fmt.Errorf("binmiscctl list: activator %q has no interpreter", cur.Name)
		}
		hs = append(hs, *cur)
		cur = nil
		return nil
	}
	bytesOf := func(s string) ([]byte, error) {
		var b []byte
		for _, w := range strings.Fields(s) {
			v, err := hex.DecodeString(strings.TrimPrefix(strings.ToLower(w), "0x"))
			if err != nil || len(v) != 1 {
				return nil, fmt.Errorf("binmiscctl list: bad byte %q", w)
			}
			b = append(b, v[0])
		}
		return b, nil
	}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			if err := flush(); err != nil {
				return nil, err
			}
			field = ""
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if cur == nil || field == "" {
				return nil, fmt.Errorf("binmiscctl list: unexpected continuation %q", line)
			}
			b, err := bytesOf(line)
			if err != nil {
				return nil, err
			}
			if field == "magic" {
				cur.Magic = append(cur.Magic, b...)
			} else {
				cur.Mask = append(cur.Mask, b...)
			}
			continue
		}
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("binmiscctl list: unexpected line %q", line)
		}
		val = strings.TrimSpace(val)
		field = ""
		if key == "name" {
			if err := flush(); err != nil {
				return nil, err
			}
			cur = &Handler{Name: val, Kind: "M"}
			continue
		}
		if cur == nil {
			return nil, fmt.Errorf("binmiscctl list: %q before any name", line)
		}
		var err error
		switch key {
		case "interpreter":
			// The interpreter may carry arguments; the binary is the first word.
			cur.Interpreter, _, _ = strings.Cut(val, " ")
		case "flags":
			cur.Flags = val
			for _, f := range strings.Fields(val) {
				switch f {
				case "ENABLED":
					cur.Enabled = true
				case "PRE_OPEN":
					cur.Fixed = true
				}
			}
		case "magic offset":
			cur.Offset, err = strconv.Atoi(val)
		case "magic size":
			_, err = strconv.Atoi(val)
		case "magic":
			cur.Magic, err = bytesOf(val)
			field = "magic"
		case "mask":
			cur.Mask, err = bytesOf(val)
			field = "mask"
		}
		if err != nil {
			return nil, fmt.Errorf("binmiscctl list: %s: %w", line, err)
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return hs, nil
}

// BinmiscctlAddArgv is the binmiscctl(8) command that registers h enabled
// and with --pre-open, FreeBSD's counterpart of Linux's F flag: the kernel
// opens the interpreter now, so it need not exist inside a jail's root.
func BinmiscctlAddArgv(h Handler) []string {
	esc := func(b []byte) string {
		var sb strings.Builder
		for _, c := range b {
			fmt.Fprintf(&sb, `\x%02x`, c)
		}
		return sb.String()
	}
	argv := []string{"binmiscctl", "add", h.Name, "--interpreter", h.Interpreter, "--magic", esc(h.Magic)}
	if len(h.Mask) > 0 {
		argv = append(argv, "--mask", esc(h.Mask))
	}
	return append(argv, "--size", strconv.Itoa(len(h.Magic)), "--offset", strconv.Itoa(h.Offset), "--set-enabled", "--pre-open")
}
