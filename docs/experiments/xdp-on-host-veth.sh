#!/bin/bash
# What an XDP program on a container's host-side veth costs the container's traffic, before it
# does anything: a pass-through program (xdp-pass.ll) in driver mode, driver mode with GRO on
# the host side, and generic mode, against none. Decides whether encapsulation in XDP on the
# host-side veth is worth building (issue 14; docs/performance.md). Two namespaces of its own,
# removed at exit; iperf3 both ends on CPU 0.
# Needs: iperf3, ethtool, llc (Debian: apt install iperf3 ethtool llvm). Run as root.
set -u
DIR=$(cd "$(dirname "$0")" && pwd)
OBJ=$(mktemp --suffix=.o)
llc -march=bpf -filetype=obj "$DIR/xdp-pass.ll" -o "$OBJ" || exit 1
PIDFILE=$(mktemp)
C=xe-c-$$; H=xe-h-$$
cleanup() { [ -n "${SP:-}" ] && kill "$SP" 2>/dev/null; ip netns del $C 2>/dev/null; ip netns del $H 2>/dev/null; rm -f "$OBJ" "$PIDFILE"; }
trap cleanup EXIT
ip netns add $C; ip netns add $H
ip -n $C link add vc type veth peer name vh netns $H
ip -n $C addr add 10.99.0.1/24 dev vc; ip -n $H addr add 10.99.0.2/24 dev vh
ip -n $C link set vc up; ip -n $H link set vh up; ip -n $C link set lo up; ip -n $H link set lo up
ip netns exec $H iperf3 -s -D -A 0 -p 5399 --pidfile "$PIDFILE" >/dev/null 2>&1; sleep 0.5
SP=$(cat "$PIDFILE")
meas() {
  local label=$1
  for r in 1 2 3; do
    t=$(ip netns exec $C iperf3 -c 10.99.0.2 -p 5399 -t 3 -O 1 -A 0 -J | python3 -c 'import json,sys;d=json.load(sys.stdin);print("%.2f"%(d["end"]["sum_received"]["bits_per_second"]/1e9))')
    u=$(ip netns exec $C iperf3 -c 10.99.0.2 -p 5399 -u -l 64 -b 0 -t 3 -A 0 -J | python3 -c 'import json,sys;d=json.load(sys.stdin);s=d["end"]["sum"];print("%.0f"%((s["packets"]-s["lost_packets"])/s["seconds"]/1000))')
    echo "$label round $r: TCP ${t} Gbit/s, UDP 64 B ${u} kpps received"
  done
}
echo "container side: $(ip netns exec $C ethtool -k vc 2>/dev/null | grep -E '^tcp-segmentation-offload|^generic-segmentation' | tr '\n' ' ')"
meas "no XDP          "
ip -n $H link set dev vh xdpdrv obj "$OBJ" sec xdp
echo "container side: $(ip netns exec $C ethtool -k vc 2>/dev/null | grep -E '^tcp-segmentation-offload|^generic-segmentation' | tr '\n' ' ')"
meas "XDP pass (drv)  "
ip netns exec $H ethtool -K vh gro on >/dev/null 2>&1
echo "container side: $(ip netns exec $C ethtool -k vc 2>/dev/null | grep -E '^tcp-segmentation-offload|^generic-segmentation' | tr '\n' ' ')"
meas "XDP pass, GRO on"
ip -n $H link set dev vh xdpdrv off
ip netns exec $H ethtool -K vh gro off >/dev/null 2>&1
ip -n $H link set dev vh xdpgeneric obj "$OBJ" sec xdp
meas "XDP pass (gen)  "
