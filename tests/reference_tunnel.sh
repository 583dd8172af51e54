#!/bin/sh
# The hand-made reference for `make bench`: the fastest plain tunnel one can build by hand on this
# machine, two charon daemons (kernel-libipsec, or the kernel's XFRM where it has ESP) joined by
# one veth, iperf3 through the tunnel, nothing else on the path. The lab's own tunnel is measured
# against it in the same run, in both places the lab can be measured:
#   gateways  iperf3 between addresses of the two gateways themselves (the tunnel alone);
#   hosts     a host behind each gateway (one veth, the gateway forwards), iperf3 between the
#             hosts: what a hand-built site-to-site tunnel gives its sites, and what
#             `vnetlab verify --throughput` measures.
# and in either of two shapes:
#   plain     one veth between the gateways, one prefix a side (the reference proper);
#   like-lab  the default plan's shape: a router namespace between the gateways (one more veth and
#             one forwarding step, as the lab's backbone) and two prefixes a side (the CHILD_SA then
#             has four selector pairs, and libipsec checks each packet against them).
#   usage: reference_tunnel.sh [ESP_PROPOSAL] [SECONDS] [libipsec|kernel] [gateways|hosts] [plain|like-lab]   (as root)
# Prints "up <seconds>" (namespaces, both daemons, tunnel established: the floor for `vnetlab up`),
# "daemons <pid> <pid>" and, unless SECONDS is 0, "reference <proposal> <dataplane> <where> <Mbit/s>". Removes everything
# it made. Every process it starts stays in the caller's session: a session is a CPU share of its
# own to the scheduler (autogroups), and the lab's daemons stay in the session of `vnetlab up`.
set -eu
started=$(date +%s.%N)
esp=${1:-aes128gcm16}
seconds=${2:-3}
dataplane=${3:-libipsec}
where=${4:-gateways}
shape=${5:-plain}
tag="vref$$"
work=$(mktemp -d)
pids=""

