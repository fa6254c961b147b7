package blobs

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"testing"
)

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func TestResumableWrite(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 1000)
	sha := sum(data)
	for _, tc := range []struct {
		name   string
		chunks []int // chunk boundaries
	}{
		{"whole", []int{len(data)}},
		{"three chunks", []int{1, 5000, len(data)}},
		{"empty chunk in between", []int{100, 100, len(data)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			off := 0
			for i, end := range tc.chunks {
				got, complete, err := s.Write(sha, int64(off), int64(len(data)), bytes.NewReader(data[off:end]))
				if err != nil {
					t.Fatal(err)
				}
				if got != int64(end) || complete != (i == len(tc.chunks)-1) {
					t.Fatalf("chunk %d: received %d complete %v", i, got, complete)
				}
				if ok, n, _ := s.Stat(sha); ok != complete || n != int64(end) {
					t.Fatalf("Stat after chunk %d: %v %d", i, ok, n)
				}
				off = end
			}
			f, err := s.Open(sha)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			b, _ := io.ReadAll(f)
			if !bytes.Equal(b, data) {
				t.Fatal("stored blob differs")
			}
			// Uploading a stored blob again is a no-op.
			if _, complete, err := s.Write(sha, 0, int64(len(data)), bytes.NewReader(nil)); err != nil || !complete {
				t.Fatalf("re-upload: %v %v", complete, err)
			}
		})
	}
}

func TestWriteRefusals(t *testing.T) {
	data := []byte("payload")
	sha := sum(data)
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name         string
		sha          string
		offset, size int64
		body         []byte
		want         error
	}{
		{"bad sha", "XYZ", 0, 7, data, ErrBadSHA},
		{"gap", sha, 3, 7, data[3:], ErrOffset},
		{"past size", sha, 0, 3, data, ErrTooLarge},
		{"wrong digest", sum([]byte("other")), 0, 7, data, ErrDigest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := s.Write(tc.sha, tc.offset, tc.size, bytes.NewReader(tc.body)); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	if ok, n, _ := s.Stat(sum([]byte("other"))); ok || n != 0 {
		t.Fatalf("a mismatching upload left data: %v %d", ok, n)
	}
}
