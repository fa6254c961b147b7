package qemu

import "context"

// Hooks for qemu_test, which cannot live in package qemu: it needs
// testsupport, which imports images, which imports qemu.

func BinfmtDir() string                                   { return hostBinfmt().dir }
func MountBinfmt() error                                  { return hostBinfmt().mount() }
func InstallHandler(ctx context.Context, h Handler) error { return hostBinfmt().install(ctx, h) }
func EnableHandler(ctx context.Context, name string) error {
	return hostBinfmt().enable(ctx, name)
}
func VerifyHandler(name string) error { return hostBinfmt().verify(name) }
func WriteEntry(name, value string) error {
	return hostBinfmt().write(hostBinfmt().dir+"/"+name, value)
}

// WithConfDirs runs detect and register with other binfmt.d directories.
func DetectWithConfDirs(ctx context.Context, dirs []string) (Capabilities, error) {
	return binfmt{dir: hostBinfmt().dir, confDirs: dirs}.detect(ctx)
}
func RegisterWithConfDirs(ctx context.Context, arch string, dirs []string) error {
	return binfmt{dir: hostBinfmt().dir, confDirs: dirs}.register(ctx, arch)
}
