// The life of one run, as Runner.Run drives it. Each step names what its
// failure skips; teardown (the right-hand column) happens whatever failed,
// with a context of its own, so a cancelled or failed run still loses its
// sandbox and clone.
//
//	 1  validate     run id, hooks, arch handler (qemu)   fail: return, nothing made
//	 2  lock         flock <runs>/<id>/lock               fail: ErrBusy, nothing made
//	 3  inputs       /in from the sha256-checked files    fail: -> 14
//	 4  spool        console file, capped                 fail: -> 14
//	 5  clone        warm clone, or Storage.Clone (with a
//	                 disk limit DiskLimiter.CloneLimited);
//	                 /out and /work made empty in it      fail: -> 13
//	 6  pre hooks    host commands, clone made            fail: ErrHookFailed -> 12
//	 7  start        Launcher.Start(spec)                 fail: -> 12
//	 8  wait         exit; on timeout or cancel: SIGTERM,
//	                 kill_grace, SIGKILL                  fail: -> 12
//	 9  kill all     Sandbox.Kill: no process left        fail: -> 12 (nothing collected)
//	10  collect      /out -> artifacts, never following
//	                 a link out of /out, within the
//	                 artifact caps                        fail: -> 12
//	11  post hooks   host checks on the artifacts         (skipped after a cancel)
//	12  delete       Sandbox.Delete, then cleanup hooks   (always)
//	13  destroy      Storage.Destroy of the clone          (always; the warm clone too)
//	14  unlock       release the run lock                  (always)
//
// A run that a warm task can serve (see warm.go) takes one at step 5
// instead: its clone exists, its sandbox is created and its init waits;
// steps 6-7 become writing the run's entry, moving /in into the task's,
// and Prepared.Start (limits, hostname, then the init goes on). Its
// teardown is the same, the warm clone destroyed with it.
//
// Reattach (Request.Reattach, a worker restarted while its run went on):
// steps 3 and 5-7 are replaced by reading the clone and sandbox the run
// recorded (runRecord, <runs>/<id>/run.json) and Attacher.Attach to the sandbox; the spool is opened
// for appending. If the sandbox is gone, whatever is left of it is reaped
// and the run fails; the server then retries it as a new attempt.
//
// With Runner.AsyncTeardown, steps 12-14 of a run that ended without error
// run in the background after Run returns, so the result is reported
// first; the run's lock is held until they finish, and the next Run of the
// same id waits for them.
package sandbox
