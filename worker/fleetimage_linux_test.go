package worker

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/images"
	"github.com/kiln-build/kiln/internal/testsupport"
	"github.com/kiln-build/kiln/linux/treestore"
	"github.com/kiln-build/kiln/sandbox"
)

// fleetStore is the host's fleet image store over a real overlay tree
// store, as cmd/kiln wires it.
type fleetStore struct {
	m    *images.Manager
	keep int
}

func fleetVersionOf(v api.ImageVersion) images.FleetVersion {
	return images.FleetVersion{Name: v.Name, Version: v.Version, Arch: v.Arch, OS: v.OS, TarDigest: v.TarDigest, TarSize: v.TarSize}
}

func (s fleetStore) Find(ctx context.Context, v api.ImageVersion) (string, bool, error) {
	snap, ok, err := s.m.FindFleet(ctx, fleetVersionOf(v))
	return snap.Ref(), ok, err
}

func (s fleetStore) Import(ctx context.Context, v api.ImageVersion, r io.Reader) (string, error) {
	snap, _, err := s.m.ImportFleet(ctx, fleetVersionOf(v), r, images.ImportOptions{})
	return snap.Ref(), err
}

func (s fleetStore) Prune(ctx context.Context, name string, protect func(string) bool) error {
	return s.m.PruneFleet(ctx, name, s.keep, func(sn images.Snapshot) bool { return protect(sn.TarDigest) })
}

func (s fleetStore) Digests(ctx context.Context) ([]string, error) {
	snaps, err := s.m.FleetSnapshots(ctx)
	out := []string{}
	for _, sn := range snaps {
		out = append(out, sn.TarDigest)
	}
	return out, err
}

// resolver resolves refs through the manager, as the worker's Images do.
type resolver struct{ m *images.Manager }

func (r resolver) Resolve(ctx context.Context, ref string) (string, string, error) {
	s, err := r.m.Resolve(ctx, ref)
	return s.Ref(), s.Arch, err
}
func (resolver) Facts(context.Context) ([]api.ImageFact, error) { return nil, nil }

// blobServer is a fake for leases and results whose blob downloads go to
// a real kiln server process, counted, and cut off once if cutAt > 0.
type blobServer struct {
	fakeServer
	real    *api.Client
	calls   atomic.Int64
	bytes   atomic.Int64
	offsets chan int64
	cutAt   atomic.Int64 // cut the next download after this many bytes
}

var errCut = errors.New("connection cut (test)")

func (b *blobServer) DownloadBlobFrom(ctx context.Context, sha string, offset int64, w io.Writer) (int64, error) {
	b.calls.Add(1)
	select {
	case b.offsets <- offset:
	default:
	}
	cw := &countingWriter{w: w, n: &b.bytes}
	if cut := b.cutAt.Swap(0); cut > 0 {
		n, err := b.real.DownloadBlobFrom(ctx, sha, offset, &cutWriter{w: cw, left: cut})
		if err == nil {
			err = errCut
		}
		return n, err
	}
	return b.real.DownloadBlobFrom(ctx, sha, offset, cw)
}

type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

type cutWriter struct {
	w    io.Writer
	left int64
}

func (c *cutWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > c.left {
		n, _ := c.w.Write(p[:c.left])
		c.left = 0
		return n, errCut
	}
	n, err := c.w.Write(p)
	c.left -= int64(n)
	return n, err
}

// fleetEnv is a real server holding one packed image version, and a
// worker on a real overlay store that has not got it.
type fleetEnv struct {
	srv     *blobServer
	w       *Worker
	logs    *syncBuffer
	mgr     *images.Manager
	storage string
	v       api.ImageVersion
	blob    []byte
}

