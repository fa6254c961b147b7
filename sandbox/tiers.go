package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"

	"github.com/kiln-build/kiln/errdefs"
)

// Tiers is a Launcher that hands each sandbox to the launcher of its
// Spec.Isolation: By[isolation] when there is one, Default for "" and the
// isolations Default offers (container; gvisor where runsc is installed),
// and refuses any other isolation, so that a run never gets
// weaker isolation than it asked for. Reap reaps in every launcher;
// Attach is Default's, so a run of another tier is not reattached after
// a restart (it is reaped and requeued instead).
type Tiers struct {
	Default Launcher
	By      map[string]Launcher
	// Unavailable says why an isolation this host does not offer is
	// missing (e.g. "vm": "qemu-system-x86_64 not found"), for the error
	// a run asking for it gets.
	Unavailable map[string]error
}

var (
	_ Launcher = (*Tiers)(nil)
	_ Attacher = (*Tiers)(nil)
	_ Isolator = (*Tiers)(nil)
	_ Preparer = (*Tiers)(nil)
)

// Isolations lists Default's isolations, then those of By, sorted.
func (t *Tiers) Isolations() []string {
	out := slices.Clone(Isolations(t.Default))
	names := make([]string, 0, len(t.By))
	for n := range t.By {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

// Start starts spec on the launcher of its isolation.
func (t *Tiers) Start(ctx context.Context, spec Spec) (Sandbox, error) {
	if l, ok := t.By[spec.Isolation]; ok {
		return l.Start(ctx, spec)
	}
	if spec.Isolation == "" || slices.Contains(Isolations(t.Default), spec.Isolation) {
		return t.Default.Start(ctx, spec)
	}
	if err, ok := t.Unavailable[spec.Isolation]; ok {
		return nil, fmt.Errorf("isolation %q is not available on this host: %w", spec.Isolation, err)
	}
	return nil, fmt.Errorf("isolation %q is not available on this host: %w", spec.Isolation, errdefs.ErrUnsupported)
}

// Prepare is Default's, for the isolations Default offers.
func (t *Tiers) Prepare(ctx context.Context, spec Spec) (Prepared, error) {
	p, ok := t.Default.(Preparer)
	if _, other := t.By[spec.Isolation]; !ok || other || (spec.Isolation != "" && !slices.Contains(Isolations(t.Default), spec.Isolation)) {
		return nil, fmt.Errorf("warm task: isolation %q: %w", spec.Isolation, errdefs.ErrUnsupported)
	}
	return p.Prepare(ctx, spec)
}

// Reap reaps in every launcher.
func (t *Tiers) Reap(ctx context.Context, keep func(runID string) bool) error {
	errs := []error{t.Default.Reap(ctx, keep)}
	names := make([]string, 0, len(t.By))
	for n := range t.By {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := t.By[n].Reap(ctx, keep); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

// Attach is Default's.
func (t *Tiers) Attach(ctx context.Context, runID string, console io.Writer) (Sandbox, error) {
	a, ok := t.Default.(Attacher)
	if !ok {
		return nil, fmt.Errorf("reattach: launcher cannot attach: %w", errdefs.ErrUnsupported)
	}
	return a.Attach(ctx, runID, console)
}
