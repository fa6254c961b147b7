package scheduler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/scheduler/blobs"
	"github.com/kiln-build/kiln/scheduler/web"
)

type handlerFunc func(w http.ResponseWriter, r *http.Request, p *principal) error

// Handler returns the HTTP API (routes: see package api).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	admin := []string{kindAdmin}
	user := []string{kindAdmin, kindClient} // everything but host and token management
	worker := []string{kindWorker}
	reader := []string{kindAdmin, kindClient, kindWorker}
	enroll := []string{kindEnrollment}
	route := func(pattern string, kinds []string, h handlerFunc) { mux.Handle(pattern, s.wrap(kinds, h)) }

	route("POST /v1/jobs", user, s.hAddJob)
	route("GET /v1/jobs", user, s.hListJobs)
	route("GET /v1/jobs/{name}", user, s.hGetJob)
	route("PUT /v1/jobs/{name}", user, s.hModifyJob)
	route("DELETE /v1/jobs/{name}", user, s.hRemoveJob)
	route("POST /v1/jobs/{name}/runs", user, s.hExecute)
	route("PUT /v1/jobs/{name}/schedule", user, s.hSchedule)
	route("DELETE /v1/jobs/{name}/schedule", user, s.hUnschedule)
	route("GET /v1/runs", user, s.hListRuns)
	route("GET /v1/runs/{id}", user, s.hGetRun)
	route("POST /v1/runs/{id}/cancel", user, s.hCancelRun)
	route("GET /v1/runs/{id}/log", user, s.hReadLog)
	route("GET /v1/runs/{id}/artifacts", user, s.hListArtifacts)
	route("GET /v1/groups/{id}", user, s.hGetGroup)
	route("GET /v1/artifacts", user, s.hFindArtifacts)
	route("HEAD /v1/blobs/{sha}", reader, s.hHeadBlob)
	route("GET /v1/blobs/{sha}", reader, s.hGetBlob)
	route("PUT /v1/blobs/{sha}", user, s.hPutBlob)
	route("POST /v1/hosts/tokens", admin, s.hCreateToken)
	route("GET /v1/hosts", admin, s.hListHosts)
	route("GET /v1/hosts/keys", admin, s.hHostKeys)
	route("GET /v1/runs/{id}/attestation", user, s.hRunAttestation)
	route("GET /v1/groups/{id}/attestation", user, s.hGroupAttestation)
	route("POST /v1/hosts/{name}/drain", admin, s.hDrainHost)
	route("DELETE /v1/hosts/{name}", admin, s.hRemoveHost)
	route("POST /v1/tokens", admin, s.hCreateClientToken)
	route("GET /v1/tokens", admin, s.hListClientTokens)
	route("DELETE /v1/tokens/{name}", admin, s.hRevokeClientToken)
	// Retention (retention.go).
	route("POST /v1/gc", admin, s.hGC)
	route("POST /v1/runs/{id}/keep", user, s.hKeepRun)
	route("DELETE /v1/runs/{id}/keep", user, s.hKeepRun)
	// Server-held images (images.go): only admins publish and remove, as
	// an image is the root of every job that names it.
	route("POST /v1/images/{name}/versions", admin, s.hPublishImage)
	route("GET /v1/images", reader, s.hListImages)
	route("GET /v1/images/{name}/versions/{version}", reader, s.hGetImage)
	route("DELETE /v1/images/{name}/versions/{version}", admin, s.hRemoveImage)
	// Image builds (imagebuild.go): admin jobs whose runs build an image.
	route("POST /v1/images/{name}/builds", admin, s.hBuildImage)
	route("PUT /v1/images/{name}/schedule", admin, s.hScheduleImage)

	// Webhooks (webhooks.go): a delivery carries no token, its
	// signature is the credential.
	route("POST /v1/webhooks", user, s.hCreateWebhook)
	route("GET /v1/webhooks", user, s.hListWebhooks)
	route("DELETE /v1/webhooks/{name}", user, s.hRemoveWebhook)
	mux.HandleFunc("POST /v1/webhooks/{name}", s.hDeliver)

	// Package repositories (repos.go).
	route("POST /v1/repos", admin, s.hCreateRepo)
	route("GET /v1/repos", user, s.hListRepos)
	route("GET /v1/repos/{name}", user, s.hShowRepo)
	route("GET /v1/repos/{name}/key", user, s.hRepoKey)
	route("DELETE /v1/repos/{name}", admin, s.hRemoveRepo)
	route("DELETE /v1/repos/{name}/packages/{package}/{version}", admin, s.hRemoveRepoPackage)
	mux.HandleFunc("GET /repos/{name}/{path...}", s.hRepoServe)

	route("POST /v1/enroll", enroll, s.hEnroll)
	route("POST /v1/worker/heartbeat", worker, s.hHeartbeat)
	route("POST /v1/worker/lease", worker, s.hLease)
	route("POST /v1/worker/runs/{id}/log", worker, s.hAppendLog)
	route("HEAD /v1/worker/runs/{id}/blobs/{sha}", worker, s.hWorkerHeadBlob)
	route("PUT /v1/worker/runs/{id}/blobs/{sha}", worker, s.hWorkerPutBlob)
	route("POST /v1/worker/runs/{id}/result", worker, s.hResult)
	route("POST /v1/worker/runs/{id}/phase", worker, s.hSetRunPhase)

	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := s.st.ping(r.Context()); err != nil {
			http.Error(w, "database: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.Handle("GET /metrics", s.metrics.handler())
	mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, notFound("no such route: %s %s", r.Method, r.URL.Path))
	})
	mux.Handle("/", web.New(&webBackend{s: s, public: &principal{kind: kindPublic}}, web.Options{
		Public: s.cfg.UI.Public, TLS: s.cfg.TLSCert != "", Logger: s.log, Now: s.now,
	}))
	return mux
}

