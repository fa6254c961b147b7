package web

import (
	"context"
	"net/http"
	"strconv"

	"github.com/kiln-build/kiln/api"
)

// ImageBackend is the part of a Backend that serves the server-held
// images (docs/images-server.md). A Backend without it has no image
// pages.
type ImageBackend interface {
	// Images lists the image versions, by name then version, with the
	// hosts holding each (for an admin Viewer only: host names are an
	// admin's to see).
	Images(ctx context.Context, v Viewer) ([]api.ImageVersion, error)
}

// imageBackend is h's ImageBackend, or nil.
func (h *Handler) imageBackend() ImageBackend {
	ib, _ := h.b.(ImageBackend)
	return ib
}

// imageGroup is one image name's versions, newest first.
type imageGroup struct {
	Name     string
	Versions []api.ImageVersion
}

func (h *Handler) images(w http.ResponseWriter, r *http.Request, q *request) error {
	ib := h.imageBackend()
	if ib == nil {
		return errNotFound
	}
	vs, err := ib.Images(r.Context(), q.v)
	if err != nil {
		return err
	}
	var groups []imageGroup
	for _, v := range vs {
		if len(groups) == 0 || groups[len(groups)-1].Name != v.Name {
			groups = append(groups, imageGroup{Name: v.Name})
		}
		g := &groups[len(groups)-1]
		g.Versions = append([]api.ImageVersion{v}, g.Versions...)
	}
	return h.render(w, r, q, http.StatusOK, "images", "Images", map[string]any{"Images": groups})
}

func (h *Handler) image(w http.ResponseWriter, r *http.Request, q *request) error {
	ib := h.imageBackend()
	if ib == nil {
		return errNotFound
	}
	name := r.PathValue("name")
	version, err := strconv.Atoi(r.PathValue("version"))
	if err != nil {
		return errNotFound
	}
	vs, err := ib.Images(r.Context(), q.v)
	if err != nil {
		return err
	}
	for _, v := range vs {
		if v.Name == name && v.Version == version {
			return h.render(w, r, q, http.StatusOK, "image", "Image "+v.Ref(), map[string]any{"I": v})
		}
	}
	return errNotFound
}
