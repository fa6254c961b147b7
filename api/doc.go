// Package api holds the wire types shared by the server, the worker and the
// CLI (JSON over HTTP), the job file format, and the Go client of the API.
//
// # Routes
//
// The HTTP/JSON API of the kiln server. Every route is under /v1 and takes
// `Authorization: Bearer TOKEN`. Errors are answered with a 4xx/5xx status and
// an ErrorBody. Token kinds: admin (the client and admin routes; made
// on first start in <data-dir>/admin.token), client (the client routes
// below: jobs, runs, artifacts, blobs; named, optionally expiring, made and
// revoked by an admin), enrollment (only POST /v1/enroll, once), worker
// (only the /v1/worker routes and blob downloads). A token of the wrong kind
// gets 403; an unknown, revoked or expired one 401. A client or worker token
// over its rate limit (server.toml rate_limit, worker_rate_limit) gets 429
// with Retry-After in seconds; the Client waits and retries. Permanent
// (retry.go) says which answers kiln's callers never retry.
//
// Ownership: every job belongs to the client token that added it, or to
// that token's group ("kiln token create --group"), or to the admin. A
// client token sees and changes only what its owner owns: jobs, their runs
// (consoles, artifacts, cancel), reproduce groups, and blobs it uploaded
// itself or that its runs produced; anything else answers 404 as if it did
// not exist, and lists leave it out. The admin token sees everything.
// Job names are one namespace across owners (a taken name is 409).
//
// Client routes (admin or client token):
//
//	POST   /v1/jobs                      Job -> 201 JobInfo; 409 duplicate name; 413 over
//	                                        MaxJobFile; 400 reproduce > MaxReproduce, script
//	                                        over MaxScript, or an input the token may not read
//	GET    /v1/jobs                      -> []JobInfo
//	GET    /v1/jobs/{name}               -> JobInfo
//	PUT    /v1/jobs/{name}               Job -> JobInfo (a new revision)
//	DELETE /v1/jobs/{name}               -> 204; queued runs of the job are cancelled
//	POST   /v1/jobs/{name}/runs          [ExecuteRequest] -> 201 Run (state queued); with
//	                                        reproduce the first member, Run.Group set;
//	                                        429 queue_full over the owner's max_queued,
//	                                        403 a priority over priority_ceiling (not admin)
//	GET    /v1/groups/{id}               -> Group (members, verdict once all ended, and
//	                                        the diffoscope report's state when not reproducible)
//	PUT    /v1/jobs/{name}/schedule      ScheduleRequest -> JobInfo; 400 bad spec
//	DELETE /v1/jobs/{name}/schedule      -> JobInfo
//	GET    /v1/runs?job=NAME&group=G&limit=N -> []Run, newest first
//	GET    /v1/artifacts?sha256=S        -> []ArtifactRef: every run that produced that content
//	GET    /v1/runs/{id}                 -> Run (with its artifact index; a queued run
//	                                        says in Waiting why no host has taken it)
//	POST   /v1/runs/{id}/cancel          -> Run; a leased run is cancelled via the worker's heartbeat
//	GET    /v1/runs/{id}/log?attempt=A&offset=O&wait=30s
//	                                     -> the stored console bytes of attempt A from O
//	                                        (long-polls up to wait when none are there yet);
//	                                        headers: see LogChunk
//	GET    /v1/runs/{id}/artifacts       -> []Artifact
//	HEAD   /v1/blobs/{sha256}            -> 200 stored and readable by the token (Content-Length)
//	                                        | 404 with HeaderReceived: bytes of this token's
//	                                        own partial upload
//	PUT    /v1/blobs/{sha256}?offset=O&size=N   body: bytes [O, N) of the blob, into this
//	                                        token's own upload session (offset 0 starts it anew)
//	                                     -> 200 BlobStatus; 409 wrong offset (BlobStatus.Received
//	                                        in the ErrorBody); 400 code blob_digest: sha256
//	                                        mismatch (the partial upload is discarded). A client
//	                                        token sends every byte of a blob it may not read yet,
//	                                        even one stored already; once verified, its owner may
//	                                        read it. Partial uploads idle for partial_ttl go.
//	GET    /v1/blobs/{sha256}            -> the blob (admin and worker tokens: any; client
//	                                        tokens: see Ownership; 404 otherwise)
//
// Admin routes (admin token only):
//
//	POST   /v1/hosts/tokens              EnrollmentTokenRequest -> 201 EnrollmentToken
//	GET    /v1/hosts                     -> []Host
//	POST   /v1/hosts/{name}/drain        -> Host (no new leases; running ones finish)
//	DELETE /v1/hosts/{name}              -> 204; its credential is revoked, its runs requeued
//	POST   /v1/tokens                    ClientTokenRequest -> 201 ClientToken (the token is
//	                                        shown once); 409 a client token of that name exists
//	GET    /v1/tokens                    -> []ClientTokenInfo by name (never the tokens)
//	DELETE /v1/tokens/{name}             -> 204; refused from the next request on; 404 unknown
//
// Worker routes:
//
//	POST /v1/enroll                      (enrollment token) EnrollRequest -> 201 EnrollResponse
//	POST /v1/worker/heartbeat            HeartbeatRequest -> HeartbeatResponse
//	POST /v1/worker/lease                LeaseRequest -> 200 Assignment | 204 nothing within Wait
//	                                        (only jobs the host's Facts fit: OS, arch, image,
//	                                        labels, network mode)
//	POST /v1/worker/runs/{id}/log?fence=F&offset=O   body: console bytes
//	                                     -> LogAppendResponse; 409 (ErrorBody.Length = the
//	                                        server's length) on a gap, or a stale fence
//	HEAD /v1/worker/runs/{id}/blobs/{sha256}?fence=F            -> as HEAD /v1/blobs
//	PUT  /v1/worker/runs/{id}/blobs/{sha256}?fence=F&offset=O&size=N -> as PUT /v1/blobs
//	POST /v1/worker/runs/{id}/result     ResultRequest -> Run; 409 stale fence. Repeating
//	                                        the same fence's result after it was stored is a
//	                                        no-op answered 200, so a lost answer can be retried.
//
// Other: GET /healthz (no auth), GET /metrics (Prometheus text, no auth).
// Every path outside /v1, /healthz and /metrics is the web view (HTML pages,
// a session cookie instead of the bearer token; see docs/web.md).
package api