func (s *Server) wrap(kinds []string, h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := s.authenticate(r.Context(), r)
		if err == nil {
			allowed := false
			for _, k := range kinds {
				allowed = allowed || p.kind == k
			}
			if !allowed {
				err = errorf(http.StatusForbidden, api.CodeForbidden, "a %s token may not %s %s", p.kind, r.Method, r.URL.Path)
			}
		}
		if err == nil {
			err = s.checkRate(w, p)
		}
		if err == nil {
			err = h(w, r, p)
		}
		if err != nil {
			s.writeError(w, r, err)
		}
	})
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	if !errors.As(err, &ae) {
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			ae = errorf(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "request body exceeds %d bytes", mbe.Limit)
		case errors.Is(err, context.Canceled):
			return
		case dbUnavailable(err):
			// PostgreSQL is restarting or unreachable: the request was
			// fine and may be sent again.
			s.log.Warn("database unavailable", "method", r.Method, "path", r.URL.Path, "err", err)
			w.Header().Set("Retry-After", "1")
			ae = errorf(http.StatusServiceUnavailable, api.CodeUnavailable, "database unavailable, retry: %v", err)
		default:
			s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			ae = errorf(http.StatusInternalServerError, api.CodeInternal, "internal error: %v", err)
		}
	}
	_ = writeJSON(w, ae.status, api.ErrorBody{Error: ae.msg, Code: ae.code, Length: ae.length})
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

// decodeRequest decodes one JSON value of at most max bytes into v,
// refusing unknown fields and trailing data.
func decodeRequest(body io.Reader, limit int64, v any) error {
	data, err := io.ReadAll(io.LimitReader(body, limit+1))
	if err != nil {
		return err
	}
	if int64(len(data)) > limit {
		return errorf(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "request body exceeds %d bytes", limit)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("malformed JSON: %v", err)
	}
	if dec.More() {
		return badRequest("malformed JSON: data after the value")
	}
	return nil
}

func (s *Server) decode(r *http.Request, v any) error {
	return decodeRequest(r.Body, int64(s.cfg.MaxBody), v)
}

// decodeJob decodes a job sent by job add or modify, whose JSON is bounded
// by api.MaxJobFile (the script within it by api.MaxScript, see
// api.Job.Validate).
func (s *Server) decodeJob(r *http.Request, j *api.Job) error {
	limit := min(int64(s.cfg.MaxBody), api.MaxJobFile)
	err := decodeRequest(r.Body, limit, j)
	var ae *apiError
	if errors.As(err, &ae) && ae.status == http.StatusRequestEntityTooLarge {
		return errorf(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "the job is larger than %d bytes; put big files into inputs", limit)
	}
	return err
}

func (s *Server) hAddJob(w http.ResponseWriter, r *http.Request, p *principal) error {
	var j api.Job
	if err := s.decodeJob(r, &j); err != nil {
		return err
	}
	if err := refuseImageBuild(&j); err != nil {
		return err
	}
	ji, err := s.addJob(r.Context(), p, &j)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, ji)
}

