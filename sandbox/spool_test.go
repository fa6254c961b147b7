package sandbox

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestSpoolCap(t *testing.T) {
	p := filepath.Join(t.TempDir(), "console")
	var live bytes.Buffer
	s, err := openSpool(p, 1000, &live, false)
	if err != nil {
		t.Fatal(err)
	}
	line := []byte(strings.Repeat("x", 99) + "\n")
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100; i++ {
				if n, err := s.Write(line); n != len(line) || err != nil {
					t.Errorf("write: %d %v", n, err)
				}
			}
		}()
	}
	wg.Wait()
	s.Notef("exit code %d", 0)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(p)
	if !strings.HasPrefix(string(data), string(bytes.Repeat(line, 10))) {
		t.Fatal("first 1000 bytes are not the job's output")
	}
	if !strings.Contains(string(data), "console truncated at 1000 bytes") || !strings.HasSuffix(string(data), "[kiln] exit code 0\n") {
		t.Fatalf("missing truncation notice or kiln note:\n%s", data[1000:])
	}
	if trunc, dropped := s.Truncated(); !trunc || dropped != 40000-1000 {
		t.Fatalf("truncated=%v dropped=%d", trunc, dropped)
	}
	if live.String() != string(data) {
		t.Fatal("live copy differs from spool")
	}
}

// TestSpoolNotesCount: kiln's notes count against the cap; they may go a
// little past it (so the end of a run is still told) but not without bound.
func TestSpoolNotesCount(t *testing.T) {
	p := filepath.Join(t.TempDir(), "console")
	s, err := openSpool(p, 100, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	for range 100000 {
		s.Notef("artifact %s not collected", strings.Repeat("x", 40))
	}
	// The job writes after kiln's notes went past the cap: dropped, no panic.
	if n, err := s.Write([]byte("late output\n")); n != 12 || err != nil {
		t.Fatalf("write: %d %v", n, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() > 100+noteReserve {
		t.Fatalf("console grew to %d bytes with a cap of 100", st.Size())
	}
	if trunc, _ := s.Truncated(); !trunc {
		t.Fatal("dropped notes not reported as truncation")
	}
}
