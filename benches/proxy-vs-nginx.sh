#!/usr/bin/env bash
# proxy-vs-nginx.sh — Starphleet's data-plane proxy against nginx and HAProxy, side by side, on
# the same upstream, in the same run: throughput, latency and CPU time per request, over plain
# HTTP/1.1, TLS 1.3, new TLS connections and HTTP/2.
#
#   benches/proxy-vs-nginx.sh          # as root on Debian 12; about 6 minutes plus the build
#
# What it does
#   1. apt-get installs what is missing: `nginx`, `haproxy`, `wrk`, `nghttp2-client` (h2load),
#      `openssl` (the distro's nginx and haproxy services are never started or touched: each
#      one here runs from its own config in a temp dir).
#   2. Builds `starphleet` in release (`cargo build --release --bin starphleet`) and the
#      route-programming helper `crates/proxy/examples/set_routes.rs`.
#   3. Makes one ECDSA P-256 certificate for `bench.test` (openssl), used by all three proxies.
#   4. Creates a private network namespace with only `lo` in it (and `/etc/netns/NS/hosts`
#      resolving bench.test to 127.0.0.1, which `ip netns exec` shows as /etc/hosts) and runs
#      everything there: all traffic is loopback.
#   5. Starts ONE upstream on 127.0.0.1:18000: a separate nginx, 1 worker, `return 200
#      "hello, world\n"` (13 bytes) with unlimited keep-alive; all proxies share it.
#   6. Starts three proxies, each forwarding `/echo/…` to the upstream with the prefix stripped
#      (`/echo/hi` arrives as `/hi`) and the same header work (Host kept, X-Forwarded-For,
#      -Proto, -Host and -Prefix set), each on a plain and a TLS port (TLS 1.2/1.3, ALPN h2 and
#      http/1.1, upstream keep-alive):
#        nginx    :18001 / :18101  `worker_processes auto`, `keepalive 64`, `access_log off`;
#        haproxy  :18002 / :18102  `http-reuse always`, no log, threads as many as its CPUs;
#        ours     :18003 / :18103  `starphleet proxy --state-dir TMP` exactly as the ship runs
#                                  it (it always writes each container's access log, which the
#                                  other two do not), programmed over TMP/proxy.sock.
#   7. For ROUNDS rounds, the order of the proxies rotating each round, runs against each:
#        c1        wrk -t1 -c1   plain HTTP/1.1, one request at a time (latency)
#        c64       wrk -t2 -c64  plain HTTP/1.1, keep-alive (throughput)
#        tls       wrk -t2 -c64  HTTPS, TLS 1.3, keep-alive (bulk crypto)
#        tls-new   wrk -t2 -c16  HTTPS with `Connection: close`: one full TLS 1.3 handshake
#                                per request (handshake cost; requests/s = connections/s)
#        h2        h2load -c16 -m10 over TLS + ALPN h2, for DURATION seconds
#      and reads each proxy's CPU time (utime + stime of the process and its children, from
#      /proc/PID/stat: nginx master + workers, haproxy, ours) before and after each run: CPU
#      time per request = used CPU / requests answered, and the part of it spent in the kernel
#      (stime: the TCP stack, which on loopback also delivers each segment the proxy sends).
#      It also counts the TCP segments sent in the namespace during the run (`nstat`
#      TcpOutSegs, every leg): per request, how much the kernel had to carry.
#   8. Prints the means over the rounds as a markdown table: requests/s, mean/p50/p99 latency
#      (h2: mean only), CPU µs per request and its kernel part, TCP segments per request, with ours/nginx
#      and ours/haproxy ratios, and each proxy's resident memory after the load.
#   9. Kills every process it started and removes its namespace, hosts file and temp dir on
#      exit (trap).
#
# CPU pinning (PIN=1, the default with 2+ CPUs): the proxy under test gets the upper half of
# the CPUs (CPU 1 of 2), wrk/h2load + the upstream the lower half (CPU 0 of 2), for every proxy
# alike. nginx keeps `worker_processes auto`, HAProxy its default threads, ours one worker thread
# per CPU it may run on. PIN=0 runs everything unpinned.
#
# Knobs (environment): ROUNDS=2 DURATION=6 LAT_DURATION=4 PIN=1
#   CASES="c1 c64 tls tls-new h2"  the cases to run
#   LTO=1                build starphleet with fat LTO and one codegen unit (into
#                        target/bench-lto, leaving the shared target dir alone)
#   STARPHLEET_BIN=PATH  use this starphleet binary instead of building one
#   OURS_B=PATH          also run this second starphleet binary ("ours-b", :18004 / :18104)
#                        beside the first, in the same rounds: an A/B of two builds of ours,
#                        reported as an extra column and ours-b/ours
#   KEEP=1               keep the temp dir (configs, logs, raw outputs) and print its path

