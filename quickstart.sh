#!/bin/bash
# kiln quick start on a fresh Debian 12 / Ubuntu machine, as root: installs
# the host prerequisites, builds kiln, starts containerd if it is not
# running, creates a busybox image and runs examples/hello.toml in a sandbox.
set -euo pipefail
cd "$(dirname "$0")"
export PATH=$PATH:/usr/local/go/bin
bash .ci/prereqs
go build -o /usr/local/bin/kiln ./cmd/kiln
echo "kiln: built /usr/local/bin/kiln" >&2

sock=/run/containerd/containerd.sock
if ! ctr --address "$sock" version >/dev/null 2>&1; then
  echo "kiln: starting containerd (log: /var/log/kiln-containerd.log)" >&2
  nohup containerd >/var/log/kiln-containerd.log 2>&1 &
  for _ in $(seq 50); do ctr --address "$sock" version >/dev/null 2>&1 && break; sleep 0.2; done
fi

kiln image snapshots -n busybox >/dev/null 2>&1 || kiln image create -n busybox -m busybox
kiln exec examples/hello.toml -o ./hello-artifacts
echo "kiln: artifacts in ./hello-artifacts:" >&2
ls -l ./hello-artifacts
cat ./hello-artifacts/*.txt
