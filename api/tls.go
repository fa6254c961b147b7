package api

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
)

// TrustCA makes the client trust the PEM certificates in file as well as
// the system's roots: the CA of a server whose certificate a private CA
// signed. It replaces the client's HTTP client.
func (c *Client) TrustCA(file string) error {
	pem, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("tls ca: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("tls ca %s: no PEM certificate in it", file)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	c.HTTP = &http.Client{Transport: tr}
	return nil
}

// LoopbackHost reports whether host (a name or an IP, without port) is
// this machine's loopback: "localhost" or an address in 127.0.0.0/8 or
// ::1. An empty host (all interfaces) and every other name are not.
func LoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// PlainHTTPRemote reports whether rawURL is plain http to a host other
// than the loopback: every request, and the bearer token in it, crosses a
// network in clear text.
func PlainHTTPRemote(rawURL string) bool {
	u, err := url.Parse(rawURL)
	return err == nil && u.Scheme == "http" && !LoopbackHost(u.Hostname())
}
