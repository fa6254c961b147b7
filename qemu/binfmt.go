package qemu

import (
	"bufio"
	"context"
	"encoding/hex"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/kiln-build/kiln/errdefs"
)

// Handler is one registered (or registrable) way for the kernel to hand a
// foreign binary to an emulator: a Linux binfmt_misc entry or a FreeBSD
// binmiscctl image activator.
type Handler struct {
	Name        string // entry name, e.g. qemu-aarch64
	Enabled     bool
	Interpreter string
	// Flags as the kernel or the definition spells them: "PF" on Linux,
	// "ENABLED USE_MASK" on FreeBSD.
	Flags string
	// Fixed: the kernel opened the interpreter at registration (Linux F
	// flag, FreeBSD PRE_OPEN), so it need not exist inside a sandbox's root.
	Fixed  bool
	Kind   string // "M" (magic) or "E" (extension)
	Offset int
	Magic  []byte // for Kind "E": the extension
	Mask   []byte // nil: all ones
	// Source is the file a shipped definition was read from (a binfmt.d
	// file on Linux); "" for a registered handler.
	Source string
}

// Capabilities is what a host can run.
type Capabilities struct {
	Native string
	// Emulated lists the canonical archs (sorted) that an enabled handler
	// runs in a way usable in a sandbox; see Detect for each OS's rule.
	Emulated []string
	// Handlers are the registered qemu handlers, keyed by canonical arch
	// (one handler may serve two archs: qemu-arm runs armhf and armel).
	Handlers map[string]Handler
	// Shipped are the definitions the installed qemu package provides and
	// Register can use, keyed by canonical arch.
	Shipped map[string]Handler
	// Off: binfmt_misc is disabled host-wide (Linux status file says so).
	Off bool
}

// Runnable reports whether the host runs arch natively or emulated.
func (c Capabilities) Runnable(arch string) bool {
	a, err := Normalize(arch)
	if err != nil {
		return false
	}
	return a == c.Native || slices.Contains(c.Emulated, a)
}

// Archs is Native followed by Emulated: what a worker reports to the server.
func (c Capabilities) Archs() []string { return append([]string{c.Native}, c.Emulated...) }

// Check returns nil when the host can run arch (native or emulated).
// Otherwise, and after trying Register when register is true, it returns an
// error wrapping errdefs.ErrUnsupported that says what to install or enable.
// An unknown arch name wraps errdefs.ErrInvalid.
func Check(ctx context.Context, caps Capabilities, arch string, register bool) error {
	a, err := Normalize(arch)
	if err != nil {
		return err
	}
	if caps.Runnable(a) {
		return nil
	}
	var regErr error
	if register {
		if regErr = Register(ctx, a); regErr == nil {
			return nil
		}
	}
	if regErr != nil {
		return fmt.Errorf("%w: this host cannot run %s binaries: %s (registering the handler failed: %v)",
			errdefs.ErrUnsupported, a, advice(caps, a), regErr)
	}
	return fmt.Errorf("%w: this host cannot run %s binaries: %s", errdefs.ErrUnsupported, a, advice(caps, a))
}

// handlerArchs maps a handler to the canonical archs it emulates, from its
// name (qemu-aarch64) or its interpreter (qemu-aarch64-static,
// aarch64-binfmt-P). Handlers that are not qemu's map to nothing.
func handlerArchs(h Handler) []string {
	cands := []string{h.Name, path.Base(h.Interpreter)}
	for _, c := range cands {
		var q string
		switch {
		case strings.HasPrefix(c, "qemu-"):
			q = strings.TrimSuffix(strings.TrimPrefix(c, "qemu-"), "-static")
		case strings.HasPrefix(c, "qemu_"): // FreeBSD rc script style names
			q = strings.TrimPrefix(c, "qemu_")
		case strings.HasSuffix(c, "-binfmt-P"):
			q = strings.TrimSuffix(c, "-binfmt-P")
		default:
			continue
		}
		var out []string
		for _, a := range Known() {
			if archs[a].qemu == q {
				out = append(out, a)
			}
		}
		if len(out) > 0 {
			return out
		}
	}
	return nil
}

// capabilities builds Capabilities from registered handlers and shipped
// definitions; usable says which registered handlers count as runnable.
func capabilities(native string, registered, shipped []Handler, usable func(Handler) bool) Capabilities {
	c := Capabilities{Native: native, Handlers: map[string]Handler{}, Shipped: map[string]Handler{}}
	for _, h := range registered {
		for _, a := range handlerArchs(h) {
			// Keep the first runnable one when several claim one arch.
			if old, ok := c.Handlers[a]; ok && usable(old) {
				continue
			}
			c.Handlers[a] = h
		}
	}
	for _, h := range shipped {
		for _, a := range handlerArchs(h) {
			if _, ok := c.Shipped[a]; !ok {
				c.Shipped[a] = h
			}
		}
	}
	for a, h := range c.Handlers {
		if a != native && usable(h) {
			c.Emulated = append(c.Emulated, a)
		}
	}
	slices.Sort(c.Emulated)
	return c
}

