package api

import (
	"errors"
	"fmt"

	"github.com/kiln-build/kiln/units"
)

// Limits bound one run on a host (units.Limits, encoded as ever).
type Limits = units.Limits

// Size is a byte count written as "2GiB", "512M" or a plain number.
type Size = units.Size

// Duration is a time.Duration written as "30m" in TOML and JSON.
type Duration = units.Duration

// ParseSize parses "2GiB", "512MiB", "1G" (=GiB), "100k", "4096".
func ParseSize(s string) (Size, error) { return units.ParseSize(s) }

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
