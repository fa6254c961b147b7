package testsupport

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// EnrollWorker creates an enrollment token on srv and enrolls h as name.
func EnrollWorker(t testing.TB, srv *TestServer, h *Host, serverURL, name, labels string) {
	t.Helper()
	var ca []string
	if srv.CAFile != "" {
		ca = []string{"--tls-ca", srv.CAFile}
	}
	args := append([]string{"host", "token", "create", "--server", srv.URL, "--token", srv.AdminToken()}, ca...)
	if labels != "" {
		args = append(args, "--labels", labels)
	}
	out, err := exec.Command(h.Bin, args...).Output()
	if err != nil {
		t.Fatalf("host token create: %v", err)
	}
	token := strings.TrimSpace(string(out))
	h.MustKiln(t, append([]string{"worker", "enroll", "--server", serverURL, "--token", token, "--name", name}, ca...)...)
}

// Process is a kiln daemon started by a test.
type Process struct {
	t       testing.TB
	args    []string
	bin     string
	LogPath string
	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
}

// StartWorker runs `kiln worker run` for h, with extra arguments (e.g.
// "-v" for debug logs); at cleanup it gets SIGTERM, so that it drains and
// destroys its warm clones (SIGKILL after a minute).
func StartWorker(t testing.TB, h *Host, extra ...string) *Process {
	t.Helper()
	args := append([]string{"worker", "run", "--config", h.ConfigPath}, extra...)
	p := &Process{t: t, bin: h.Bin, args: args, LogPath: filepath.Join(h.Dir, "worker.log")}
	p.Start()
	t.Cleanup(p.Term)
	return p
}

// Start (re)starts the process.
func (p *Process) Start() {
	p.t.Helper()
	logf, err := os.OpenFile(p.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
}

// Pid is the running process's pid.
func (p *Process) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd.Process.Pid
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Process) Kill() { p.signal(syscall.SIGKILL) }

// Term sends SIGTERM and waits (up to a minute) for the process to exit.
func (p *Process) Term() { p.signal(syscall.SIGTERM) }

func (p *Process) signal(sig syscall.Signal) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(time.Minute):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// Wait waits for the process to end by itself and returns its exit code.
func (p *Process) Wait() int {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	<-done
	return cmd.ProcessState.ExitCode()
}

// Log is what the process wrote so far.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// Proxy is a TCP proxy on 127.0.0.1 the test can cut and restore, to
// simulate a network partition between a worker and the server.
type Proxy struct {
	Addr   string
	target string
	ln     net.Listener
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
}

// StartProxy forwards a new 127.0.0.1 port to target (host:port).
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: ln.Addr().String(), target: target, ln: ln, conns: map[net.Conn]struct{}{}}
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.Cut() })
	return p
}

func (p *Proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

func (p *Proxy) pipe(dst, src net.Conn) {
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// Cut drops every connection and refuses new ones until Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
}

// Restore lets connections through again.
func (p *Proxy) Restore() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}
