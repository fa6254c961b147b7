package scheduler

import (
	"bytes"
	"errors"
	"net/http"
	"testing"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/names"
)

// FuzzDecodeRequests: every API request decoder answers any body with a
// value or a 4xx apiError, never a panic or a 5xx; a decoded job is only
// accepted when it validates.
func FuzzDecodeRequests(f *testing.F) {
	f.Add([]byte(`{"name":"j","image":"bookworm","script":"true"}`))
	f.Add([]byte(`{"facts":{"os":"linux","arch":"amd64","free_slots":1},"wait":"30s"}`))
	f.Add([]byte(`{"fence":"ab","exit_code":1,"artifacts":[{"path":"a/b","size":1,"mode":420,"sha256":"00"}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		targets := []any{&api.Job{}, &api.LeaseRequest{}, &api.HeartbeatRequest{}, &api.ResultRequest{},
			&api.EnrollRequest{}, &api.EnrollmentTokenRequest{}, &api.ScheduleRequest{}}
		for _, v := range targets {
			err := decodeRequest(bytes.NewReader(body), 1<<16, v)
			if err != nil {
				var ae *apiError
				if !errors.As(err, &ae) || ae.status < 400 || ae.status >= 500 || ae.msg == "" {
					t.Fatalf("%T: error %v is not a 4xx answer", v, err)
				}
				if int64(len(body)) > 1<<16 && ae.status != http.StatusRequestEntityTooLarge {
					t.Fatalf("oversized body answered %d", ae.status)
				}
				continue
			}
			if j, ok := v.(*api.Job); ok {
				_ = j.Validate()
			}
			if r, ok := v.(*api.ResultRequest); ok {
				for _, a := range r.Artifacts {
					_ = names.ValidRelPath(a.Path)
				}
			}
		}
	})
}
