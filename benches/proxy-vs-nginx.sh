#!/usr/bin/env bash
# proxy-vs-nginx.sh — Starphleet's data-plane proxy against nginx, side by side, on the same
# upstream, in the same run.
#
#   benches/proxy-vs-nginx.sh          # as root on Debian 12; about 90 s plus the build
#
# What it does
#   1. apt-get installs `nginx` and `wrk` if missing (the distro's nginx service is never
#      started or touched: every nginx here runs from its own prefix in a temp dir).
#   2. Builds `starphleet` in release (`cargo build --release --bin starphleet`) and the
#      route-programming helper `crates/proxy/examples/set_routes.rs`.
#   3. Creates a private network namespace with only `lo` in it and runs everything there: all
#      traffic is loopback, and nothing listens on the machine's own interfaces.
#   4. Starts ONE upstream on 127.0.0.1:18000: a separate nginx, 1 worker, `return 200
#      "hello, world\n"` (13 bytes) with unlimited keep-alive. nginx answering from memory is
#      the cheapest HTTP server at hand, so the upstream is not the bottleneck; all proxies share
#      it.
#   5. Starts three proxies, each forwarding `/echo/…` to the upstream with the prefix stripped
#      (`/echo/hi` arrives as `/hi`) and the same header work (Host kept, X-Forwarded-For,
#      -Proto, -Host and -Prefix set, hop-by-hop headers dropped):
#        nginx      :18001  `worker_processes auto`, `upstream { keepalive 64; }`,
#                           `proxy_http_version 1.1`, `proxy_set_header Connection ""`,
#                           access_log off;
#        nginx+log  :18002  the same, with an access log file buffered like ours
#                           (`access_log … buffer=32k flush=1s`);
#        ours       :18003  `starphleet proxy --state-dir TMP` exactly as the ship runs it — it
#                           always writes each container's access log file, which is why the
#                           nginx+log column is the like-for-like one — programmed over
#                           TMP/proxy.sock with one route `/echo` → the upstream.
#   6. For ROUNDS rounds, the order of the proxies rotating each round, runs against each:
#        throughput: wrk -t2 -c64 -d${DURATION}s  http://127.0.0.1:PORT/echo/hi
#        latency:    wrk -t1 -c1  -d${LAT_DURATION}s (one connection, one request at a time)
#      and prints the mean over the rounds: requests/s, p50/p99 latency, ours/nginx ratios,
#      and each proxy's resident memory after the load (nginx: master + workers).
#   7. Kills every process it started and removes its namespace and temp dir on exit (trap).
#
# CPU pinning (PIN=1, the default with 2+ CPUs): on a small machine wrk, the upstream and the
# proxy fight for the same cores and whoever the scheduler favours wins, so the proxy under
# test gets the upper half of the CPUs (CPU 1 of 2) and wrk + the upstream the lower half
# (CPU 0 of 2), for every proxy alike. nginx keeps `worker_processes auto` (one worker per
# online CPU), ours one worker thread per CPU it may run on. PIN=0 runs everything unpinned.
#
# Knobs (environment): ROUNDS=2 DURATION=8 LAT_DURATION=4 PIN=1
#   LTO=1                build starphleet with fat LTO and one codegen unit (into
#                        target/bench-lto, leaving the shared target dir alone): what the
#                        workspace's release profile would give with `lto = "fat"` and
#                        `codegen-units = 1`
#   STARPHLEET_BIN=PATH  use this starphleet binary instead of building one
#   KEEP=1               keep the temp dir (configs, logs, raw wrk output) and print its path

set -euo pipefail

ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-8}
LAT_DURATION=${LAT_DURATION:-4}
NCPU=$(nproc)
[ "$ROUNDS" -ge 1 ] 2>/dev/null || { echo "ROUNDS must be 1 or more" >&2; exit 2; }
PIN=${PIN:-$([ "$NCPU" -ge 2 ] && echo 1 || echo 0)}
UP_PORT=18000
PROXIES=(nginx nginx+log ours)
declare -A PORT=([nginx]=18001 [nginx+log]=18002 [ours]=18003)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TMP=$(mktemp -d /tmp/proxy-vs-nginx.XXXXXX)
chmod 755 "$TMP" # nginx workers run as nobody and must reach their temp paths
NS=pvn$$
PIDS=()

cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	ip netns del "$NS" 2>/dev/null || true
	if [ "${KEEP:-0}" = 1 ]; then
		echo "kept $TMP" >&2
	else
		rm -rf "$TMP"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() {
	echo "proxy-vs-nginx: $*" >&2
	exit 1
}

[ "$(id -u)" = 0 ] || die "run as root (network namespace, apt-get)"

# ------------------------------------------------------------------ tools and build

missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
		{ apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps |
	grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)}
if [ -n "${STARPHLEET_BIN:-}" ]; then
	BUILD="given binary $STARPHLEET_BIN"
