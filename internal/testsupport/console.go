package testsupport

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// Console is a sandbox console (or log sink) that a test reads while a
// sandbox writes to it. Safe for concurrent use.
type Console struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *Console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

// Notef writes a note as sandbox.Spool does (the launcher's notes).
func (c *Console) Notef(format string, a ...any) {
	_, _ = c.Write([]byte("[kiln] " + fmt.Sprintf(format, a...) + "\n"))
}

func (c *Console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// WaitFor polls c until it contains want: the writer has reached a known
// point. timeout only guards against a writer that never gets there (the
// test fails); it is nothing the test measures.
func (c *Console) WaitFor(t testing.TB, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(c.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("console never showed %q within %v; got:\n%s", want, timeout, c.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
