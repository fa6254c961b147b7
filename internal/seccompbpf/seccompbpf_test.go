package seccompbpf

import "testing"

func TestCheck(t *testing.T) {
	tests := []struct {
		name string
		size int
		ok   bool
	}{
		{"empty", 0, false},
		{"one instruction", 8, true},
		{"part of one", 12, false},
		{"the kernel's most", 8 * MaxInstructions, true},
		{"one more", 8 * (MaxInstructions + 1), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := Check(make([]byte, tt.size)); (err == nil) != tt.ok {
				t.Errorf("Check(%d bytes) = %v, want ok %v", tt.size, err, tt.ok)
			}
		})
	}
}
