// Package errdefs holds kiln's host-side error classes, in the way of
// containerd's errdefs: backends wrap one of these with %w and callers
// check the class with errors.Is, whatever the backend. It is a leaf
// package so that storage, launchers and qemu share the classes without
// importing each other.
package errdefs

import "errors"

// Sentinel errors, checked with errors.Is.
var (
	// ErrNotFound: the image, snapshot, clone or sandbox does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists: a thing with that name already exists (or is being built).
	ErrExists = errors.New("already exists")
	// ErrInvalid: the caller passed a bad name, path or spec.
	ErrInvalid = errors.New("invalid")
	// ErrBusy: the thing is in use (a run holds it, or a dataset is busy).
	ErrBusy = errors.New("busy")
	// ErrUnsupported: this host cannot do what was asked (missing arch
	// handler, backend not available on this OS).
	ErrUnsupported = errors.New("unsupported")
)
