// Package netcni gives sandboxes "bridge" networking (Linux) through the
// CNI plugins the distribution ships, driven by go-cni: each run gets a
// network namespace of its own, pinned under kiln's data dir, with one veth
// to the host (the ptp plugin: a point-to-point link and a /32 host route,
// so no two sandboxes share a link), an address from host-local IPAM (its
// leases under kiln's data dir), NAT egress (ipMasq), and the firewall
// plugin's accept rules. kiln adds two chains of its own: KILN-ADMIN (the
// firewall plugin's admin chain) drops every new connection into a
// sandbox, so sandboxes cannot reach each other, and what a sandbox sends
// to a denied network (link-local, Config.Deny); KILN-INPUT drops
// everything a sandbox sends to the host's own addresses, except DNS to a
// host-local nameserver the sandbox is told about. IPv4 only.
//
// Launchers (the container and the VM tier) use it through a Provider:
// Attach sets a run's network up, the Attached it returns takes it down
// again on Close, and a host without bridge networking refuses bridge
// runs in one place, saying why.
package netcni
