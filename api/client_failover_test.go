package api

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// TestClientFailsOver: with several addresses, a request that cannot
// reach the first goes to the next, with its body, and later requests
// stick to the one that answered.
func TestClientFailsOver(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		body, _ := io.ReadAll(r.Body)
		if !strings.Contains(string(body), `"name":"j"`) {
			t.Errorf("body %q was not sent again", body)
		}
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"revision":1}`)
	}))
	defer srv.Close()
	down := deadAddr(t)
	c := NewClient("http://"+down+", "+srv.URL+"/", "t")
	for i := 0; i < 2; i++ {
		if _, err := c.AddJob(context.Background(), &Job{Name: "j"}); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if calls.Load() != 2 {
		t.Fatalf("%d calls reached the live server, want 2", calls.Load())
	}
	if base, _ := c.base(); base != srv.URL {
		t.Fatalf("client uses %s after failing over, want %s", base, srv.URL)
	}

	t.Run("all down", func(t *testing.T) {
		a, b := deadAddr(t), deadAddr(t)
		_, err := NewClient("http://"+a+",http://"+b, "t").ListJobs(context.Background())
		if !errors.Is(err, ErrUnreachable) {
			t.Fatalf("got %v, want ErrUnreachable", err)
		}
	})
}

func TestAddresses(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"http://a:1", "http://a:1"},
		{" http://a:1/ , ,http://b:2", "http://a:1|http://b:2"},
		{"", ""},
	} {
		t.Run(tc.in, func(t *testing.T) {
			if got := strings.Join(Addresses(tc.in), "|"); got != tc.want {
				t.Fatalf("Addresses(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

// deadAddr is an address nothing listens on.
func deadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