set -euo pipefail

ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-6}
LAT_DURATION=${LAT_DURATION:-4}
CASES=${CASES:-c1 c64 tls tls-new h2}
NCPU=$(nproc)
[ "$ROUNDS" -ge 1 ] 2>/dev/null || { echo "ROUNDS must be 1 or more" >&2; exit 2; }
PIN=${PIN:-$([ "$NCPU" -ge 2 ] && echo 1 || echo 0)}
UP_PORT=18000
HOST=bench.test
PROXIES=(nginx haproxy ours)
declare -A PORT=([nginx]=18001 [haproxy]=18002 [ours]=18003 [ours-b]=18004)
declare -A TLS_PORT=([nginx]=18101 [haproxy]=18102 [ours]=18103 [ours-b]=18104)
if [ -n "${OURS_B:-}" ]; then
	[ -x "$OURS_B" ] || { echo "OURS_B=$OURS_B is not an executable starphleet binary" >&2; exit 2; }
	PROXIES+=(ours-b)
fi
CLK_TCK=$(getconf CLK_TCK)

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
	rm -rf "/etc/netns/$NS"
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
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
		{ apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

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

# ------------------------------------------------------------------ certificate, namespace

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
	-subj "/CN=$HOST" -addext "subjectAltName=DNS:$HOST" \
	-keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
cat "$TMP/cert.pem" "$TMP/key.pem" >"$TMP/haproxy.pem"
chmod 644 "$TMP"/*.pem

ip netns add "$NS"
ip -n "$NS" link set lo up
mkdir -p "/etc/netns/$NS"
printf '127.0.0.1 localhost %s\n' "$HOST" >"/etc/netns/$NS/hosts"
IN_NS=(ip netns exec "$NS")

if [ "$PIN" = 1 ] && [ "$NCPU" -ge 2 ]; then
	half=$((NCPU / 2))
	LOAD_CPUS=$([ "$half" = 1 ] && echo 0 || echo "0-$((half - 1))")
	PROXY_CPUS=$([ "$half" = $((NCPU - 1)) ] && echo "$half" || echo "$half-$((NCPU - 1))")
	ON_LOAD=("${IN_NS[@]}" taskset -c "$LOAD_CPUS")
	ON_PROXY=("${IN_NS[@]}" taskset -c "$PROXY_CPUS")
	PINNING="pinned: proxy on CPU $PROXY_CPUS, load + upstream on CPU $LOAD_CPUS"
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

# Waits until https://bench.test:$1/echo/hi answers 200 over TLS.
wait_tls() {
	for _ in $(seq 100); do
		"${IN_NS[@]}" curl -sk --max-time 2 -o /dev/null -w '%{http_code}' \
			"https://$HOST:$1/echo/hi" 2>/dev/null | grep -q 200 && return 0
		sleep 0.1
	done
	die "https://$HOST:$1/echo/hi never answered 200 (logs in $TMP; KEEP=1 keeps them)"
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

# The process and its children (nginx workers).
tree() { echo "$1" $(pgrep -P "$1" || true); }

# Resident memory of a process and its children, in MiB.
rss_mib() {
	local total=0 pid kb
	for pid in $(tree "$1"); do
		kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
		total=$((total + ${kb:-0}))
	done
	awk -v kb="$total" 'BEGIN { printf "%.1f", kb / 1024 }'
}

# CPU time (all threads) of a process and its children, in clock ticks: "user kernel".
cpu_ticks() {
	local user=0 kernel=0 pid u k
	for pid in $(tree "$1"); do
		# Fields after the command name, which may hold spaces: utime is the 12th, stime 13th.
		read -r u k < <(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12, $13}')
		user=$((user + ${u:-0}))
		kernel=$((kernel + ${k:-0}))
	done
	echo "$user $kernel"
}

# TCP segments sent in the namespace so far: every leg (load <-> proxy <-> upstream) counts once.
segments() { "${IN_NS[@]}" nstat -asz TcpOutSegs | awk '$1 == "TcpOutSegs" {print $2}'; }

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

declare -A PID

# ------------------------------------------------------------------ nginx

dir="$TMP/nginx"
mkdir -p "$dir/logs"
cat >"$dir/nginx.conf" <<EOF
worker_processes auto;
error_log $dir/logs/error.log warn;
pid $dir/nginx.pid;
events { worker_connections 4096; }
http {
$(nginx_paths "$dir")
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate $TMP/cert.pem;
    ssl_certificate_key $TMP/key.pem;
    upstream backend {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:${PORT[nginx]} backlog=4096;
        listen 127.0.0.1:${TLS_PORT[nginx]} ssl http2 backlog=4096;
        server_name $HOST;
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
PID[nginx]=$!
PIDS+=($!)

# ------------------------------------------------------------------ haproxy

dir="$TMP/haproxy"
mkdir -p "$dir"
cat >"$dir/haproxy.cfg" <<EOF
global
    maxconn 8000
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    option http-keep-alive
frontend plain
    bind 127.0.0.1:${PORT[haproxy]}
    http-request set-header X-Forwarded-Proto http
    default_backend upstream
frontend tls
    bind 127.0.0.1:${TLS_PORT[haproxy]} ssl crt $TMP/haproxy.pem alpn h2,http/1.1
    http-request set-header X-Forwarded-Proto https
    default_backend upstream
backend upstream
    http-reuse always
    option forwardfor
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Forwarded-Prefix /echo
    http-request set-path %[path,regsub(^/echo/,/)]
    server up 127.0.0.1:$UP_PORT
EOF
"${ON_PROXY[@]}" "$HAPROXY" -f "$dir/haproxy.cfg" -db >>"$dir/stderr" 2>&1 &
PID[haproxy]=$!
PIDS+=($!)

# ------------------------------------------------------------------ ours

# start_ours NAME BINARY: `starphleet proxy` as the ship runs it, programmed over its socket.
start_ours() {
	local name=$1 bin=$2 dir="$TMP/$1"
	mkdir -p "$dir"
	"${ON_PROXY[@]}" "$bin" proxy --state-dir "$dir" >>"$dir/proxy.log" 2>&1 &
	PID[$name]=$!
	PIDS+=($!)
	for _ in $(seq 100); do
		[ -S "$dir/proxy.sock" ] && break
		sleep 0.05
	done
	"$SET_ROUTES" "$dir/proxy.sock" "${PORT[$name]}" /echo "127.0.0.1:$UP_PORT" echo \
		--tls "${TLS_PORT[$name]}" --cert "$TMP/cert.pem" --key "$TMP/key.pem" --host "$HOST"
}
start_ours ours "$STARPHLEET_BIN"
[ -z "${OURS_B:-}" ] || start_ours ours-b "$OURS_B"

for name in "${PROXIES[@]}"; do
	wait_200 "${PORT[$name]}" /echo/hi
	wait_tls "${TLS_PORT[$name]}"
done

# ------------------------------------------------------------------ load

# Converts a duration (850.00us, 1.20ms, 2.00s) to microseconds.
to_us() {
	awk -v v="$1" 'BEGIN {
		n = v + 0
		if (v ~ /us$/) m = 1; else if (v ~ /ms$/) m = 1000; else if (v ~ /m$/) m = 60e6; else m = 1e6
		printf "%.1f", n * m }'
}

declare -A SUM
add() { SUM[$1]=$(awk -v a="${SUM[$1]:-0}" -v b="$2" 'BEGIN { print a + b }'); }

# run_case NAME CASE: runs the load, adds requests/s, p50, p99 and CPU µs/request to SUM.
run_case() {
	local name=$1 scen=$2 out rps p50 p99 avg n bad user0 kernel0 user1 kernel1 seg0 seg1 cpu_us sys_us seg
	local plain="http://127.0.0.1:${PORT[$name]}/echo/hi" tls="https://$HOST:${TLS_PORT[$name]}/echo/hi"
	read -r user0 kernel0 < <(cpu_ticks "${PID[$name]}")
	seg0=$(segments)
	case $scen in
	c1) out=$("${ON_LOAD[@]}" wrk -t1 -c1 -d"$LAT_DURATION"s --latency "$plain") ;;
	c64) out=$("${ON_LOAD[@]}" wrk -t2 -c64 -d"$DURATION"s --latency "$plain") ;;
	tls) out=$("${ON_LOAD[@]}" wrk -t2 -c64 -d"$DURATION"s --latency "$tls") ;;
	tls-new) out=$("${ON_LOAD[@]}" wrk -t2 -c16 -d"$DURATION"s --latency -H 'Connection: close' "$tls") ;;
	h2) out=$("${ON_LOAD[@]}" h2load -c16 -m10 -t1 -D"$DURATION" "$tls") ;;
	esac
	seg1=$(segments)
	read -r user1 kernel1 < <(cpu_ticks "${PID[$name]}")
	echo "$out" >>"$TMP/out-$name-$scen.txt"
	if [ "$scen" = h2 ]; then
		rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' <<<"$out")
		n=$(awk '/^requests:/ {print $8}' <<<"$out")
		# h2load gives no percentiles: the mean time per request, twice.
		p50=$(to_us "$(awk '/^time for request:/ {print $6}' <<<"$out")")
		p99=$p50
		avg=$p50
		bad=$(awk '/^requests:/ && ($10 != 0 || $12 != 0) {print}' <<<"$out")
	else
		rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
		n=$(awk '/requests in/ {print $1}' <<<"$out")
		p50=$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")")
		p99=$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")
		avg=$(to_us "$(awk '$1 == "Latency" {print $2; exit}' <<<"$out")")
		bad=$(awk '/Non-2xx|Socket errors/' <<<"$out")
	fi
	[ -z "$bad" ] || die "$name $scen: $bad"
	[ -n "$rps" ] && [ -n "$n" ] && [ "$n" -gt 0 ] || die "$name $scen: no result: $out"
	per_request() { awk -v t="$1" -v hz="$CLK_TCK" -v n="$n" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }'; }
	cpu_us=$(per_request "$((user1 - user0 + kernel1 - kernel0))")
	sys_us=$(per_request "$((kernel1 - kernel0))")
	seg=$(awk -v s="$((seg1 - seg0))" -v n="$n" 'BEGIN { printf "%.2f", s / n }')
	printf '  %-8s %-8s %9.0f req/s  p50 %7.0f us  p99 %7.0f us  cpu %6.2f us/req (kernel %6.2f)  %5.2f segments/req\n' \
		"$name" "$scen" "$rps" "$p50" "$p99" "$cpu_us" "$sys_us" "$seg" >&2
	add "$name.$scen.rps" "$rps"
	add "$name.$scen.p50" "$p50"
	add "$name.$scen.p99" "$p99"
	add "$name.$scen.avg" "$avg"
	add "$name.$scen.cpu" "$cpu_us"
	add "$name.$scen.sys" "$sys_us"
	add "$name.$scen.seg" "$seg"
}

echo "upstream :$UP_PORT (nginx return 200); plain/TLS ports:$(for name in "${PROXIES[@]}"; do printf ' %s :%s/:%s' "$name" "${PORT[$name]}" "${TLS_PORT[$name]}"; done); $PINNING" >&2
echo "warming up" >&2
for name in "${PROXIES[@]}"; do
	"${ON_LOAD[@]}" wrk -t2 -c64 -d2s "http://127.0.0.1:${PORT[$name]}/echo/hi" >/dev/null
	"${ON_LOAD[@]}" wrk -t2 -c64 -d1s "https://$HOST:${TLS_PORT[$name]}/echo/hi" >/dev/null
done
for round in $(seq "$ROUNDS"); do
	# Rotate the order each round, so no proxy always runs first or last.
	shift_by=$(((round - 1) % ${#PROXIES[@]}))
	order=("${PROXIES[@]:shift_by}" "${PROXIES[@]:0:shift_by}")
	echo "round $round: ${order[*]}" >&2
	for name in "${order[@]}"; do
		for scen in $CASES; do
			run_case "$name" "$scen"
		done
	done
done
declare -A RSS
for name in "${PROXIES[@]}"; do
	RSS[$name]=$(rss_mib "${PID[$name]}")
done

# ------------------------------------------------------------------ report

mean() { awk -v s="${SUM[$1]}" -v n="$ROUNDS" 'BEGIN { printf (s / n < 100 ? "%.2f" : "%.0f"), s / n }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
echo
echo "proxy vs nginx and haproxy, $(date -u '+%Y-%m-%d %H:%M UTC'), $NCPU CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $PINNING"
echo "$("$NGINX" -v 2>&1 | sed 's|.*/|nginx |'), $("$HAPROXY" -v | awk 'NR == 1 {print "haproxy", $3}'), $(wrk -v 2>&1 | awk 'NR == 1 {print $1, $2}'), $(h2load --version | awk '{print $1, $2}'); mean of $ROUNDS rounds of ${DURATION}s (c1: ${LAT_DURATION}s); ours: $BUILD${OURS_B:+; ours-b: $OURS_B}"
echo
# With OURS_B, two more columns: ours-b beside ours, and ours-b/ours.
if [ -n "${OURS_B:-}" ]; then
	printf '| %-26s | %9s | %9s | %9s | %10s | %12s | %9s | %12s |\n' "" nginx haproxy ours "ours/nginx" "ours/haproxy" ours-b "ours-b/ours"
	printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' "----------------------------" "----------:" "----------:" "----------:" "-----------:" "-------------:" "----------:" "-------------:"
else
	printf '| %-26s | %9s | %9s | %9s | %10s | %12s |\n' "" nginx haproxy ours "ours/nginx" "ours/haproxy"
	printf '|%s|%s|%s|%s|%s|%s|\n' "----------------------------" "----------:" "----------:" "----------:" "-----------:" "-------------:"
fi
# cells LABEL NGINX HAPROXY OURS [OURS_B]: one table row with its ratios.
cells() {
	printf '| %-26s | %9s | %9s | %9s | %10s | %12s |' "$1" "$2" "$3" "$4" "$(ratio "$4" "$2")" "$(ratio "$4" "$3")"
	[ -z "${OURS_B:-}" ] || printf ' %9s | %12s |' "$5" "$(ratio "$5" "$4")"
	echo
}
row() { # LABEL KEY
	local b=""
	[ -z "${OURS_B:-}" ] || b=$(mean "ours-b.$2")
	cells "$1" "$(mean "nginx.$2")" "$(mean "haproxy.$2")" "$(mean "ours.$2")" "$b"
}
for scen in $CASES; do
	case $scen in
	c1) label="HTTP/1.1 c1" ;;
	c64) label="HTTP/1.1 c64" ;;
	tls) label="TLS 1.3 c64" ;;
	tls-new) label="new TLS conns c16" ;;
	h2) label="HTTP/2 c16 m10" ;;
	esac
	row "$label requests/s" "$scen.rps"
	if [ "$scen" = h2 ]; then
		row "$label mean (us)" "$scen.p50"
	else
		row "$label mean (us)" "$scen.avg"
		row "$label p50 (us)" "$scen.p50"
		row "$label p99 (us)" "$scen.p99"
	fi
	row "$label CPU us/request" "$scen.cpu"
	row "  of it in the kernel" "$scen.sys"
	row "  TCP segments/request" "$scen.seg"
done
cells "RSS after load (MiB)" "${RSS[nginx]}" "${RSS[haproxy]}" "${RSS[ours]}" "${RSS[ours-b]:-}"
echo
echo "requests/s: higher is better; latency, CPU per request and memory: lower is better."
