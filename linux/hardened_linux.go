//go:build !kiln_unhardened

package linux

// unhardened leaves out the container tier's hardening (seccomp, the
// capability cuts, AppArmor and the user namespace). Only a test binary
// built with the kiln_unhardened tag sets it, to measure what the
// hardening costs (docs/benchmarks.md); see unhardened_linux.go.
const unhardened = false
