//go:build kiln_unhardened

package linux

import "testing"

// unhardened: this build leaves out the container tier's seccomp profile,
// capability cuts, AppArmor profile and user namespace, so that
// BenchmarkTrivialRun built with and without the tag measures what they
// cost (docs/benchmarks.md). no_new_privs and the nosuid/nodev mounts stay.
const unhardened = true

// A binary built with the tag is a test binary or nothing: anything else
// (kiln itself, built with -tags kiln_unhardened by mistake) stops at
// start rather than run jobs without their sandbox's walls.
func init() {
	if !testing.Testing() {
		panic("kiln: built with the kiln_unhardened tag, which removes the sandbox's hardening; it is for benchmark test binaries only (go test -tags kiln_unhardened)")
	}
}
