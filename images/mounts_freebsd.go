package images

// unmountUnder is a no-op on FreeBSD: no method kiln runs there mounts
// anything inside a build area.
func unmountUnder(dir string) error { return nil }
