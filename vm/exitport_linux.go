package vm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// exitPortName names the virtio-serial port the guest's init sends the
// job's exit status on (found in the guest under /sys/class/virtio-ports).
const exitPortName = "kiln.exit"

// exitPortMax is more than the longest status the init sends ("255\n"):
// what the guest sends beyond it is counted, never kept.
const exitPortMax = 16

// exitReport is what came out of the exit port: its first exitPortMax
// bytes and how many there were in all.
type exitReport struct {
	head []byte
	n    int64
	err  error // reading the pipe failed
}

// readExitPort reads the host end of the exit port until qemu closes it.
// The guest (the job is root in it) may write anything there, forever:
// past the head the bytes are drained and counted, so neither memory nor
// qemu (a full socket would stall the port) depends on what the guest
// sends. A first line that fits in the head is acknowledged with "\n":
// a guest's write returns before qemu has taken the bytes, and the init
// waits for the ack before it reboots the guest.
func readExitPort(rw io.ReadWriter) exitReport {
	var rep exitReport
	acked := false
	buf := make([]byte, 4096)
	for {
		n, err := rw.Read(buf)
		if keep := min(n, exitPortMax-len(rep.head)); keep > 0 {
			rep.head = append(rep.head, buf[:keep]...)
		}
		rep.n += int64(n)
		if !acked && rep.n <= exitPortMax && bytes.IndexByte(rep.head, '\n') >= 0 {
			acked = true
			_, _ = rw.Write([]byte("\n")) // a guest that is gone needs none
		}
		if errors.Is(err, io.EOF) {
			return rep
		}
		if err != nil {
			rep.err = err
			return rep
		}
	}
}

// code is the job's exit status, or an error that says what the guest
// sent instead.
func (r exitReport) code() (int, error) {
	switch {
	case r.err != nil:
		return 0, fmt.Errorf("reading the exit port: %w", r.err)
	case r.n == 0:
		return 0, errors.New("ended without an exit code: the guest stopped before its init reported the job's status (did the job reboot or power off the guest?)")
	case r.n > exitPortMax:
		return 0, fmt.Errorf("the guest sent %d bytes on the exit port (starting %q), not an exit status", r.n, r.head)
	}
	s := strings.TrimSuffix(string(r.head), "\n")
	code, err := strconv.Atoi(s)
	if err != nil || code < 0 || code > 255 || strconv.Itoa(code) != s {
		return 0, fmt.Errorf("the guest sent %q on the exit port, not an exit status", r.head)
	}
	return code, nil
}
