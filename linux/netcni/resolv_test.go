package netcni

import (
	"io/fs"
	"net/netip"
	"strings"
	"testing"
)

func TestSandboxResolvConf(t *testing.T) {
	const stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n"
	const upstream = "# resolved\nnameserver 192.0.2.53\nnameserver 2001:db8::53\nsearch lan\n"
	tests := []struct {
		name       string
		files      map[string]string
		configured []string
		want       []string // nameservers, in order; nil: refused
		keep       string   // a line the file must have
	}{
		{"host servers", map[string]string{hostResolvConf: "nameserver 10.255.255.53\nsearch example.org\n"}, nil, []string{"10.255.255.53"}, "search example.org"},
		{"stub falls back to resolved's upstreams", map[string]string{hostResolvConf: stub, resolvedResolvConf: upstream}, nil, []string{"192.0.2.53"}, "search lan"},
		{"ipv6 and loopback dropped", map[string]string{hostResolvConf: "nameserver ::1\nnameserver 127.0.0.1\nnameserver fd00::1\nnameserver 198.51.100.1\n"}, nil, []string{"198.51.100.1"}, ""},
		{"stub without upstreams is refused", map[string]string{hostResolvConf: stub}, nil, nil, ""},
		{"stub with ipv6-only upstreams is refused", map[string]string{hostResolvConf: stub, resolvedResolvConf: "nameserver 2001:db8::53\n"}, nil, nil, ""},
		{"no resolv.conf at all is refused", map[string]string{}, nil, nil, ""},
		{"configured servers win", map[string]string{hostResolvConf: stub}, []string{"192.0.2.1", "192.0.2.2"}, []string{"192.0.2.1", "192.0.2.2"}, "options edns0 trust-ad"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			read := func(p string) ([]byte, error) {
				if s, ok := tt.files[p]; ok {
					return []byte(s), nil
				}
				return nil, fs.ErrNotExist
			}
			var conf []netip.Addr
			for _, s := range tt.configured {
				conf = append(conf, netip.MustParseAddr(s))
			}
			data, servers, err := sandboxResolvConf(conf, read)
			if tt.want == nil {
				if err == nil {
					t.Fatalf("accepted:\n%s", data)
				}
				if !strings.Contains(err.Error(), "[network] dns") {
					t.Errorf("error does not say what to set: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, s := range servers {
				got = append(got, s.String())
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Errorf("servers %v, want %v", got, tt.want)
			}
			for _, s := range tt.want {
				if !strings.Contains(string(data), "nameserver "+s+"\n") {
					t.Errorf("resolv.conf lacks %s:\n%s", s, data)
				}
			}
			if strings.Count(string(data), "nameserver ") != len(tt.want) {
				t.Errorf("resolv.conf has other nameservers:\n%s", data)
			}
			if tt.keep != "" && !strings.Contains(string(data), tt.keep+"\n") {
				t.Errorf("resolv.conf lost %q:\n%s", tt.keep, data)
			}
		})
	}
}
