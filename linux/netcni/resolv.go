package netcni

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"strings"
)

// Where the host's resolver is described: the file the host's programs
// read, and systemd-resolved's list of upstream servers for when the first
// names only its stub on 127.0.0.53.
const (
	hostResolvConf     = "/etc/resolv.conf"
	resolvedResolvConf = "/run/systemd/resolve/resolv.conf"
)

// resolvConf is a parsed resolv.conf(5): its nameservers, and the lines a
// sandbox keeps (search, domain, options).
type resolvConf struct {
	servers []netip.Addr
	keep    []string
}

func parseResolvConf(data []byte) resolvConf {
	var rc resolvConf
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") || strings.HasPrefix(f[0], ";") {
			continue
		}
		switch f[0] {
		case "nameserver":
			if len(f) < 2 {
				continue
			}
			// A zone ("fe80::1%eth0") makes ParseAddr keep it; such an
			// address is IPv6 and dropped below anyway.
			if a, err := netip.ParseAddr(f[1]); err == nil {
				rc.servers = append(rc.servers, a)
			}
		case "search", "domain", "options":
			rc.keep = append(rc.keep, strings.Join(f, " "))
		}
	}
	return rc
}

// reachable returns the servers a sandbox can use: IPv4 (sandboxes have no
// IPv6) and not on the host's loopback (the sandbox's own loopback is
// another one).
func (rc resolvConf) reachable() []netip.Addr {
	var out []netip.Addr
	for _, a := range rc.servers {
		if a.Is4() && !a.IsLoopback() && !a.IsUnspecified() {
			out = append(out, a)
		}
	}
	return out
}

func (rc resolvConf) render(servers []netip.Addr) []byte {
	var b bytes.Buffer
	b.WriteString("# Written by kiln for a sandbox with network = \"bridge\".\n")
	for _, a := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", a)
	}
	for _, l := range rc.keep {
		b.WriteString(l + "\n")
	}
	return b.Bytes()
}

// sandboxResolvConf makes the resolv.conf of a bridge sandbox: the
// configured servers when there are any, else the host's, else (the host
// runs a stub resolver on its loopback) systemd-resolved's upstreams. It
// refuses, saying what to set, when none of them is reachable from a
// sandbox. It returns the servers too.
func sandboxResolvConf(configured []netip.Addr, read func(string) ([]byte, error)) ([]byte, []netip.Addr, error) {
	host, err := read(hostResolvConf)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("read the host's resolver configuration: %w", err)
	}
	rc := parseResolvConf(host)
	if len(configured) > 0 {
		return rc.render(configured), configured, nil
	}
	if s := rc.reachable(); len(s) > 0 {
		return rc.render(s), s, nil
	}
	up, uerr := read(resolvedResolvConf)
	if uerr == nil {
		urc := parseResolvConf(up)
		if s := urc.reachable(); len(s) > 0 {
			return urc.render(s), s, nil
		}
	}
	what := "names no nameserver"
	if len(rc.servers) > 0 {
		what = fmt.Sprintf("names only %s, which sandboxes cannot reach (loopback or IPv6)", rc.servers)
	}
	return nil, nil, fmt.Errorf("bridge network: no DNS server for sandboxes: %s %s and %s has no IPv4 upstream; set [network] dns in worker.toml", hostResolvConf, what, resolvedResolvConf)
}
