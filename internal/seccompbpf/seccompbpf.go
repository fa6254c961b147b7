// Package seccompbpf holds what the worker and kiln-sandbox-init must agree
// on about a stored seccomp filter: the worker never stores a program the
// init would refuse to install.
package seccompbpf

import "fmt"

// MaxInstructions is the kernel's BPF_MAXINSNS.
const MaxInstructions = 4096

// InstructionSize is the size of a struct sock_filter.
const InstructionSize = 8

// Check refuses what cannot be a classic BPF program of struct
// sock_filter: empty, not whole instructions, or longer than the kernel
// takes.
func Check(prog []byte) error {
	if n := len(prog) / InstructionSize; len(prog)%InstructionSize != 0 || n == 0 || n > MaxInstructions {
		return fmt.Errorf("%d bytes is no BPF program", len(prog))
	}
	return nil
}