// ParseProcHandler parses a Linux /proc/sys/fs/binfmt_misc/<name> file.
func ParseProcHandler(name string, data []byte) (Handler, error) {
	h := Handler{Name: name}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		line := sc.Text()
		key, val, _ := strings.Cut(line, " ")
		var err error
		switch key {
		case "enabled":
			h.Enabled = true
		case "disabled":
			h.Enabled = false
		case "interpreter":
			h.Interpreter = val
		case "flags:":
			h.Flags = strings.TrimSpace(val)
			h.Fixed = strings.Contains(h.Flags, "F")
		case "offset":
			h.Offset, err = strconv.Atoi(val)
		case "magic":
			h.Kind = "M"
			h.Magic, err = hex.DecodeString(val)
		case "mask":
			h.Mask, err = hex.DecodeString(val)
		case "extension":
			h.Kind = "E"
			h.Magic = []byte(strings.TrimPrefix(val, "."))
		}
		if err != nil {
			return Handler{}, fmt.Errorf("binfmt_misc %s: line %q: %w", name, line, err)
		}
	}
	if h.Interpreter == "" {
		return Handler{}, fmt.Errorf("binfmt_misc %s: no interpreter line", name)
	}
	return h, nil
}

// ParseConfLine parses one binfmt_misc registration line, the format of
// binfmt.d(5) files and of /proc/sys/fs/binfmt_misc/register:
// :name:type:offset:magic:mask:interpreter:flags (the first character is
// the field separator). Magic and mask may use \xHH escapes.
func ParseConfLine(line string) (Handler, error) {
	line = strings.TrimRight(line, "\r\n")
	if len(line) < 2 {
		return Handler{}, fmt.Errorf("%w: binfmt line %q is too short", errdefs.ErrInvalid, line)
	}
	f := strings.Split(line[1:], line[:1])
	if len(f) != 7 {
		return Handler{}, fmt.Errorf("%w: binfmt line %q: want 7 fields, got %d", errdefs.ErrInvalid, line, len(f))
	}
	h := Handler{Name: f[0], Kind: f[1], Interpreter: f[5], Flags: f[6], Enabled: true}
	h.Fixed = strings.Contains(h.Flags, "F")
	if h.Name == "" || strings.ContainsAny(h.Name, "/") || h.Name == "." || h.Name == ".." || h.Name == "register" || h.Name == "status" {
		return Handler{}, fmt.Errorf("%w: binfmt line %q: bad name", errdefs.ErrInvalid, line)
	}
	if h.Kind != "M" && h.Kind != "E" {
		return Handler{}, fmt.Errorf("%w: binfmt line %q: type %q: want M or E", errdefs.ErrInvalid, line, h.Kind)
	}
	if f[2] != "" {
		n, err := strconv.Atoi(f[2])
		if err != nil || n < 0 {
			return Handler{}, fmt.Errorf("%w: binfmt line %q: bad offset", errdefs.ErrInvalid, line)
		}
		h.Offset = n
	}
	var err error
	if h.Magic, err = unescape(f[3]); err != nil || len(h.Magic) == 0 {
		return Handler{}, fmt.Errorf("%w: binfmt line %q: bad magic", errdefs.ErrInvalid, line)
	}
	if f[4] != "" {
		if h.Mask, err = unescape(f[4]); err != nil || len(h.Mask) != len(h.Magic) {
			return Handler{}, fmt.Errorf("%w: binfmt line %q: bad mask (must match the magic's length)", errdefs.ErrInvalid, line)
		}
	}
	if !path.IsAbs(h.Interpreter) {
		return Handler{}, fmt.Errorf("%w: binfmt line %q: interpreter must be an absolute path", errdefs.ErrInvalid, line)
	}
	return h, nil
}

// ParseConf parses a binfmt.d(5) file: registration lines, '#' and ';'
// comments, blank lines.
func ParseConf(data []byte) ([]Handler, error) {
	var hs []Handler
	for i, line := range strings.Split(string(data), "\n") {
		t := strings.TrimSpace(line)
		if t == "" || t[0] == '#' || t[0] == ';' {
			continue
		}
		h, err := ParseConfLine(t)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		hs = append(hs, h)
	}
	return hs, nil
}

// RegisterLine is the line to write to binfmt_misc's register file for h,
// with the F flag added. Every magic and mask byte is written as \xHH so no
// byte can be mistaken for the separator.
func RegisterLine(h Handler) string {
	flags := h.Flags
	if !strings.Contains(flags, "F") {
		flags += "F"
	}
	esc := func(b []byte) string {
		var sb strings.Builder
		for _, c := range b {
			fmt.Fprintf(&sb, `\x%02x`, c)
		}
		return sb.String()
	}
	magic := esc(h.Magic)
	if h.Kind == "E" {
		magic = string(h.Magic)
	}
	off := ""
	if h.Offset != 0 {
		off = strconv.Itoa(h.Offset)
	}
	return fmt.Sprintf(":%s:%s:%s:%s:%s:%s:%s", h.Name, h.Kind, off, magic, esc(h.Mask), h.Interpreter, flags)
}

// unescape decodes the \xHH and \\ escapes binfmt_misc accepts.
func unescape(s string) ([]byte, error) {
	var out []byte
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			out = append(out, s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == '\\' {
			out = append(out, '\\')
			i++
			continue
		}
		if i+3 >= len(s) || s[i+1] != 'x' {
			return nil, fmt.Errorf("bad escape at %d in %q", i, s)
		}
		b, err := hex.DecodeString(s[i+2 : i+4])
		if err != nil {
			return nil, fmt.Errorf("bad escape at %d in %q", i, s)
		}
		out = append(out, b[0])
		i += 3
	}
	return out, nil
}
