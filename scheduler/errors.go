package scheduler

import (
	"fmt"
	"net/http"

	"github.com/kiln-build/kiln/api"
)

// apiError is an error with the HTTP answer it deserves.
type apiError struct {
	status int
	code   string
	msg    string
	length *int64
}

func (e *apiError) Error() string { return e.msg }

// HTTPStatus is the status the error is answered with (the web view
// answers its pages with it too).
func (e *apiError) HTTPStatus() int { return e.status }

func errorf(status int, code, format string, a ...any) *apiError {
	return &apiError{status: status, code: code, msg: fmt.Sprintf(format, a...)}
}

func badRequest(format string, a ...any) *apiError {
	return errorf(http.StatusBadRequest, api.CodeBadRequest, format, a...)
}

func notFound(format string, a ...any) *apiError {
	return errorf(http.StatusNotFound, api.CodeNotFound, format, a...)
}

func staleFence(runID int64) *apiError {
	return errorf(http.StatusConflict, api.CodeStaleFence, "run %d: the lease is no longer held with this fence", runID)
}