cleanup() {
    for pid in $pids; do kill "$pid" 2>/dev/null || true; done
    sleep 0.3
    for pid in $pids; do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$tag-a" 2>/dev/null || true
    ip netns del "$tag-b" 2>/dev/null || true
    ip netns del "$tag-r" 2>/dev/null || true
    ip netns del "$tag-ah" 2>/dev/null || true
    ip netns del "$tag-bh" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

plugins="random nonce openssl aesni gcm kdf vici socket-default kernel-netlink"
[ "$dataplane" = libipsec ] && plugins="random nonce openssl aesni gcm kdf vici socket-default kernel-libipsec kernel-netlink"

side() {  # name, own public address, peer public address, local subnets, remote subnets, own inner addresses
    ns="$tag-$1"
    dir="$work/$1"
    mkdir -p "$dir"
    cat > "$dir/strongswan.conf" <<EOF
charon {
  load_modular = no
  load = $plugins
  install_routes = yes
  plugins { vici { socket = unix://$dir/charon.vici } }
  filelog { log { path = $dir/charon.log
    default = 0 } }
}
swanctl { socket = unix://$dir/charon.vici }
EOF
    cat > "$dir/swanctl.conf" <<EOF
connections { ref { version = 2
  local_addrs = $2
  remote_addrs = $3
  proposals = aes128gcm16-prfsha256-modp2048
  local { auth = psk
    id = $2 }
  remote { auth = psk
    id = $3 }
  children { ref { local_ts = $4
    remote_ts = $5
    esp_proposals = $esp } } } }
secrets { ike { secret = ReferenceOnly1 } }
EOF
    for inner in $6; do ip -n "$ns" addr add "$inner/32" dev lo; done
    STRONGSWAN_CONF="$dir/strongswan.conf" ip netns exec "$ns" unshare --mount --propagation private \
        sh -c 'mount -t tmpfs ref-run /run && exec /usr/lib/ipsec/charon' > "$dir/stderr" 2>&1 &
    pids="$pids $!"
}

ip netns add "$tag-a"
ip netns add "$tag-b"
a_public=192.0.2.1 b_public=192.0.2.2
if [ "$shape" = like-lab ]; then  # a -- router -- b, each gateway on a /30 of its own
    b_public=192.0.2.6
    ip netns add "$tag-r"
    ip -n "$tag-r" link add ga type veth peer name bb netns "$tag-a"
    ip -n "$tag-r" link add gb type veth peer name bb netns "$tag-b"
    ip -n "$tag-r" addr add 192.0.2.2/30 dev ga
    ip -n "$tag-r" addr add 192.0.2.5/30 dev gb
    for dev in lo ga gb; do ip -n "$tag-r" link set "$dev" up; done
    ip netns exec "$tag-r" sysctl -qw net.ipv4.ip_forward=1
    ip -n "$tag-a" addr add 192.0.2.1/30 dev bb
    ip -n "$tag-b" addr add 192.0.2.6/30 dev bb
else
    ip -n "$tag-a" link add bb type veth peer name bb netns "$tag-b"
    ip -n "$tag-a" addr add 192.0.2.1/30 dev bb
    ip -n "$tag-b" addr add 192.0.2.2/30 dev bb
fi
for n in a b; do ip -n "$tag-$n" link set lo up; ip -n "$tag-$n" link set bb up; done
if [ "$shape" = like-lab ]; then
    ip -n "$tag-a" route add 192.0.2.4/30 via 192.0.2.2
    ip -n "$tag-b" route add 192.0.2.0/30 via 192.0.2.5
fi
if [ "$where" = hosts ]; then  # a host behind each gateway, 10.20N.1.4/24 via 10.20N.1.1
    for n in a b; do
        net=10.20$([ $n = a ] && echo 1 || echo 2).1
        ip netns add "$tag-${n}h"
        ip -n "$tag-$n" link add s0 type veth peer name eth0 netns "$tag-${n}h"
        ip -n "$tag-$n" addr add "$net.1/24" dev s0
        ip -n "$tag-${n}h" addr add "$net.4/24" dev eth0
        ip -n "$tag-$n" link set s0 up
        ip -n "$tag-${n}h" link set lo up
        ip -n "$tag-${n}h" link set eth0 up
        ip -n "$tag-${n}h" route add default via "$net.1"
        ip netns exec "$tag-$n" sysctl -qw net.ipv4.ip_forward=1
    done
fi
if [ "$shape" = like-lab ]; then  # the second prefix a side needs an address of the gateway in it
    side a "$a_public" "$b_public" 10.201.0.0/16,10.203.0.0/16 10.202.0.0/16,10.204.0.0/16 "10.201.0.1 10.203.0.1"
    side b "$b_public" "$a_public" 10.202.0.0/16,10.204.0.0/16 10.201.0.0/16,10.203.0.0/16 "10.202.0.1 10.204.0.1"
else
    side a "$a_public" "$b_public" 10.201.0.0/16 10.202.0.0/16 10.201.0.1
    side b "$b_public" "$a_public" 10.202.0.0/16 10.201.0.0/16 10.202.0.1
fi
for n in a b; do
    tries=0
    until [ -S "$work/$n/charon.vici" ]; do
        tries=$((tries + 1)); [ $tries -gt 100 ] && { echo "reference: charon $n did not start" >&2; exit 3; }
        sleep 0.05
    done
    STRONGSWAN_CONF="$work/$n/strongswan.conf" ip netns exec "$tag-$n" swanctl --load-all --file "$work/$n/swanctl.conf" >/dev/null 2>&1
done
STRONGSWAN_CONF="$work/a/strongswan.conf" ip netns exec "$tag-a" swanctl --initiate --child ref >/dev/null
awk -v now="$(date +%s.%N)" -v t0="$started" 'BEGIN { printf "up %.3f\n", now - t0 }'
echo "daemons$pids"  # for a caller that tunes them before the measurement, which starts 0.3 s later
[ "$seconds" = 0 ] && exit 0
client="$tag-a" server="$tag-b" src=10.201.0.1 dst=10.202.0.1
[ "$where" = hosts ] && client="$tag-ah" server="$tag-bh" src=10.201.1.4 dst=10.202.1.4
ip netns exec "$server" iperf3 -s -1 -B "$dst" >/dev/null 2>&1 &
pids="$pids $!"
sleep 0.3
mbps=$(ip netns exec "$client" iperf3 -c "$dst" -B "$src" -t "$seconds" -J \
    | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e6, 1))')
echo "reference $esp $dataplane $where $shape $mbps"
