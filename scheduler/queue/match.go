package queue

import (
	"encoding/json"
	"slices"
	"strings"

	"github.com/kiln-build/kiln/api"
)

// Matches reports whether a host with facts may run job now: a free slot,
// and no Mismatch.
func Matches(j *api.Job, f *api.Facts) bool {
	return f.FreeSlots > 0 && Mismatch(j, f) == FitOK
}

// Fit is why a host cannot run a job, slots aside (FitOK: it can). The web
// view and Run.Waiting explain a queued run's wait with it, so it is the
// same test as the dispatcher's. The kinds are ordered by how far a host
// got: a greater one is a closer miss.
type Fit int

// The kinds of Fit, in the order Mismatch tests them.
const (
	FitOK Fit = iota
	FitOS
	FitArch
	FitNetwork
	FitIsolation
	FitCache // the host lacks a cache the job names
	FitImage
	FitLabel
	FitLimit // the job asks more than the host's maximum of a resource
)

// Mismatch is the first requirement of j that a host with facts f does not
// meet (FitOK for none).
func Mismatch(j *api.Job, f *api.Facts) Fit { return MismatchImage(j, nil, f) }

// MismatchImage is Mismatch for a run pinned to server-held image version
// pin (nil: none). A pinned run needs no image of the host's own: any host
// can fetch the version, so it fits by the version's os and arch (native,
// or through qemu-user) instead.
func MismatchImage(j *api.Job, pin *api.ImageVersion, f *api.Facts) Fit {
	if j.Constraints.OS != "" && j.Constraints.OS != f.OS || pin != nil && pin.OS != f.OS {
		return FitOS
	}
	arch := j.Arch
	if pin != nil {
		arch = pin.Arch
	}
	if arch != "" && arch != f.Arch && !slices.Contains(f.EmulatedArchs, arch) {
		return FitArch
	}
	if !f.OffersNetwork(j.Resources.Network.Mode()) {
		return FitNetwork
	}
	if !offersIsolation(f, j.Isolation) {
		return FitIsolation
	}
	for _, c := range j.Caches {
		if !slices.Contains(f.Caches, c) {
			return FitCache
		}
	}
	// An image build (api.ImageBuild) makes its image: it needs none.
	if pin == nil && j.ImageBuild == nil && !hasImage(j, f) {
		return FitImage
	}
	for k, v := range j.Constraints.Labels {
		if f.Labels[k] != v {
			return FitLabel
		}
	}
	if j.Asked().Over(f.Limits) != "" {
		return FitLimit
	}
	return FitOK
}

// hasImage reports whether f offers j's image for j's arch: a pinned
// "name@version" needs that version, an unpinned name any.
func hasImage(j *api.Job, f *api.Facts) bool {
	name, ver, pinned := strings.Cut(j.Image, "@")
	for _, im := range f.Images {
		if im.Name != name || (j.Arch != "" && im.Arch != "" && im.Arch != j.Arch) {
			continue
		}
		if pinned && slices.Contains(im.Versions, ver) || !pinned && len(im.Versions) > 0 {
			return true
		}
	}
	return false
}

// Refusal says, in words, why a host with facts can never run job (see
// Fit); overLimit is set when a resource over the host's maximum is the
// reason, which then reads e.g. "memory=64GiB (max 16GiB)". "" means it
// can.
func Refusal(j *api.Job, f *api.Facts) (reason string, overLimit bool) {
	return RefusalImage(j, nil, f)
}

// RefusalImage is Refusal for a run pinned to image version pin (nil:
// none; see MismatchImage).
func RefusalImage(j *api.Job, pin *api.ImageVersion, f *api.Facts) (reason string, overLimit bool) {
	switch MismatchImage(j, pin, f) {
	case FitOK:
		return "", false
	case FitOS:
		if pin != nil && pin.OS != f.OS {
			return "os is " + f.OS + ", image " + pin.Ref() + " is " + pin.OS, false
		}
		return "os is " + f.OS, false
	case FitArch:
		if pin != nil {
			return "cannot run arch " + pin.Arch + " of image " + pin.Ref(), false
		}
		return "cannot run arch " + j.Arch, false
	case FitNetwork:
		return "does not offer network " + j.Resources.Network.Mode(), false
	case FitIsolation:
		if len(f.OfferedIsolations()) == 0 {
			return "offers no isolation (neither containerd nor qemu usable)", false
		}
		return "does not offer isolation " + j.Isolation, false
	case FitCache:
		return "lacks a cache of " + strings.Join(j.Caches, ", "), false
	case FitImage:
		return "has no image " + j.Image, false
	case FitLabel:
		return "lacks the labels " + LabelText(j.Constraints.Labels), false
	}
	return j.Asked().Over(f.Limits), true
}

// LabelText shows labels as the reasons above name them: "k":"v",...
func LabelText(l map[string]string) string {
	b, _ := json.Marshal(l)
	return strings.Trim(string(b), "{}")
}

// offersIsolation reports whether a host with facts f runs isolation
// (api.Facts.OfferedIsolations); "" is the host's default, which every
// host that runs anything runs.
func offersIsolation(f *api.Facts, isolation string) bool {
	offered := f.OfferedIsolations()
	if isolation == "" {
		return len(offered) > 0
	}
	return slices.Contains(offered, isolation)
}