func newFleetEnv(t *testing.T, mod func(*Config)) *fleetEnv {
	t.Helper()
	testsupport.NeedRoot(t)
	ctx := context.Background()
	ts := testsupport.StartServer(t)
	admin := ts.Client()

	// A tree of 2 MiB that does not compress, so the blob is that large.
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 2<<20)
	_, _ = rand.Read(data)
	if err := os.WriteFile(filepath.Join(src, "bin/payload"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	var z bytes.Buffer
	st, err := images.Pack(ctx, src, &z, images.PackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(z.Bytes())
	v := api.ImageVersion{Name: "base", Version: 1, Arch: "amd64", OS: "linux", TarDigest: st.TarDigest, TarSize: st.TarSize,
		Blob: hex.EncodeToString(sum[:]), BlobSize: int64(z.Len())}
	if err := admin.UploadBlob(ctx, v.Blob, bytes.NewReader(z.Bytes()), v.BlobSize); err != nil {
		t.Fatal(err)
	}

	e := &fleetEnv{v: v, blob: z.Bytes()}
	e.storage = filepath.Join(t.TempDir(), "storage")
	backend, err := treestore.NewOverlay(e.storage)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	e.mgr = images.NewManager(backend, filepath.Join(dir, "images"), images.Options{})
	e.srv = &blobServer{real: admin, offsets: make(chan int64, 16)}
	e.w, e.logs = newTestWorker(t, e.srv, &fakeExec{}, resolver{e.mgr}, func(c *Config) {
		c.DataDir = dir
		c.Fleet = fleetStore{m: e.mgr, keep: 2}
		if mod != nil {
			mod(c)
		}
	})
	return e
}

func (e *fleetEnv) part() string {
	return filepath.Join(e.w.cfg.DataDir, "images", "fetch", e.v.Blob+".part")
}

func TestFleetImageFetchedOnceAcrossSlots(t *testing.T) {
	var started atomic.Int64
	e := newFleetEnv(t, func(c *Config) {
		c.FetchStarted = func(runID string, v api.ImageVersion) { started.Add(1) }
	})
	ctx := context.Background()
	refs := make([]string, 4)
	var wg sync.WaitGroup
	for i := range refs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ref, done, err := e.w.fleet.ensure(ctx, "r"+string(rune('0'+i)), e.v, nil)
			if err != nil {
				t.Errorf("run %d: %v", i, err)
				return
			}
			done()
			refs[i] = ref
		}()
	}
	wg.Wait()
	if got := e.srv.bytes.Load(); got != e.v.BlobSize {
		t.Fatalf("four runs downloaded %d bytes, want one fetch of %d", got, e.v.BlobSize)
	}
	for _, r := range refs {
		if r != refs[0] || !strings.HasPrefix(r, "fleet.base@v000001-") {
			t.Fatalf("refs %v", refs)
		}
	}
	if started.Load() < 1 {
		t.Fatal("the fetch hook was not called")
	}
	// The next run costs nothing, and the blob is not kept.
	if _, done, err := e.w.fleet.ensure(ctx, "r9", e.v, nil); err != nil {
		t.Fatal(err)
	} else {
		done()
	}
	if e.srv.calls.Load() != 1 {
		t.Fatalf("%d downloads, want 1", e.srv.calls.Load())
	}
	if _, err := os.Stat(e.part()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the downloaded blob was left: %v", err)
	}
	f, err := e.w.facts(ctx)
	if err != nil || len(f.FleetImages) != 1 || f.FleetImages[0] != e.v.TarDigest {
		t.Fatalf("facts report fleet images %v (%v), want [%s]", f.FleetImages, err, e.v.TarDigest)
	}
}

// A worker SIGKILLed mid-fetch leaves a partial file; the next one
// resumes from it, and a connection cut mid-way resumes too.
func TestFleetImageFetchResumes(t *testing.T) {
	e := newFleetEnv(t, nil)
	ctx := context.Background()
	have := e.v.BlobSize * 2 / 5
	if err := os.MkdirAll(filepath.Dir(e.part()), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.part(), e.blob[:have], 0o600); err != nil {
		t.Fatal(err)
	}
	e.srv.cutAt.Store(100 << 10)
	_, done, err := e.w.fleet.ensure(ctx, "r1", e.v, nil)
	if err != nil {
		t.Fatal(err)
	}
	done()
	if first := <-e.srv.offsets; first != have {
		t.Fatalf("the first download started at %d, want %d (the partial file)", first, have)
	}
	if second := <-e.srv.offsets; second != have+100<<10 {
		t.Fatalf("after the cut the download started at %d, want %d", second, have+100<<10)
	}
	if got := e.srv.bytes.Load(); got != e.v.BlobSize-have {
		t.Fatalf("downloaded %d bytes, want the %d missing", got, e.v.BlobSize-have)
	}
}