elif [ "${LTO:-0}" = 1 ]; then
	CARGO_TARGET_DIR=$TARGET/bench-lto CARGO_PROFILE_RELEASE_LTO=fat \
		CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 cargo build --release --bin starphleet >&2
	STARPHLEET_BIN=$TARGET/bench-lto/release/starphleet
	BUILD="release + fat LTO, 1 codegen unit"
else
	cargo build --release --bin starphleet >&2
	STARPHLEET_BIN=$TARGET/release/starphleet
	BUILD="workspace release profile"
fi
cargo build --release -p starphleet-proxy --example set_routes >&2
SET_ROUTES=$TARGET/release/examples/set_routes

# ------------------------------------------------------------------ namespace and pinning

ip netns add "$NS"
ip -n "$NS" link set lo up
IN_NS=(ip netns exec "$NS")

if [ "$PIN" = 1 ] && [ "$NCPU" -ge 2 ]; then
	half=$((NCPU / 2))
	LOAD_CPUS=$([ "$half" = 1 ] && echo 0 || echo "0-$((half - 1))")
	PROXY_CPUS=$([ "$half" = $((NCPU - 1)) ] && echo "$half" || echo "$half-$((NCPU - 1))")
	ON_LOAD=("${IN_NS[@]}" taskset -c "$LOAD_CPUS")
	ON_PROXY=("${IN_NS[@]}" taskset -c "$PROXY_CPUS")
	PINNING="pinned: proxy on CPU $PROXY_CPUS, wrk + upstream on CPU $LOAD_CPUS"
else
	ON_LOAD=("${IN_NS[@]}")
	ON_PROXY=("${IN_NS[@]}")
	PINNING="unpinned"
fi

# Waits until GET http://127.0.0.1:$1$2 (inside the namespace) answers 200.
wait_200() {
	local status
	for _ in $(seq 100); do
		status=$("${IN_NS[@]}" bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" &&
			printf "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" "$2" >&3 &&
			head -c 12 <&3' _ "$1" "$2" 2>/dev/null || true)
		[ "$status" = "HTTP/1.1 200" ] && return 0
		sleep 0.1
	done
	die "127.0.0.1:$1$2 never answered 200 (logs in $TMP; KEEP=1 keeps them)"
}

# nginx temp paths: the distro build points them at /var/lib/nginx otherwise.
nginx_paths() {
	local d=$1
	cat <<EOF
    client_body_temp_path $d/client_body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
EOF
}

# Resident memory of a process and its children, in MiB.
rss_mib() {
	local total=0 pid kb
	for pid in "$1" $(pgrep -P "$1" || true); do
		kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
		total=$((total + ${kb:-0}))
	done
	awk -v kb="$total" 'BEGIN { printf "%.1f", kb / 1024 }'
}

# ------------------------------------------------------------------ the upstream

mkdir -p "$TMP/upstream/logs"
cat >"$TMP/upstream/nginx.conf" <<EOF
worker_processes 1;
error_log $TMP/upstream/logs/error.log warn;
pid $TMP/upstream/nginx.pid;
events { worker_connections 4096; }
http {
$(nginx_paths "$TMP/upstream")
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    default_type text/plain;
    server {
        listen 127.0.0.1:$UP_PORT backlog=4096;
        location / { return 200 "hello, world\n"; }
    }
}
EOF
"${ON_LOAD[@]}" "$NGINX" -p "$TMP/upstream" -c "$TMP/upstream/nginx.conf" -g 'daemon off;' \
	>>"$TMP/upstream/logs/stderr" 2>&1 &
PIDS+=($!)
wait_200 "$UP_PORT" /

# ------------------------------------------------------------------ nginx, the reference

declare -A PID
start_nginx() { # NAME ACCESS_LOG_DIRECTIVE
	local name=$1 dir="$TMP/$1"
	mkdir -p "$dir/logs"
	cat >"$dir/nginx.conf" <<EOF
worker_processes auto;
error_log $dir/logs/error.log warn;
pid $dir/nginx.pid;
events { worker_connections 4096; }
http {
$(nginx_paths "$dir")
    $2
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    upstream backend {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:${PORT[$name]} backlog=4096;
        location /echo/ {
            proxy_pass http://backend/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$http_host;
            proxy_set_header X-Forwarded-Prefix /echo;
        }
    }
}
EOF
	"${ON_PROXY[@]}" "$NGINX" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' \
		>>"$dir/logs/stderr" 2>&1 &
	PID[$name]=$!
	PIDS+=($!)
	wait_200 "${PORT[$name]}" /echo/hi
}
start_nginx nginx "access_log off;"
start_nginx nginx+log "access_log $TMP/nginx+log/logs/access.log combined buffer=32k flush=1s;"

# ------------------------------------------------------------------ ours

mkdir -p "$TMP/ours"
"${ON_PROXY[@]}" "$STARPHLEET_BIN" proxy --state-dir "$TMP/ours" >>"$TMP/ours/proxy.log" 2>&1 &
PID[ours]=$!
PIDS+=($!)
for _ in $(seq 100); do
	[ -S "$TMP/ours/proxy.sock" ] && break
	sleep 0.05
done
"$SET_ROUTES" "$TMP/ours/proxy.sock" "${PORT[ours]}" /echo "127.0.0.1:$UP_PORT" echo
wait_200 "${PORT[ours]}" /echo/hi

# ------------------------------------------------------------------ load

# Converts a wrk duration (850.00us, 1.20ms, 2.00s) to microseconds.
to_us() {
	awk -v v="$1" 'BEGIN {
		n = v + 0
		if (v ~ /us$/) m = 1; else if (v ~ /ms$/) m = 1000; else if (v ~ /m$/) m = 60e6; else m = 1e6
		printf "%.1f", n * m }'
}

