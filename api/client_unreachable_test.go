package api

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
)

func TestUnreachableServerIsNamed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	c := NewClient("http://"+addr, "token")
	_, err = c.ListJobs(context.Background())
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), addr) {
		t.Fatalf("got %v; want ErrUnreachable naming %s", err, addr)
	}
}
