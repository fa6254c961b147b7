package testsupport

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// BlobGate is an HTTP proxy on 127.0.0.1 in front of a kiln server that
// lets the first blob download through for Hold bytes and then holds it
// (sends nothing more, keeps the connection) until Release, so that a
// test can kill a worker mid-fetch at a known byte. It records the Range
// header of every blob download.
type BlobGate struct {
	URL string

	hold     int64
	mu       sync.Mutex
	used     bool
	ranges   []string
	released chan struct{}
	once     sync.Once
}

// StartBlobGate proxies to target (a server URL) and gates its first blob
// download after hold bytes.
func StartBlobGate(t testing.TB, target string, hold int64) *BlobGate {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	g := &BlobGate{hold: hold, released: make(chan struct{})}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.FlushInterval = -1 // the held bytes reach the worker at once
	rp.ModifyResponse = func(resp *http.Response) error {
		r := resp.Request
		if r.Method != http.MethodGet || !strings.HasPrefix(r.URL.Path, "/v1/blobs/") {
			return nil
		}
		g.mu.Lock()
		g.ranges = append(g.ranges, r.Header.Get("Range"))
		first := !g.used
		g.used = true
		g.mu.Unlock()
		if first {
			resp.Body = &heldBody{r: resp.Body, left: g.hold, released: g.released}
		}
		return nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { g.Release(); _ = srv.Close() })
	g.URL = "http://" + ln.Addr().String()
	return g
}

// Release ends the held download (with an error, as a cut connection).
func (g *BlobGate) Release() { g.once.Do(func() { close(g.released) }) }

// Ranges returns the Range headers of the blob downloads so far ("" for
// a download from the start).
func (g *BlobGate) Ranges() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.ranges...)
}

type heldBody struct {
	r        io.ReadCloser
	left     int64
	released chan struct{}
}

var errGateReleased = errors.New("blob gate released")

func (h *heldBody) Read(p []byte) (int, error) {
	if h.left <= 0 {
		<-h.released
		return 0, errGateReleased
	}
	if int64(len(p)) > h.left {
		p = p[:h.left]
	}
	n, err := h.r.Read(p)
	h.left -= int64(n)
	return n, err
}

func (h *heldBody) Close() error { return h.r.Close() }
