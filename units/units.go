// Package units holds the quantities a run is bounded by: byte sizes,
// durations and the per-run limits made of them. It imports no kiln
// package, so that the wire types (api), the host config and the sandbox
// layer can share them without the sandbox importing the wire protocol;
// api re-exports them under their old names, encoded identically.
package units

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Duration is a time.Duration written as "30m" in TOML and JSON.
type Duration time.Duration

// UnmarshalText parses "90s", "30m", "2h"; a duration must be positive.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("bad duration %q (want e.g. 90s, 30m, 2h)", b)
	}
	if v <= 0 {
		return fmt.Errorf("duration %q must be positive", b)
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes d as time.Duration.String does.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// Size is a byte count written as "2GiB", "512M" or a plain number.
type Size int64

var sizeRe = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)\s*([KMGT]I?B?|B)?$`)

// ParseSize parses "2GiB", "512MiB", "1G" (=GiB), "100k", "4096".
func ParseSize(s string) (Size, error) {
	m := sizeRe.FindStringSubmatch(strings.TrimSpace(strings.ToUpper(s)))
	if m == nil {
		return 0, fmt.Errorf("bad size %q (want e.g. 512MiB, 2GiB)", s)
	}
	f, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, fmt.Errorf("bad size %q", s)
	}
	mult := float64(1)
	if m[2] != "" && m[2] != "B" {
		mult = map[byte]float64{'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}[m[2][0]]
	}
	return Size(f * mult), nil
}

// UnmarshalText parses s as ParseSize does.
func (s *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// MarshalText writes s as a plain number of bytes.
func (s Size) MarshalText() ([]byte, error) { return []byte(strconv.FormatInt(int64(s), 10)), nil }

// String writes s for people: "16GiB", "1.5GiB", "512MiB", "100B".
func (s Size) String() string {
	for _, u := range []struct {
		name string
		n    Size
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if s >= u.n {
			v := strconv.FormatFloat(float64(s)/float64(u.n), 'f', 2, 64)
			return strings.TrimSuffix(strings.TrimRight(v, "0"), ".") + u.name
		}
	}
	return strconv.FormatInt(int64(s), 10) + "B"
}

// Limits bound one run on a host. A zero field sets no bound. A host
// reports its maxima in api.Facts.Limits; a job asking more than a maximum
// is never leased to that host.
type Limits struct {
	Memory  Size     `json:"memory,omitempty"`
	CPUs    float64  `json:"cpus,omitempty"`
	Pids    int64    `json:"pids,omitempty"`
	Timeout Duration `json:"timeout,omitempty"`
	Disk    Size     `json:"disk,omitempty"`
}

// Over names the first resource of l that maxima does not allow, as
// "memory=64GiB (max 16GiB)"; "" when maxima allows all of l.
func (l Limits) Over(maxima Limits) string {
	switch {
	case maxima.Memory > 0 && l.Memory > maxima.Memory:
		return fmt.Sprintf("memory=%s (max %s)", l.Memory, maxima.Memory)
	case maxima.CPUs > 0 && l.CPUs > maxima.CPUs:
		return fmt.Sprintf("cpus=%g (max %g)", l.CPUs, maxima.CPUs)
	case maxima.Pids > 0 && l.Pids > maxima.Pids:
		return fmt.Sprintf("pids=%d (max %d)", l.Pids, maxima.Pids)
	case maxima.Timeout > 0 && l.Timeout > maxima.Timeout:
		return fmt.Sprintf("timeout=%s (max %s)", l.Timeout.Std(), maxima.Timeout.Std())
	case maxima.Disk > 0 && l.Disk > maxima.Disk:
		return fmt.Sprintf("disk=%s (max %s)", l.Disk, maxima.Disk)
	}
	return ""
}

// Or fills the zero fields of l from def: what a run gets when it asks for
// some resources and the host's defaults give the rest.
func (l Limits) Or(def Limits) Limits {
	if l.Memory == 0 {
		l.Memory = def.Memory
	}
	if l.CPUs == 0 {
		l.CPUs = def.CPUs
	}
	if l.Pids == 0 {
		l.Pids = def.Pids
	}
	if l.Timeout == 0 {
		l.Timeout = def.Timeout
	}
	if l.Disk == 0 {
		l.Disk = def.Disk
	}
	return l
}
