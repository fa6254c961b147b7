package api

import (
	"errors"
	"testing"

	"github.com/kiln-build/kiln/names"
)

// FuzzParseJobFile: any input either parses to a job that validates, or
// fails with an ErrInvalidJob error of one line; it never panics.
func FuzzParseJobFile(f *testing.F) {
	f.Add([]byte("name = \"hello\"\nimage = \"bookworm\"\nscript = \"echo hi\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		j, err := ParseJobFile(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidJob) {
				t.Fatalf("error does not wrap ErrInvalidJob: %v", err)
			}
			for _, c := range err.Error() {
				if c == '\n' {
					t.Fatalf("error spans lines: %q", err)
				}
			}
			return
		}
		if err := j.Validate(); err != nil {
			t.Fatalf("parsed job does not validate: %v", err)
		}
		for _, in := range j.Inputs {
			if names.ValidRelPath(in.Path) != nil {
				t.Fatalf("input path %q accepted", in.Path)
			}
		}
	})
}
