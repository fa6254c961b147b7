//go:build !linux

package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "kiln-sandbox-init: only Linux container sandboxes use it")
	os.Exit(126)
}
