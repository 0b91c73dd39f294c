#!/usr/bin/env bash
# A phleet of N ships (default 10) on one machine, each in its own network namespace, joined
# by a bridge in a hub namespace where `git daemon` serves HQ. Measures:
#   - convergence: an app commit → the first and the last ship serving it (default rollout,
#     2 s poll);
#   - `status --phleet` latency with every ship up, and with 3 of them down;
#   - each ship's CPU and RSS over 20 s of being in the phleet, idle.
#
#   benches/phleet.sh [N]            # run as root
#   STARPHLEET_BIN=path/to/starphleet benches/phleet.sh 10
#
# All traffic stays inside the namespaces the script creates; everything is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10}
if [ -z "${STARPHLEET_BIN:-}" ]; then
  cargo build --release --bin starphleet >/dev/null 2>&1
  STARPHLEET_BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/starphleet
fi
BIN=$STARPHLEET_BIN
WORK=$(mktemp -d /tmp/spphleet.XXXXXX)
HUB=spph$$
HUB_IP=10.250.0.254
ship_ns() { echo "spps$$-$1"; }
ship_ip() { echo "10.250.0.$1"; }
in_ns() { local ns=$1; shift; nsenter --net=/var/run/netns/"$ns" "$@"; }

cleanup() {
  for i in $(seq 1 "$N"); do
    [ -d "$WORK/s$i" ] && in_ns "$(ship_ns "$i")" "$BIN" down --state-dir "$WORK/s$i" >/dev/null 2>&1 || true
    ip netns del "$(ship_ns "$i")" 2>/dev/null || true
  done
  [ -f "$WORK/daemon.pid" ] && kill "$(cat "$WORK/daemon.pid")" 2>/dev/null || true
  ip netns del "$HUB" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$HUB"
ip -n "$HUB" link set lo up
ip -n "$HUB" link add br0 type bridge
ip -n "$HUB" link set br0 up
ip -n "$HUB" addr add "$HUB_IP/24" dev br0
for i in $(seq 1 "$N"); do
  ns=$(ship_ns "$i")
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip link add "pph$$a$i" type veth peer name "pph$$b$i"
  ip link set "pph$$a$i" netns "$HUB"
  ip link set "pph$$b$i" netns "$ns"
  ip -n "$HUB" link set "pph$$a$i" master br0 up
  ip -n "$ns" addr add "$(ship_ip "$i")/24" dev "pph$$b$i"
  ip -n "$ns" link set "pph$$b$i" up
done

git_commit() { git -C "$1" add -A && git -C "$1" -c user.name=b -c user.email=b@b commit -qm "$2"; }
mkdir -p "$WORK/git/hq" "$WORK/echo"
cp examples/echo/server.py examples/echo/Starphleet "$WORK/echo/"
git -C "$WORK/echo" init -qb main && git_commit "$WORK/echo" echo
git -C "$WORK/git/hq" init -qb main
printf 'autodeploy file://%s\npublish --private 3000 --public 80 --url /echo\n' "$WORK/echo" > "$WORK/git/hq/echo.orders"
for i in $(seq 1 "$N"); do echo "s$i http://$(ship_ip "$i"):9797"; done > "$WORK/git/hq/ships"
git_commit "$WORK/git/hq" hq
in_ns "$HUB" git daemon --reuseaddr --export-all --listen=$HUB_IP --base-path="$WORK/git" "$WORK/git" \
  >/dev/null 2>&1 &
echo $! > "$WORK/daemon.pid"
sleep 0.5

TOKEN=$("$BIN" token)
now_ms() { date +%s%3N; }
start_ship() {
  local i=$1
  mkdir -p "$WORK/s$i"
  (umask 077; echo "$TOKEN" > "$WORK/s$i/phleet.token")
  nsenter --net=/var/run/netns/"$(ship_ns "$i")" "$BIN" ship --headquarters "git://$HUB_IP/hq" --name "s$i" \
    --admin "$(ship_ip "$i"):9797" --state-dir "$WORK/s$i" >"$WORK/s$i.log" 2>&1 &
  echo $! > "$WORK/s$i.pid"
}
for i in $(seq 1 "$N"); do start_ship "$i"; done

# Commits the app and prints, in ms, when the first and the last ship served it.
serving_commit() { # ship index → the echo app commit it serves
  in_ns "$(ship_ns 1)" "$BIN" status --phleet --json --state-dir "$WORK/s1" 2>/dev/null |
    python3 -c 'import json,sys
v=json.load(sys.stdin)
for s in v["ships"]:
    c=[x.get("app_commit") for x in s.get("services",[]) if x["name"]=="echo"]
    print(c[0] if c and c[0] else "-")' 2>/dev/null || true
}
wait_all() { # commit → waits until every ship serves it; prints first and last ms after $2
  local want=$1 t0=$2 first="" n
  while :; do
    n=$(serving_commit | grep -c "^$want\$" || true)
    [ -z "$first" ] && [ "$n" -ge 1 ] && first=$(( $(now_ms) - t0 ))
    [ "$n" -ge "$N" ] && break
    [ $(( $(now_ms) - t0 )) -gt 300000 ] && { echo "timeout: $n of $N serve $want" >&2; exit 1; }
    sleep 0.05
  done
  echo "$first $(( $(now_ms) - t0 ))"
}
v1=$(git -C "$WORK/echo" rev-parse HEAD)
t0=$(now_ms)
read -r first last < <(wait_all "$v1" "$t0")
echo "start of $N ships → first serving: ${first} ms, last: ${last} ms"

echo "# v2" >> "$WORK/echo/server.py"; git_commit "$WORK/echo" v2
v2=$(git -C "$WORK/echo" rev-parse HEAD)
t0=$(now_ms)
read -r first last < <(wait_all "$v2" "$t0")
echo "convergence, app commit → first ship serving: ${first} ms, last: ${last} ms (2 s poll)"

status_latency() {
  local runs=10 total=0 t
  for _ in $(seq 1 $runs); do
    t=$(now_ms)
    in_ns "$(ship_ns 1)" "$BIN" status --phleet --json --state-dir "$WORK/s1" >/dev/null
    total=$(( total + $(now_ms) - t ))
  done
  echo $(( total / runs ))
}
echo "status --phleet, all $N up: mean $(status_latency) ms of 10"

# Each ship's CPU (utime+stime) and RSS over 20 s, idle, in the phleet.
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
declare -A before
for i in $(seq 1 "$N"); do before[$i]=$(cpu_ticks "$(cat "$WORK/s$i.pid")"); done
sleep 20
HZ=$(getconf CLK_TCK)
total_cpu=0; max_rss=0
for i in $(seq 1 "$N"); do
  pid=$(cat "$WORK/s$i.pid")
  d=$(( $(cpu_ticks "$pid") - before[$i] ))
  total_cpu=$(( total_cpu + d ))
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  [ "$rss" -gt "$max_rss" ] && max_rss=$rss
done
echo "per ship, idle in a phleet of $N: $(python3 -c "print(round($total_cpu/$HZ/20/$N*100,2))") % of one core (mean), RSS max $(( max_rss / 1024 )) MiB"

for i in 8 9 10; do
  [ "$i" -le "$N" ] || continue
  kill -9 "$(cat "$WORK/s$i.pid")" 2>/dev/null || true
  [ -f "$WORK/s$i/proxy.pid" ] && kill -9 "$(cat "$WORK/s$i/proxy.pid")" 2>/dev/null || true
done
sleep 0.5
echo "status --phleet, 3 of $N down: mean $(status_latency) ms of 10"
for i in 8 9 10; do
  [ "$i" -le "$N" ] || continue
  ip -n "$(ship_ns "$i")" link set "pph$$b$i" down
done
echo "status --phleet, 3 of $N not answering at all (links down): mean $(status_latency) ms of 10"