// A partial file that is not the blob's start is found out by the digest,
// thrown away and fetched anew.
func TestFleetImageCorruptPartialRefetched(t *testing.T) {
	e := newFleetEnv(t, nil)
	if err := os.MkdirAll(filepath.Dir(e.part()), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.part(), bytes.Repeat([]byte{0}, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	_, done, err := e.w.fleet.ensure(context.Background(), "r1", e.v, nil)
	if err != nil {
		t.Fatal(err)
	}
	done()
	if !strings.Contains(e.logs.String(), "discarded") {
		t.Fatalf("the log does not say the bad download was discarded:\n%s", e.logs)
	}
	if got := e.srv.bytes.Load(); got != e.v.BlobSize-4096+e.v.BlobSize {
		t.Fatalf("downloaded %d bytes, want the rest and then the whole blob", got)
	}
}

// A manifest whose tar digest the blob does not have: nothing is made,
// nothing is kept, and the error says so.
func TestFleetImageDigestMismatchRefused(t *testing.T) {
	e := newFleetEnv(t, nil)
	bad := e.v
	bad.TarDigest = "sha256:" + strings.Repeat("0", 64)
	_, _, err := e.w.fleet.ensure(context.Background(), "r1", bad, nil)
	if err == nil || !strings.Contains(err.Error(), "discarded") || !strings.Contains(err.Error(), "base@1") {
		t.Fatalf("err = %v", err)
	}
	if d, _ := e.w.cfg.Fleet.Digests(context.Background()); len(d) != 0 {
		t.Fatalf("a refused version is held: %v", d)
	}
	if _, err := os.Stat(e.part()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the refused blob was kept: %v", err)
	}
	ents, _ := os.ReadDir(filepath.Join(e.storage, "builds"))
	for _, en := range ents {
		if en.IsDir() {
			t.Fatalf("a build area was left: %s", en.Name())
		}
	}
}

// A leased run pinned to a server-held version runs on its snapshot and
// reports it.
func TestFleetImageRunUsesSnapshot(t *testing.T) {
	res := newResults()
	var snapshot atomic.Value
	e := newFleetEnv(t, nil)
	a := job("7")
	a.Job.Image = "base"
	v := e.v
	a.Image = &v
	e.srv.LeaseFunc = leaseOnce(a)
	e.srv.ReportResultFunc = res.report
	e.srv.AppendLogFunc = res.appendLog
	e.w.cfg.Exec.(*fakeExec).RunFunc = func(ctx context.Context, req sandbox.Request) (sandbox.Result, error) {
		snapshot.Store(req.Snapshot)
		if req.Cloned != nil {
			req.Cloned()
		}
		return sandbox.Result{}, nil
	}
	stop := runWorker(e.w)
	var got api.ResultRequest
	select {
	case got = <-res.got:
	case <-time.After(2 * time.Minute):
		t.Fatal("no result")
	}
	_ = stop()
	if got.Error != "" || !strings.HasPrefix(got.Snapshot, "fleet.base@v000001-") || snapshot.Load() != got.Snapshot {
		t.Fatalf("result %+v, ran on %v", got, snapshot.Load())
	}
}

// Without a fleet store a pinned run is refused with the reason.
func TestFleetImageWithoutStoreRefused(t *testing.T) {
	w, _ := newTestWorker(t, &fakeServer{}, &fakeExec{}, oneImage{}, nil)
	a := job("8")
	a.Image = &api.ImageVersion{Name: "base", Version: 1}
	if _, _, err := w.fleetImage(context.Background(), a); err == nil || !strings.Contains(err.Error(), "base@1") {
		t.Fatalf("err = %v", err)
	}
}