func (s *Server) hModifyJob(w http.ResponseWriter, r *http.Request, p *principal) error {
	var j api.Job
	if err := s.decodeJob(r, &j); err != nil {
		return err
	}
	if err := refuseImageBuild(&j); err != nil {
		return err
	}
	ji, err := s.modifyJob(r.Context(), p, r.PathValue("name"), &j)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, ji)
}

func (s *Server) hListJobs(w http.ResponseWriter, r *http.Request, p *principal) error {
	js, err := s.listJobs(r.Context(), p)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, js)
}

func (s *Server) hGetJob(w http.ResponseWriter, r *http.Request, p *principal) error {
	ji, err := s.getJob(r.Context(), p, r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, ji)
}

func (s *Server) hRemoveJob(w http.ResponseWriter, r *http.Request, p *principal) error {
	if err := s.removeJob(r.Context(), p, r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) hExecute(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req api.ExecuteRequest
	// The body is optional: older clients send none.
	if r.ContentLength != 0 {
		if err := s.decode(r, &req); err != nil {
			return err
		}
	}
	if req.Reproduce < 0 || req.Reproduce == 1 || req.Reproduce > maxGroupSize {
		return badRequest("reproduce %d: want 0 (the job's own) or 2..%d", req.Reproduce, maxGroupSize)
	}
	run, err := s.execute(r.Context(), p, r.PathValue("name"), req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, run)
}

func (s *Server) hSchedule(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req api.ScheduleRequest
	if err := s.decode(r, &req); err != nil {
		return err
	}
	if req.Schedule == "" {
		return badRequest("schedule is empty (use DELETE to unschedule)")
	}
	ji, err := s.setSchedule(r.Context(), p, r.PathValue("name"), req.Schedule)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, ji)
}

func (s *Server) hUnschedule(w http.ResponseWriter, r *http.Request, p *principal) error {
	ji, err := s.setSchedule(r.Context(), p, r.PathValue("name"), "")
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, ji)
}

func (s *Server) hListRuns(w http.ResponseWriter, r *http.Request, p *principal) error {
	limit := 0
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return badRequest("limit %q: want a number", v)
		}
		limit = n
	}
	var group int64
	if v := r.URL.Query().Get("group"); v != "" {
		g, err := strconv.ParseInt(v, 10, 64)
		if err != nil || g <= 0 {
			return badRequest("group %q: want a group ID", v)
		}
		group = g
	}
	runs, err := s.listRuns(r.Context(), p, r.URL.Query().Get("job"), group, limit)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, runs)
}

func (s *Server) hGetRun(w http.ResponseWriter, r *http.Request, p *principal) error {
	id, err := parseRunID(r.PathValue("id"))
	if err != nil {
		return err
	}
	if err := s.visibleRun(r.Context(), p, id); err != nil {
		return err
	}
	run, err := s.getRun(r.Context(), id)
	if err != nil {
		return err
	}
	if err := s.runNotifications(r.Context(), run, id); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, run)
}

func (s *Server) hCancelRun(w http.ResponseWriter, r *http.Request, p *principal) error {
	id, err := parseRunID(r.PathValue("id"))
	if err != nil {
		return err
	}
	if err := s.visibleRun(r.Context(), p, id); err != nil {
		return err
	}
	run, err := s.cancelRun(r.Context(), id)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, run)
}

func (s *Server) hListArtifacts(w http.ResponseWriter, r *http.Request, p *principal) error {
	id, err := parseRunID(r.PathValue("id"))
	if err != nil {
		return err
	}
	if err := s.visibleRun(r.Context(), p, id); err != nil {
		return err
	}
	as, err := s.st.artifacts(r.Context(), id)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, as)
}

// maxLogRead bounds one log read answer.
const maxLogRead = 1 << 20

func (s *Server) hReadLog(w http.ResponseWriter, r *http.Request, p *principal) error {
	id, err := parseRunID(r.PathValue("id"))
	if err != nil {
		return err
	}
	if err := s.visibleRun(r.Context(), p, id); err != nil {
		return err
	}
	q := r.URL.Query()
	var attempt int
	var offset int64
	var wait time.Duration
	if v := q.Get("attempt"); v != "" {
		if attempt, err = strconv.Atoi(v); err != nil || attempt < 0 {
			return badRequest("attempt %q: want a number", v)
		}
	}
	if v := q.Get("offset"); v != "" {
		if offset, err = strconv.ParseInt(v, 10, 64); err != nil || offset < 0 {
			return badRequest("offset %q: want a number", v)
		}
	}
	if v := q.Get("wait"); v != "" {
		if wait, err = time.ParseDuration(v); err != nil || wait < 0 {
			return badRequest("wait %q: want a duration", v)
		}
		wait = min(wait, time.Duration(s.cfg.MaxLeaseWait))
	}
	lr, err := s.readLog(r.Context(), id, attempt, offset, maxLogRead, wait)
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set(api.HeaderLogAttempt, strconv.Itoa(lr.attempt))
	h.Set(api.HeaderLogSize, strconv.FormatInt(lr.size, 10))
	h.Set(api.HeaderRunState, lr.state)
	h.Set(api.HeaderRunAttempt, strconv.Itoa(lr.runAttempt))
	if lr.truncated {
		h.Set(api.HeaderTruncated, "1")
	}
	w.WriteHeader(http.StatusOK)
	_, err = w.Write(lr.data)
	return err
}

