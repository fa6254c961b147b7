package linux

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// idRanges hands out host id ranges.
//
// A record is stale, and its range free again, when no start holds it and
// the idmapped mounts of its container are gone from idmaps: they are made
// while the record is held and removed only after the container's
// processes are dead (Delete, Reap, `kiln host gc`), just before the
// record itself. This is what frees, whoever's they are, the records of a
// process that died between the two, and of data dirs gone for good.
type idRanges struct {
	dir    string
	idmaps string // where each container's idmapped mounts are (idmapDir)
	daemon string // "<containerd address> <namespace>"
	owner  string // daemon + " " + the data dir's owner: whose records these are
}

func newIDRanges(dir, idmaps, address, namespace, owner string) idRanges {
	daemon := address + " " + namespace
	return idRanges{dir: dir, idmaps: idmaps, daemon: daemon, owner: daemon + " " + owner}
}

// of is r for the records of another owner of the same daemon.
func (r idRanges) of(owner string) idRanges {
	r.owner = r.daemon + " " + owner
	return r
}

// acquire reserves a free range for container id. The record stays
// flocked through hold until the caller closes it, once the container
// exists (or the start failed): live lists the containers of this owner
// that exist, and a record of this owner that names none of them and is
// not held (a start in progress, here or in another process) is left by a
// crash and taken back first, as is every stale record (see idRanges).
func (r idRanges) acquire(ctx context.Context, id string, live func(context.Context) (map[string]bool, error)) (base uint32, hold *os.File, err error) {
	unlock, err := r.lock()
	if err != nil {
		return 0, nil, err
	}
	defer unlock()
	recs, err := r.records()
	if err != nil {
		return 0, nil, err
	}
	used := map[int]bool{}
	var alive map[string]bool
	for _, rec := range recs {
		if r.stale(rec) {
			_ = os.Remove(rec.path)
			continue
		}
		if rec.owner == r.owner {
			if alive == nil {
				if alive, err = live(ctx); err != nil {
					return 0, nil, err
				}
			}
			if !alive[rec.ctr] && !held(rec.path) {
				_ = os.Remove(rec.path)
				continue
			}
		}
		used[rec.n] = true
	}
	for n := 0; n < usernsRanges; n++ {
		if used[n] {
			continue
		}
		f, err := os.OpenFile(filepath.Join(r.dir, strconv.Itoa(n)), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return 0, nil, fmt.Errorf("user namespace ranges: %w", err)
		}
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err == nil {
			_, err = f.WriteString(r.owner + "\n" + id + "\n")
		}
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			return 0, nil, fmt.Errorf("user namespace ranges: %w", err)
		}
		return usernsBase + uint32(n)*usernsSize, f, nil
	}
	return 0, nil, fmt.Errorf("user namespace ranges: all %d in use", usernsRanges)
}

// rangeRecord is one range record: range n, held for container ctr of
// owner ("<address> <namespace> <owner>").
type rangeRecord struct {
	n          int
	path       string
	owner, ctr string
}

// records reads every range record. The caller holds the lock.
func (r idRanges) records() ([]rangeRecord, error) {
	ents, err := os.ReadDir(r.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("user namespace ranges: %w", err)
	}
	var out []rangeRecord
	for _, e := range ents {
		if rec, ok := r.record(e.Name()); ok {
			out = append(out, rec)
		}
	}
	return out, nil
}

// record reads the record named name ("<n>"); false if there is none.
func (r idRanges) record(name string) (rangeRecord, bool) {
	n, err := strconv.Atoi(name)
	if err != nil || n < 0 || n >= usernsRanges || strconv.Itoa(n) != name {
		return rangeRecord{}, false
	}
	path := filepath.Join(r.dir, name)
	b, err := os.ReadFile(path)
	if err != nil {
		return rangeRecord{}, false
	}
	owner, ctr, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return rangeRecord{n: n, path: path, owner: owner, ctr: ctr}, true
}

// stale reports whether nothing uses rec's range any more (see idRanges).
func (r idRanges) stale(rec rangeRecord) bool {
	_, err := os.Lstat(r.idmapsOf(rec.owner, rec.ctr))
	return errors.Is(err, fs.ErrNotExist) && !held(rec.path)
}

// lock takes the host-wide lock on the records.
func (r idRanges) lock() (unlock func(), err error) {
	if err := os.Mkdir(r.dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("user namespace ranges: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(r.dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("user namespace ranges: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		lock.Close()
		return nil, fmt.Errorf("user namespace ranges: lock: %w", err)
	}
	return func() { lock.Close() }, nil // closing releases the flock
}

// StaleRange is a user namespace range whose record outlived everything
// that used the range (see idRanges), for `kiln host gc`.
type StaleRange struct {
	Range     int    // n: host ids 2^30 + n*65536 up
	Owner     string // the owner identity that took it
	Container string
}

// StaleRanges lists the stale range records on this host, of every owner.
func (c *Containerd) StaleRanges() ([]StaleRange, error) {
	unlock, err := c.ranges.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	recs, err := c.ranges.records()
	if err != nil {
		return nil, err
	}
	var out []StaleRange
	for _, rec := range recs {
		if c.ranges.stale(rec) {
			owner := rec.owner
			if i := strings.LastIndexByte(owner, ' '); i >= 0 {
				owner = owner[i+1:]
			}
			out = append(out, StaleRange{Range: rec.n, Owner: owner, Container: rec.ctr})
		}
	}
	return out, nil
}

// FreeStaleRange removes the record of range n if it is still stale. No
// record, or one that is live (a start took the range meanwhile, after
// dropping the stale record), is success: the leftover is gone.
func (c *Containerd) FreeStaleRange(n int) error {
	unlock, err := c.ranges.lock()
	if err != nil {
		return err
	}
	defer unlock()
	rec, ok := c.ranges.record(strconv.Itoa(n))
	if !ok {
		return nil
	}
	if !c.ranges.stale(rec) {
		return nil
	}
	if err := os.Remove(rec.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("user namespace range %d: %w", n, err)
	}
	return nil
}

// idmapsOf is the directory of container ctr's idmapped mounts, whose
// range record names owner.
func (r idRanges) idmapsOf(owner, ctr string) string {
	return filepath.Join(r.idmaps, ownerHash(owner)+"-"+ctr)
}

// held reports whether a range record is flocked by a start in progress.
func held(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return true
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}

// release frees the range at base if container id holds it.
func (r idRanges) release(base uint32, id string) {
	if base < usernsBase {
		return
	}
	p := filepath.Join(r.dir, strconv.Itoa(int((base-usernsBase)/usernsSize)))
	if rec, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(rec)) == r.owner+"\n"+id {
		_ = os.Remove(p)
	}
}

// ownerHash names an owner's idmap directories short and path-safe.
func ownerHash(owner string) string {
	sum := sha256.Sum256([]byte(owner))
	return hex.EncodeToString(sum[:4])
}
