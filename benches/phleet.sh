#!/usr/bin/env bash
# A phleet of N ships (default 10) on one machine, each in its own network namespace, joined
# by a bridge in a hub namespace where `git daemon` serves HQ. Measures:
#   - convergence: an app commit → the first and the last ship serving it (default rollout,
#     2 s poll);
#   - `status --phleet` latency with every ship up, and with 3 of them down;
#   - each ship's CPU and RSS over 20 s of being in the phleet, idle, beside one more ship
#     following the same HQ alone (not in `ships`), measured over the same 20 s;
#   - `logs --phleet -f`: lines/s it shows while every ship's echo service logs each of a
#     stream of requests, and the lag from a line's time stamp to its display.
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
  for i in $(seq 1 "$(( N + 1 ))"); do
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
ALONE=$(( N + 1 ))
for i in $(seq 1 "$ALONE"); do
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
for i in $(seq 1 "$ALONE"); do start_ship "$i"; done

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
for i in $(seq 1 "$ALONE"); do before[$i]=$(cpu_ticks "$(cat "$WORK/s$i.pid")"); done
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
pid=$(cat "$WORK/s$ALONE.pid")
d=$(( $(cpu_ticks "$pid") - before[$ALONE] ))
echo "the same ship alone (not in ships), same 20 s: $(python3 -c "print(round($d/$HZ/20*100,2))") % of one core, RSS $(( $(awk '/VmRSS/ {print $2}' "/proc/$pid/status") / 1024 )) MiB"

# logs --phleet -f: every ship's echo logs each request of a steady stream for 10 s.
load() { # ship index → GETs /echo/line-N on its port 80 for 10 s, keep-alive
  in_ns "$(ship_ns "$1")" python3 -c '
import http.client, time
c = http.client.HTTPConnection("127.0.0.1", 80, timeout=5)
end, n = time.time() + 10, 0
while time.time() < end:
    c.request("GET", "/echo/line-%d" % n); c.getresponse().read(); n += 1
    time.sleep(0.002)
' &
}
# Each line is stamped with the time it was shown, for the lag.
( in_ns "$(ship_ns 1)" timeout 14 "$BIN" logs --phleet -f --json --kind app --state-dir "$WORK/s1" echo 2>/dev/null |
  python3 -u -c '
import sys, time
for line in sys.stdin:
    sys.stdout.write("%d %s" % (time.time_ns(), line))
' > "$WORK/follow.jsonl" ) &
follower=$!
sleep 1.5
for i in $(seq 1 "$N"); do load "$i"; done
wait "$follower" 2>/dev/null || true
python3 - "$WORK/follow.jsonl" "$N" <<'PY'
import json, sys, time
path, n = sys.argv[1], int(sys.argv[2])
lines, ships, lags = 0, set(), []
for raw in open(path):
    try:
        shown, rest = raw.split(" ", 1)
        r = json.loads(rest)
    except ValueError:
        continue
    if "line-" not in r.get("line", ""):
        continue
    lines += 1
    ships.add(r.get("ship"))
    lags.append((int(shown) - r["time_ns"]) / 1e6)
lags.sort()
q = lambda p: lags[min(len(lags) - 1, int(p * len(lags)))] if lags else float("nan")
print("logs --phleet -f: %d request lines from %d of %d ships in 10 s: %.0f lines/s; lag from the line's time to its display: median %.0f ms, p99 %.0f ms, max %.0f ms" % (lines, len(ships), n, lines / 10, q(0.5), q(0.99), q(1.0)))
PY

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
