package worker_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/internal/testsupport"
)

// benchClientEnv makes the test binary BenchmarkQueue's API client instead
// of running tests: the benchmark drives the queue through the real HTTP
// API from a separate process, as a CI system would, so that the client's
// CPU is its own and none of it hides in the benchmark process.
const benchClientEnv = "KILN_BENCH_CLIENT"

func TestMain(m *testing.M) {
	if os.Getenv(benchClientEnv) == "1" {
		os.Exit(serveBenchClient(os.Stdin, os.Stdout))
	}
	os.Exit(m.Run())
}

// serveBenchClient reads commands, one a line, and answers each with lines
// ending in "ok" or "err MESSAGE":
//
//	batch JOB N    execute JOB N times at once, wait for every run to succeed
//	latency JOB N [GAP]
//	               N times one after the other (GAP, a Go duration, apart):
//	               note the time, execute JOB, wait for it; answers
//	               "run ID API_NS FIRST_NS" per run:
//	               CLOCK_REALTIME just before the API call, and the job's
//	               first instruction (the job prints T=<microseconds>)
func serveBenchClient(in io.Reader, out io.Writer) int {
	c := api.NewClient(os.Getenv("KILN_SERVER"), os.Getenv("KILN_TOKEN"))
	w := bufio.NewWriter(out)
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		err := benchCommand(context.Background(), c, strings.Fields(sc.Text()), w)
		if err != nil {
			fmt.Fprintf(w, "err %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		} else {
			fmt.Fprintln(w, "ok")
		}
		if err := w.Flush(); err != nil {
			return 1
		}
	}
	return 0
}

func benchCommand(ctx context.Context, c *api.Client, f []string, w io.Writer) error {
	if len(f) != 3 && len(f) != 4 {
		return fmt.Errorf("want COMMAND JOB N [GAP], got %q", f)
	}
	job := f[1]
	n, err := strconv.Atoi(f[2])
	if err != nil {
		return err
	}
	var gap time.Duration
	if len(f) == 4 {
		if gap, err = time.ParseDuration(f[3]); err != nil {
			return err
		}
	}
	wait := func(id string, console io.Writer) error {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		r, err := c.FollowLog(ctx, id, console)
		if err != nil {
			return fmt.Errorf("run %s: %w", id, err)
		}
		if r.State != api.StateSucceeded {
			return fmt.Errorf("run %s: %s %s", id, r.State, r.Error)
		}
		return nil
	}
	switch f[0] {
	case "batch":
		var ids []string
		for range n {
			r, err := c.ExecuteJobWith(ctx, job, api.ExecuteRequest{})
			if err != nil {
				return err
			}
			ids = append(ids, r.ID)
		}
		// Following a run's log returns when it ends: no polling.
		for _, id := range ids {
			if err := wait(id, io.Discard); err != nil {
				return err
			}
		}
		return nil
	case "latency":
		for i := range n {
			if i > 0 {
				time.Sleep(gap)
			}
			start := time.Now()
			r, err := c.ExecuteJobWith(ctx, job, api.ExecuteRequest{})
			if err != nil {
				return err
			}
			var console strings.Builder
			if err := wait(r.ID, &console); err != nil {
				return err
			}
			first, ok := parseStamp(console.String())
			if !ok {
				return fmt.Errorf("run %s: no T= line in its console %q", r.ID, console.String())
			}
			fmt.Fprintf(w, "run %s %d %d\n", r.ID, start.UnixNano(), first.UnixNano())
		}
		return nil
	}
	return fmt.Errorf("unknown command %q", f[0])
}

// parseStamp finds the T=<microseconds since the epoch> line a stamp job
// prints.
func parseStamp(console string) (time.Time, bool) {
	for _, l := range strings.Split(console, "\n") {
		if v, ok := strings.CutPrefix(l, "T="); ok {
			if us, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
				return time.UnixMicro(us), true
			}
		}
	}
	return time.Time{}, false
}

// benchClient is a client process (serveBenchClient) the benchmark talks
// to over its stdin and stdout.
type benchClient struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startBenchClient(b *testing.B, srv *testsupport.TestServer) *benchClient {
	b.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), benchClientEnv+"=1", "KILN_SERVER="+srv.URL, "KILN_TOKEN="+srv.AdminToken())
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { in.Close(); _ = cmd.Wait() })
	return &benchClient{cmd: cmd, in: in, out: bufio.NewScanner(out)}
}

// do sends one command and returns the lines of its answer before "ok".
// Safe to call from any goroutine (it does not fail the benchmark), but
// one command at a time per client.
func (c *benchClient) do(command string) ([]string, error) {
	if _, err := fmt.Fprintln(c.in, command); err != nil {
		return nil, err
	}
	var lines []string
	for c.out.Scan() {
		l := c.out.Text()
		switch {
		case l == "ok":
			return lines, nil
		case strings.HasPrefix(l, "err "):
			return lines, fmt.Errorf("client: %s: %s", command, l[4:])
		}
		lines = append(lines, l)
	}
	if err := c.out.Err(); err != nil {
		return lines, err
	}
	return lines, errors.New("client process exited")
}
