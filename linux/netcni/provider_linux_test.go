package netcni_test

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/errdefs"
	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/linux/netcni"
)

func TestProviderAttachClose(t *testing.T) {
	n := testsupport.Network(t)
	p := netcni.NewProvider(n, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	a, err := p.Attach(ctx, "p1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(a.NetNS); err != nil {
		t.Fatalf("attached namespace: %v", err)
	}
	for i := range 2 { // the second Close finds nothing to do
		if err := a.Close(ctx); err != nil {
			t.Fatalf("close %d: %v", i+1, err)
		}
	}
	if runs, err := p.List(ctx); err != nil || slices.Contains(runs, "p1") {
		t.Fatalf("after close: runs %v (%v), want p1 gone", runs, err)
	}
	if _, err := os.Stat(a.NetNS); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("namespace after close: %v, want gone", err)
	}

	// A run set up by another process is taken down through Adopt.
	if _, err := n.Setup(ctx, "p2"); err != nil {
		t.Fatal(err)
	}
	if err := p.Adopt("p2").Close(ctx); err != nil {
		t.Fatal(err)
	}
	if runs, err := p.List(ctx); err != nil || slices.Contains(runs, "p2") {
		t.Fatalf("after adopted close: runs %v (%v), want p2 gone", runs, err)
	}
}

func TestProviderWithoutNetwork(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		p    netcni.Provider
		want string
	}{
		{"zero", netcni.Provider{}, "network \"bridge\": this host has no bridge networking"},
		{"with reason", netcni.NewProvider(nil, errors.New("no CNI plugins")), "network \"bridge\": no CNI plugins"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.p.Attach(ctx, "r1")
			if !errors.Is(err, errdefs.ErrUnsupported) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Attach: %v, want ErrUnsupported saying %q", err, tt.want)
			}
			if err := tt.p.Available(); !errors.Is(err, errdefs.ErrUnsupported) {
				t.Fatalf("Available: %v", err)
			}
			if tt.p.Adopt("r1") != nil {
				t.Fatal("Adopt without networking: want nil")
			}
			var none *netcni.Attached
			if err := none.Close(ctx); err != nil {
				t.Fatalf("nil Close: %v", err)
			}
			if err := tt.p.Teardown(ctx, "r1"); err != nil {
				t.Fatalf("Teardown: %v", err)
			}
			if runs, err := tt.p.List(ctx); err != nil || runs != nil {
				t.Fatalf("List: %v %v", runs, err)
			}
		})
	}
}
