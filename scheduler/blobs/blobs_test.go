package blobs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
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
			s, err := Open(t.TempDir(), nil)
			if err != nil {
				t.Fatal(err)
			}
			off := 0
			for i, end := range tc.chunks {
				got, complete, err := s.Write(context.Background(), sha, "u", int64(off), int64(len(data)), bytes.NewReader(data[off:end]), false)
				if err != nil {
					t.Fatal(err)
				}
				if got != int64(end) || complete != (i == len(tc.chunks)-1) {
					t.Fatalf("chunk %d: received %d complete %v", i, got, complete)
				}
				if ok, n, _ := s.Stat(sha, "u"); ok != complete || n != int64(end) {
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
			if _, complete, err := s.Write(context.Background(), sha, "u", 0, int64(len(data)), bytes.NewReader(nil), false); err != nil || !complete {
				t.Fatalf("re-upload: %v %v", complete, err)
			}
		})
	}
}

func TestWriteRefusals(t *testing.T) {
	data := []byte("payload")
	sha := sum(data)
	s, err := Open(t.TempDir(), nil)
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
			if _, _, err := s.Write(context.Background(), tc.sha, "u", tc.offset, tc.size, bytes.NewReader(tc.body), false); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	if ok, n, _ := s.Stat(sum([]byte("other")), "u"); ok || n != 0 {
		t.Fatalf("a mismatching upload left data: %v %d", ok, n)
	}
}

// TestUploadSessions: a partial upload belongs to its uploader. Another
// uploader's wrong partial for the same sha256 does not stand in the way
// of the real blob; an uploader's own wrong partial is dropped when it
// starts again at 0; a blob stored already must be sent in full to prove.
func TestUploadSessions(t *testing.T) {
	data := bytes.Repeat([]byte("real artifact "), 100)
	sha := sum(data)
	size := int64(len(data))
	s, err := Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	junk := bytes.Repeat([]byte("x"), 50)
	if got, _, err := s.Write(context.Background(), sha, "attacker", 0, size, bytes.NewReader(junk), false); err != nil || got != 50 {
		t.Fatalf("attacker's partial: %d %v", got, err)
	}
	if _, n, _ := s.Stat(sha, "worker"); n != 0 {
		t.Fatalf("the worker sees %d bytes of the attacker's partial", n)
	}
	if got, complete, err := s.Write(context.Background(), sha, "worker", 0, size, bytes.NewReader(data), false); err != nil || !complete || got != size {
		t.Fatalf("worker's upload next to a poisoned partial: %d %v %v", got, complete, err)
	}

	// The uploader's own wrong bytes: a resume fails to verify, a
	// restart at 0 replaces them.
	other := bytes.Repeat([]byte("other blob "), 100)
	osha := sum(other)
	s.Write(context.Background(), osha, "u", 0, int64(len(other)), bytes.NewReader(junk), false)
	if _, _, err := s.Write(context.Background(), osha, "u", 50, int64(len(other)), bytes.NewReader(other[50:]), false); !errors.Is(err, ErrDigest) {
		t.Fatalf("resume over wrong bytes: %v, want ErrDigest", err)
	}
	s.Write(context.Background(), osha, "u", 0, int64(len(other)), bytes.NewReader(junk), false)
	if _, complete, err := s.Write(context.Background(), osha, "u", 0, int64(len(other)), bytes.NewReader(other), false); err != nil || !complete {
		t.Fatalf("restart at 0 over wrong bytes: %v %v", complete, err)
	}

	// prove: a stored blob is complete only once the bytes are sent.
	if _, complete, err := s.Write(context.Background(), sha, "client", 0, size, bytes.NewReader(nil), true); err != nil || complete {
		t.Fatalf("proving with no bytes: complete %v %v", complete, err)
	}
	if _, _, err := s.Write(context.Background(), sha, "client", 0, size, bytes.NewReader(bytes.Repeat([]byte("y"), int(size))), true); !errors.Is(err, ErrDigest) {
		t.Fatalf("proving with wrong bytes: %v", err)
	}
	if _, complete, err := s.Write(context.Background(), sha, "client", 0, size, bytes.NewReader(data), true); err != nil || !complete {
		t.Fatalf("proving with the bytes: %v %v", complete, err)
	}
}

// blockingReader yields its first byte, then blocks until released.
type blockingReader struct {
	first   bool
	release chan struct{}
}

func (r *blockingReader) Read(p []byte) (int, error) {
	if !r.first {
		r.first = true
		p[0] = 'x'
		return 1, nil
	}
	<-r.release
	return 0, io.ErrUnexpectedEOF
}

// TestSlowBodyBlocksNobody: while one request's body hangs, uploads of
// another blob, of the same blob by another uploader and of the same blob
// by the same uploader all complete (none waits for a lock).
func TestSlowBodyBlocksNobody(t *testing.T) {
	data := []byte("the blob")
	sha := sum(data)
	s, err := Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	slow := &blockingReader{release: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		_, _, err := s.Write(context.Background(), sha, "worker", 0, int64(len(data)), slow, false)
		done <- err
	}()
	for s.Received(sha, "worker") == 0 {
		time.Sleep(time.Millisecond) // until the slow request holds its session
	}
	other := []byte("another blob")
	for _, tc := range []struct {
		name, uploader string
		data           []byte
	}{
		{"another blob", "worker", other},
		{"same blob, another uploader", "client", data},
		{"same blob, same uploader", "worker", data},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, complete, err := s.Write(context.Background(), sum(tc.data), tc.uploader, 0, int64(len(tc.data)), bytes.NewReader(tc.data), true); err != nil || !complete {
				t.Fatalf("%v %v", complete, err)
			}
		})
	}
	close(slow.release)
	if err := <-done; err == nil {
		t.Fatal("the cut-off slow upload reported success")
	}
}

// TestSweep: partial uploads left alone past the cutoff go; fresh ones and
// one being written stay.
func TestSweep(t *testing.T) {
	s, err := Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	a, b := sum([]byte("aaaa")), sum([]byte("bbbb"))
	s.Write(context.Background(), a, "u", 0, 4, bytes.NewReader([]byte("a")), false)
	s.Write(context.Background(), b, "u", 0, 4, bytes.NewReader([]byte("b")), false)
	old := time.Now().Add(-48 * time.Hour)
	if err := os.Chtimes(s.partPath("u", a), old, old); err != nil {
		t.Fatal(err)
	}
	// A partial of the layout before upload sessions, shared by all.
	legacy := filepath.Join(s.dir, "partial", sum([]byte("cccc")))
	os.WriteFile(legacy, []byte("c"), 0o640)
	os.Chtimes(legacy, old, old)
	n, err := s.Sweep(context.Background(), time.Now().Add(-24*time.Hour))
	if err != nil || n != 2 {
		t.Fatalf("swept %d %v, want 2", n, err)
	}
	if s.Received(a, "u") != 0 || s.Received(b, "u") != 1 {
		t.Fatalf("after sweep: a %d b %d", s.Received(a, "u"), s.Received(b, "u"))
	}
	if _, err := os.Stat(legacy); err == nil {
		t.Fatal("legacy partial stayed")
	}
	// A busy session is never swept, however old.
	os.Chtimes(s.partPath("u", b), old, old)
	if _, ok, err := s.claim(context.Background(), s.partPath("u", b)); !ok || err != nil {
		t.Fatalf("claim: %v %v", ok, err)
	}
	if n, _ := s.Sweep(context.Background(), time.Now()); n != 0 {
		t.Fatalf("swept a busy session")
	}
}