declare -A SUM
add() { SUM[$1]=$(awk -v a="${SUM[$1]:-0}" -v b="$2" 'BEGIN { print a + b }'); }

# bench NAME SCENARIO THREADS CONNS SECONDS: runs wrk, adds requests/s, p50 and p99 to SUM.
bench() {
	local name=$1 scen=$2 out rps p50 p99 bad
	out=$("${ON_LOAD[@]}" wrk -t"$3" -c"$4" -d"$5"s --latency "http://127.0.0.1:${PORT[$name]}/echo/hi")
	echo "$out" >>"$TMP/wrk-$name-$scen.txt"
	rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
	p50=$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")")
	p99=$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")
	bad=$(awk '/Non-2xx|Socket errors/' <<<"$out")
	[ -z "$bad" ] || die "$name: $bad"
	[ -n "$rps" ] || die "$name: wrk printed no result: $out"
	printf '  %-10s %-4s %9.0f req/s  p50 %7.0f us  p99 %7.0f us\n' "$name" "$scen" "$rps" "$p50" "$p99" >&2
	add "$name.$scen.rps" "$rps"
	add "$name.$scen.p50" "$p50"
	add "$name.$scen.p99" "$p99"
}

echo "upstream :$UP_PORT (nginx return 200); nginx :${PORT[nginx]}, nginx+log :${PORT[nginx+log]}, ours :${PORT[ours]}; $PINNING" >&2
echo "warming up" >&2
for name in "${PROXIES[@]}"; do
	"${ON_LOAD[@]}" wrk -t2 -c64 -d2s "http://127.0.0.1:${PORT[$name]}/echo/hi" >/dev/null
done
for round in $(seq "$ROUNDS"); do
	# Rotate the order each round, so no proxy always runs first or last.
	shift_by=$(((round - 1) % ${#PROXIES[@]}))
	order=("${PROXIES[@]:shift_by}" "${PROXIES[@]:0:shift_by}")
	echo "round $round: ${order[*]}" >&2
	for name in "${order[@]}"; do
		bench "$name" c64 2 64 "$DURATION"
		bench "$name" c1 1 1 "$LAT_DURATION"
	done
done
declare -A RSS
for name in "${PROXIES[@]}"; do
	RSS[$name]=$(rss_mib "${PID[$name]}")
done

# ------------------------------------------------------------------ report

mean() { awk -v s="${SUM[$1]}" -v n="$ROUNDS" 'BEGIN { printf "%.0f", s / n }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
echo
echo "proxy vs nginx, $(date -u '+%Y-%m-%d %H:%M UTC'), $NCPU CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $PINNING"
echo "nginx $("$NGINX" -v 2>&1 | sed 's|.*/||'), wrk -t2 -c64 -d${DURATION}s and -t1 -c1 -d${LAT_DURATION}s, mean of $ROUNDS rounds; ours: $BUILD"
echo
printf '| %-22s | %9s | %9s | %9s | %10s | %14s |\n' "" nginx nginx+log ours "ours/nginx" "ours/nginx+log"
printf '|%s|%s|%s|%s|%s|%s|\n' "------------------------" "----------:" "----------:" "----------:" "-----------:" "---------------:"
row() { # LABEL KEY
	local a b c
	a=$(mean "nginx.$2")
	b=$(mean "nginx+log.$2")
	c=$(mean "ours.$2")
	printf '| %-22s | %9s | %9s | %9s | %10s | %14s |\n' "$1" "$a" "$b" "$c" "$(ratio "$c" "$a")" "$(ratio "$c" "$b")"
}
row "c64 requests/s" c64.rps
row "c64 p50 latency (us)" c64.p50
row "c64 p99 latency (us)" c64.p99
row "c1 requests/s" c1.rps
row "c1 p50 latency (us)" c1.p50
row "c1 p99 latency (us)" c1.p99
printf '| %-22s | %9s | %9s | %9s | %10s | %14s |\n' "RSS after load (MiB)" \
	"${RSS[nginx]}" "${RSS[nginx+log]}" "${RSS[ours]}" \
	"$(ratio "${RSS[ours]}" "${RSS[nginx]}")" "$(ratio "${RSS[ours]}" "${RSS[nginx+log]}")"
echo
echo "requests/s: higher is better; latency and memory: lower is better."
