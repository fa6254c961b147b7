package api

import (
	"strings"
	"testing"
)

// TestCheckNotifyURL: what a [[notify]] url may be.
func TestCheckNotifyURL(t *testing.T) {
	for _, tc := range []struct {
		url, err string
	}{
		{"https://ci.example.org/kiln", ""},
		{"http://127.0.0.1:8080/x?y=1", ""},
		{"http://[::1]/", ""},
		{"http://10.0.0.1/", ""},
		{"http://169.254.169.254/latest/meta-data", "link-local"},
		{"http://169.254.1.2:80/", "link-local"},
		{"http://[fe80::1]/", "link-local"},
		{"http://[::ffff:169.254.169.254]/", "link-local"},
		{"http://[fd00:ec2::254]/", "metadata"},
		{"http://0.0.0.0/", "unspecified"},
		{"http://[ff02::1]/", "link-local"},
		{"http://239.1.2.3/", "multicast"},
		{"file:///etc/passwd", "http"},
		{"gopher://127.0.0.1/", "http"},
		{"http:///nohost", "no host"},
		{"http://user:pw@127.0.0.1/", "user"},
		{"http://127.0.0.1/#frag", "fragment"},
		{"http://127.0.0.1/" + strings.Repeat("a", MaxNotifyURL), "longer"},
	} {
		err := CheckNotifyURL(tc.url)
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%.60s: %v, want %q", tc.url, err, tc.err)
		}
	}
}

// TestValidateNotify: a job's [[notify]] list.
func TestValidateNotify(t *testing.T) {
	ok := Notify{URL: "http://127.0.0.1/", Events: []string{EventRunFailed}}
	for _, tc := range []struct {
		name string
		ns   []Notify
		err  string
	}{
		{"ok", []Notify{ok}, ""},
		{"no events", []Notify{{URL: ok.URL}}, "no events"},
		{"unknown event", []Notify{{URL: ok.URL, Events: []string{"run.exploded"}}}, "want one of"},
		{"event twice", []Notify{{URL: ok.URL, Events: []string{EventRunFailed, EventRunFailed}}}, "twice"},
		{"url twice", []Notify{ok, ok}, "twice"},
		{"too many", []Notify{ok, ok, ok, ok, ok, ok, ok, ok, ok}, "at most"},
	} {
		err := validateNotify(tc.ns)
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.err)
		}
	}
}
