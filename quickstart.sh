#!/bin/bash
# kiln quick start on a fresh Debian 12 / Ubuntu machine, as root: installs
# what running kiln needs (.ci/prereqs-runtime; the tests' extra packages
# are .ci/run's), builds kiln, starts containerd if it is not
# running, creates a busybox image and runs examples/hello.toml in a sandbox
# twice: once with `kiln exec` (no server), once through a server and an
# enrolled worker started here with embedded defaults (SQLite, overlay),
# which are left running; it ends by printing the web view address of the run.
set -euo pipefail
cd "$(dirname "$0")"
# /usr/local/bin too: it is where kiln is installed, and a minimal root
# environment (a chroot, `env -i`) may not have it on PATH.
export PATH=/usr/local/go/bin:/usr/local/bin:$PATH
bash .ci/prereqs-runtime
go build -o /usr/local/bin/kiln ./cmd/kiln
# Static: every container sandbox starts it, inside images of any libc.
CGO_ENABLED=0 go build -o /usr/local/bin/kiln-sandbox-init ./cmd/kiln-sandbox-init
echo "kiln: built /usr/local/bin/kiln and /usr/local/bin/kiln-sandbox-init" >&2

sock=/run/containerd/containerd.sock
if ! ctr --address "$sock" version >/dev/null 2>&1; then
  echo "kiln: starting containerd (log: /var/log/kiln-containerd.log)" >&2
  nohup containerd >/var/log/kiln-containerd.log 2>&1 &
  for _ in $(seq 50); do ctr --address "$sock" version >/dev/null 2>&1 && break; sleep 0.2; done
fi

kiln image snapshots -n busybox >/dev/null 2>&1 || kiln image create -n busybox -m busybox
rm -rf ./hello-artifacts
kiln exec examples/hello.toml -o ./hello-artifacts
echo "kiln: artifacts in ./hello-artifacts:" >&2
ls -l ./hello-artifacts
cat ./hello-artifacts/*.txt

# The same job through the queue: server + worker, both on this machine. They
# stay running afterwards, so that the web view shows the run (stop them with
# the kill command printed at the end; a new quickstart stops them first).
Q=/tmp/kiln-quickstart
PORT=${KILN_QUICKSTART_PORT:-18420}
for f in "$Q/worker.pid" "$Q/server.pid"; do
  pid=$(cat "$f" 2>/dev/null || true)
  if [ -n "$pid" ] && [ "$(ps -o comm= -p "$pid" 2>/dev/null)" = kiln ]; then
    kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
done
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  echo "kiln: port $PORT is taken by a process other than an earlier quick start's server; stop it or set KILN_QUICKSTART_PORT" >&2
  exit 1
fi
# The worker mounts its runs dir nosuid,nodev (the mount outlives it): detach
# whatever an earlier quick start left mounted below $Q before removing it.
awk -v q="$Q/" 'index($5, q) == 1 {print $5}' /proc/self/mountinfo | sort -r |
  while read -r m; do umount -l "$m" 2>/dev/null || true; done
rm -rf "$Q" ./hello-server-artifacts
mkdir -p "$Q"
pids=()
# On failure nothing is left running; on success the trap is cleared.
trap 'kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null || true' EXIT
# The web view is public (no login) because the server listens on 127.0.0.1 only.
printf '[ui]\npublic = true\n' >"$Q/server.toml"
setsid kiln server --config "$Q/server.toml" --listen "127.0.0.1:$PORT" --data-dir "$Q/server" >"$Q/server.log" 2>&1 </dev/null &
pids+=($!)
echo $! >"$Q/server.pid"
for i in $(seq 100); do
  if ! kill -0 "${pids[0]}" 2>/dev/null; then
    echo "kiln: the server did not start (port $PORT taken? set KILN_QUICKSTART_PORT):" >&2
    cat "$Q/server.log" >&2
    exit 1
  fi
  [ -s "$Q/server/admin.token" ] && busybox wget -q -O /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null && break
  [ "$i" = 100 ] && { echo "kiln: the server did not answer within 10 s (log $Q/server.log)" >&2; exit 1; }
  sleep 0.1
done
export KILN_SERVER="http://127.0.0.1:$PORT"
export KILN_TOKEN=$(cat "$Q/server/admin.token")
echo "kiln: server on $KILN_SERVER (admin token in $Q/server/admin.token, log $Q/server.log)" >&2

printf 'data_dir = "%s"\n' "$Q/worker" >"$Q/worker.toml"
kiln image create -n busybox -m busybox -q --config "$Q/worker.toml" >/dev/null
kiln worker enroll --token "$(kiln host token create)" --name quickstart --config "$Q/worker.toml" >/dev/null
setsid kiln worker run --config "$Q/worker.toml" >"$Q/worker.log" 2>&1 </dev/null &
pids+=($!)
echo $! >"$Q/worker.pid"
echo "kiln: worker enrolled and running (log $Q/worker.log)" >&2

kiln job add examples/hello.toml >/dev/null
RUN=$(kiln job execute hello)
echo "kiln: run $RUN queued; following its console" >&2
kiln run observe "$RUN"
kiln artifact get "$RUN" -o ./hello-server-artifacts
echo "kiln: artifacts of $RUN in ./hello-server-artifacts:" >&2
ls -l ./hello-server-artifacts
cat ./hello-server-artifacts/*.txt

trap - EXIT
cat >&2 <<EOM

kiln: the server and the worker keep running. See the run, its console and
kiln: its artifacts in the web view:

    $KILN_SERVER/runs/$RUN

kiln: (all runs: $KILN_SERVER/ ; stop both: kill $(cat "$Q/worker.pid") $(cat "$Q/server.pid"))
EOM
