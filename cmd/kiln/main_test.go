package main

import (
	"os"
	"testing"
)

// TestMain runs kiln itself instead of the tests when KILN_TEST_MAIN=1.
// A test binary of this package built with -tags kiln_unhardened is then
// a kiln whose sandboxes leave out the hardening, for measuring its cost
// through a real server and worker (docs/benchmarks.md); kiln itself
// cannot be built so (linux/unhardened_linux.go).
func TestMain(m *testing.M) {
	if os.Getenv("KILN_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}