// headBlob answers whether sha is stored and p may read it, else how many
// bytes of p's own partial upload the server holds: a client that may not
// read a stored blob is asked to upload it (proving it holds the bytes).
func (s *Server) headBlob(w http.ResponseWriter, r *http.Request, p *principal) error {
	sha := r.PathValue("sha")
	ok, n, err := s.blobs.Stat(sha, p.hash)
	if err != nil {
		return badRequest("%v", err)
	}
	if ok {
		readable, err := s.canReadBlob(r.Context(), p, sha)
		if err != nil {
			return err
		}
		if !readable {
			ok, n = false, s.blobs.Received(sha, p.hash)
		}
	}
	if !ok {
		w.Header().Set(api.HeaderReceived, strconv.FormatInt(n, 10))
		w.WriteHeader(http.StatusNotFound)
		return nil
	}
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	w.WriteHeader(http.StatusOK)
	return nil
}

func (s *Server) hHeadBlob(w http.ResponseWriter, r *http.Request, p *principal) error {
	return s.headBlob(w, r, p)
}

// hGetBlob serves a blob to a token that may read it (see canReadBlob);
// to any other it does not exist.
func (s *Server) hGetBlob(w http.ResponseWriter, r *http.Request, p *principal) error {
	sha := r.PathValue("sha")
	if !blobs.ValidSHA(sha) {
		return badRequest("%v", blobs.ErrBadSHA)
	}
	readable, err := s.canReadBlob(r.Context(), p, sha)
	if err != nil {
		return err
	}
	f, err := s.blobs.Open(sha)
	if err != nil || !readable {
		if f != nil {
			f.Close()
		}
		return notFound("no blob %s", sha)
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", time.Time{}, f)
	return nil
}

// putBlob takes a chunk of p's upload session of the blob. A client that
// may not read the blob yet must send all of its bytes (prove); once they
// verify, its owner may read the blob and name it as an input.
func (s *Server) putBlob(w http.ResponseWriter, r *http.Request, p *principal) error {
	sha := r.PathValue("sha")
	q := r.URL.Query()
	offset, err1 := strconv.ParseInt(q.Get("offset"), 10, 64)
	size, err2 := strconv.ParseInt(q.Get("size"), 10, 64)
	if q.Get("offset") == "" {
		offset, err1 = 0, nil
	}
	switch {
	case err1 != nil || err2 != nil || offset < 0 || size < 0 || offset > size:
		return badRequest("want ?offset=O&size=N with 0 <= O <= N")
	case size > int64(s.cfg.MaxBlob):
		return errorf(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "blob of %d bytes exceeds max_blob %d", size, int64(s.cfg.MaxBlob))
	case r.ContentLength > size-offset:
		return errorf(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "body of %d bytes runs past size %d", r.ContentLength, size)
	case !blobs.ValidSHA(sha):
		return badRequest("blob %s: %v", sha, blobs.ErrBadSHA)
	}
	if p.kind != kindWorker && offset == 0 {
		// A run's artifacts are never refused: the run already ran.
		if err := s.checkQuota(r.Context(), p.owner(), max(size, 1)); err != nil {
			return err
		}
	}
	prove := false
	if p.kind == kindClient {
		readable, err := s.canReadBlob(r.Context(), p, sha)
		if err != nil {
			return err
		}
		prove = !readable
	}
	got, complete, err := s.blobs.Write(r.Context(), sha, p.hash, offset, size, r.Body, prove)
	switch {
	case errors.Is(err, blobs.ErrOffset):
		e := errorf(http.StatusConflict, api.CodeBlobOffset, "upload of %s at offset %d, but %d bytes are received", sha, offset, got)
		e.length = &got
		return e
	case errors.Is(err, blobs.ErrDigest):
		return errorf(http.StatusBadRequest, api.CodeBlobDigest, "blob %s: %v (the partial upload is discarded; upload from 0)", sha, err)
	case errors.Is(err, blobs.ErrBadSHA):
		return badRequest("blob %s: %v", sha, err)
	case errors.Is(err, blobs.ErrTooLarge):
		return errorf(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "blob %s: %v", sha, err)
	case err != nil:
		return err
	}
	if complete && prove {
		if err := s.grantBlob(r.Context(), p.owner(), sha); err != nil {
			return err
		}
	}
	return writeJSON(w, http.StatusOK, api.BlobStatus{SHA256: sha, Received: got, Complete: complete})
}

func (s *Server) hPutBlob(w http.ResponseWriter, r *http.Request, p *principal) error {
	return s.putBlob(w, r, p)
}

func (s *Server) workerRun(r *http.Request, p *principal) error {
	id, err := parseRunID(r.PathValue("id"))
	if err != nil {
		return err
	}
	return s.checkFence(r.Context(), p.host, id, r.URL.Query().Get("fence"))
}

func (s *Server) hWorkerHeadBlob(w http.ResponseWriter, r *http.Request, p *principal) error {
	if err := s.workerRun(r, p); err != nil {
		return err
	}
	return s.headBlob(w, r, p)
}

func (s *Server) hWorkerPutBlob(w http.ResponseWriter, r *http.Request, p *principal) error {
	if err := s.workerRun(r, p); err != nil {
		return err
	}
	return s.putBlob(w, r, p)
}

func (s *Server) hCreateToken(w http.ResponseWriter, r *http.Request, _ *principal) error {
	var req api.EnrollmentTokenRequest
	if err := s.decode(r, &req); err != nil {
		return err
	}
	t, err := s.createEnrollmentToken(r.Context(), &req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, t)
}

func (s *Server) hListHosts(w http.ResponseWriter, r *http.Request, _ *principal) error {
	hs, err := s.listHosts(r.Context(), "")
	if err == nil {
		err = s.fillKeyIDs(r.Context(), hs)
	}
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, hs)
}

