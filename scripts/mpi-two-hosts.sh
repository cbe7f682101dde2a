#!/usr/bin/env bash
# Data-parallel training across two "hosts" on this one machine: network namespaces efmpi-a and efmpi-b joined
# by a veth pair (10.99.0.1 and 10.99.0.2), one rank in each, talking over Open MPI's TCP transport only. mpirun
# runs in efmpi-a and starts the remote rank through a launcher that enters efmpi-b (where a cluster would use
# ssh). The two ranks' losses must equal one process's to 1e-5 relative (docs/ARCHITECTURE.md, "Data
# parallelism"). Needs root (ip netns), iproute2 and a build with MPI (scripts/build.sh).
#   scripts/mpi-two-hosts.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-20}
cli=$PWD/build/eformer
A=efmpi-a
B=efmpi-b
tmp=$(mktemp -d)
cleanup() {
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
cleanup
tmp=$(mktemp -d)

ip netns add "$A"
ip netns add "$B"
ip link add efveth-a netns "$A" type veth peer name efveth-b netns "$B"
ip -n "$A" addr add 10.99.0.1/24 dev efveth-a
ip -n "$B" addr add 10.99.0.2/24 dev efveth-b
for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
ip -n "$A" link set efveth-a up
ip -n "$B" link set efveth-b up

# mpirun's remote launcher ("ssh HOST COMMAND"): enter the host's namespace instead.
cat > "$tmp/launch" <<EOF
#!/bin/sh
host=\$1; shift
echo "\$host" >> "$tmp/launched"
case "\$host" in
  10.99.0.1) ns=$A ;;
  10.99.0.2) ns=$B ;;
  *) echo "launch: unknown host \$host" >&2; exit 1 ;;
esac
exec ip netns exec "\$ns" sh -c "\$*"
EOF
chmod +x "$tmp/launch"
printf '10.99.0.1 slots=1\n10.99.0.2 slots=1\n' > "$tmp/hosts"

run=(train --preset tiny --set model.dropout=0 --threads 1 --log-every 1 --eval-every 0 --quiet --steps "$steps")
ip netns exec "$A" mpirun --allow-run-as-root --hostfile "$tmp/hosts" -np 2 --map-by node \
  --mca plm_rsh_agent "$tmp/launch" --mca btl tcp,self --mca btl_tcp_if_include 10.99.0.0/24 \
  --mca oob_tcp_if_include 10.99.0.0/24 "$cli" "${run[@]}" --out "$tmp/two"
"$cli" "${run[@]}" --out "$tmp/one"
grep -qx 10.99.0.2 "$tmp/launched" || { echo "mpi-two-hosts: no rank was launched in $B" >&2; exit 1; }

python3 - "$tmp" <<'EOF'
import json, sys
def losses(run):
    lines = [json.loads(l) for l in open(f"{sys.argv[1]}/{run}/log.jsonl")]
    return lines, {j["step"]: float.fromhex(j["loss_hex"]) for j in lines if j["event"] == "train"}
(lines, two), (_, one) = losses("two"), losses("one")
assert lines[0]["world_size"] == 2, lines[0]
assert sorted(two) == sorted(one), (sorted(two), sorted(one))
worst = max(abs(two[s] - one[s]) / abs(one[s]) for s in one)
comm = [j["allreduce_s"] for j in lines if "allreduce_s" in j]
print(f"two hosts over TCP (veth): {len(one)} steps, largest relative loss difference from one process "
      f"{worst:.2e}; allreduce median {sorted(comm)[len(comm) // 2] * 1e3:.1f} ms per step")
assert worst <= 1e-5, worst
EOF
