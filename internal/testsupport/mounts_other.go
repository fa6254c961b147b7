//go:build !linux

package testsupport

func unmountBelow(dir string) {}
