// Package archtest holds no code: its test keeps the import rules of
// docs/architecture.md true (which package may import which).
package archtest