func (s *Server) hDrainHost(w http.ResponseWriter, r *http.Request, _ *principal) error {
	h, err := s.drainHost(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, h)
}

func (s *Server) hRemoveHost(w http.ResponseWriter, r *http.Request, _ *principal) error {
	if err := s.removeHost(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) hEnroll(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req api.EnrollRequest
	if err := s.decode(r, &req); err != nil {
		return err
	}
	resp, err := s.enroll(r.Context(), p, &req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, resp)
}

func (s *Server) hHeartbeat(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req api.HeartbeatRequest
	if err := s.decode(r, &req); err != nil {
		return err
	}
	resp, err := s.heartbeat(r.Context(), p.host, &req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, resp)
}

func (s *Server) hLease(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req api.LeaseRequest
	if err := s.decode(r, &req); err != nil {
		return err
	}
	labels, drained, err := s.hostState(r.Context(), p.host)
	if err != nil {
		return err
	}
	// Only the labels the host was enrolled with count for matching: a
	// label a worker reports itself (a compromised host claiming
	// trusted=yes) must not win it runs meant for other hosts.
	req.Facts.Labels = labels
	wait := min(time.Duration(req.Wait), time.Duration(s.cfg.MaxLeaseWait))
	a, err := s.lease(r.Context(), p.host, &req.Facts, drained, wait)
	if err != nil {
		return err
	}
	if a == nil {
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	return writeJSON(w, http.StatusOK, a)
}

func (s *Server) hAppendLog(w http.ResponseWriter, r *http.Request, p *principal) error {
	id, err := parseRunID(r.PathValue("id"))
	if err != nil {
		return err
	}
	q := r.URL.Query()
	offset, err := strconv.ParseInt(q.Get("offset"), 10, 64)
	if err != nil || offset < 0 {
		return badRequest("offset %q: want a number", q.Get("offset"))
	}
	limit := int64(s.cfg.MaxLogAppend)
	data, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return err
	}
	if int64(len(data)) > limit {
		return errorf(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "log append of more than %d bytes; split it", limit)
	}
	n, err := s.appendLog(r.Context(), p.host, id, q.Get("fence"), offset, data)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, api.LogAppendResponse{Length: n})
}

func (s *Server) hResult(w http.ResponseWriter, r *http.Request, p *principal) error {
	id, err := parseRunID(r.PathValue("id"))
	if err != nil {
		return err
	}
	var req api.ResultRequest
	if err := s.decode(r, &req); err != nil {
		return err
	}
	run, err := s.complete(r.Context(), p.host, id, &req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, run)
}
