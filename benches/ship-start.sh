#!/usr/bin/env bash
# Time from `starphleet ship` start to the first `Hi` from /echo/Hi, with an empty
# build cache (fresh state dir) and with a warm one (same state dir after `down`).
#
#   benches/ship-start.sh [RUNS]        # default 5 runs of each; run as root
#
# Each ship runs in its own network namespace; all traffic stays inside it.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
scripts/deps curl
cargo build --release --bin starphleet >/dev/null 2>&1
BIN=$PWD/target/release/starphleet
WORK=$(mktemp -d /tmp/spbench.XXXXXX)
NS=spbench$$
cleanup() {
  for d in "$WORK"/state*; do
    [ -d "$d" ] && nsenter --net=/var/run/netns/$NS "$BIN" down --state-dir "$d" >/dev/null 2>&1 || true
  done
  ip netns del $NS 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add $NS
ip -n $NS link set lo up

git_commit() { git -C "$1" add -A && git -C "$1" -c user.name=b -c user.email=b@b commit -qm "$2"; }
mkdir -p "$WORK/echo" "$WORK/hq"
cp examples/echo/server.py examples/echo/Starphleet "$WORK/echo/"
git -C "$WORK/echo" init -qb main && git_commit "$WORK/echo" echo
git -C "$WORK/hq" init -qb main
printf 'autodeploy file://%s\npublish --private 3000 --public 80 --url /echo\n' "$WORK/echo" > "$WORK/hq/echo.orders"
git_commit "$WORK/hq" hq

now_ms() { date +%s%3N; }
# Starts a ship on state dir $1, prints ms until GET /echo/Hi answers Hi, leaves the ship down.
one_run() {
  local state=$1 start end pid
  start=$(now_ms)
  nsenter --net=/var/run/netns/$NS "$BIN" ship --headquarters "file://$WORK/hq" --state-dir "$state" \
    --poll-interval 2s --admin off >>"$WORK/ship.log" 2>&1 &
  pid=$!
  until [ "$(nsenter --net=/var/run/netns/$NS curl -s --max-time 1 http://127.0.0.1/echo/Hi)" = "Hi" ]; do
    sleep 0.005
    if [ $(( $(now_ms) - start )) -gt 60000 ]; then echo "timeout; see $WORK/ship.log" >&2; exit 1; fi
  done
  end=$(now_ms)
  nsenter --net=/var/run/netns/$NS "$BIN" down --state-dir "$state" >/dev/null
  wait $pid 2>/dev/null || true
  echo $(( end - start ))
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

cold=(); warm=()
for i in $(seq 1 "$RUNS"); do
  cold+=("$(one_run "$WORK/state$i")")
  warm+=("$(one_run "$WORK/state$i")")
done
echo "ship start → first Hi, $RUNS runs each (ms)"
echo "  empty build cache: ${cold[*]}  median $(printf '%s\n' "${cold[@]}" | median)"
echo "  warm build cache:  ${warm[*]}  median $(printf '%s\n' "${warm[@]}" | median)"
