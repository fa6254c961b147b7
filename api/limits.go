package api

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Limits bound one run on a host. A zero field sets no bound. A host
// reports its maxima in Facts.Limits; a job asking more than a maximum is
// never leased to that host.
type Limits struct {
	Memory  Size     `json:"memory,omitempty"`
	CPUs    float64  `json:"cpus,omitempty"`
	Pids    int64    `json:"pids,omitempty"`
	Timeout Duration `json:"timeout,omitempty"`
	Disk    Size     `json:"disk,omitempty"`
}

// ErrOverLimit: a job asks for more than a host allows.
var ErrOverLimit = errors.New("over the host's limit")

// LimitsOn returns the limits a run of j gets on a host with defaults def
// and maxima maxima: what it asks for, the defaults for the rest. A job
// asking more than a maximum gets an error wrapping ErrOverLimit that
// names the resource, e.g. "memory=64GiB (max 16GiB)".
func (j *Job) LimitsOn(def, maxima Limits) (Limits, error) {
	asked := j.Asked()
	if over := asked.Over(maxima); over != "" {
		return Limits{}, fmt.Errorf("job asks for %s: %w", over, ErrOverLimit)
	}
	return asked.Or(def), nil
}

// Asked is what job j asks for, as Limits; zero where it asks for nothing
// (the host's default then applies).
func (j *Job) Asked() Limits {
	return Limits{
		Memory:  j.Resources.Memory,
		CPUs:    j.Resources.CPUs,
		Pids:    j.Resources.Pids,
		Timeout: j.Timeout,
		Disk:    j.Resources.Disk,
	}
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
