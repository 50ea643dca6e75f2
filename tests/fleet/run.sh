#!/usr/bin/env bash
# tests/fleet/run.sh: a fleet rollout with deploy/ansible/ over three hosts behind HAProxy,
# under continuous load, with a good release and two releases that are bad on one host.
#
#   sudo tests/fleet/run.sh
#
# The hosts are three systemd 254 containers from tests/e2e/sandbox.sh
# (E2E_NAME=handover-e2e-fleet1..3, root fs with openssh-server and python3 in
# /var/lib/handover-e2e-fleet), each with sshd on its own loopback port and the app on
# another; Ansible (ansible-core from PyPI, in a venv under target/) reaches them over real
# SSH with a key made here. HAProxy (Debian) on the host balances over the three app ports
# with health checks and no retries, and wrk sends load through it for each whole scenario
# (any wrk socket error or non-2xx answer, any error HAProxy logs, fails the test).
#   A. release v2 (good), serial 1: every host serves it.
#   B. release v3, bad on fleet2 only, serial 1: fleet1 takes it; the play stops at fleet2
#      (exit 2, named), which still serves v2 (handover rolled back; `current` is put back and
#      its metrics count one rolled-back reload); fleet3 never receives v3.
#   C. release v4, bad on fleet1 only, serial 2: the batch fleet1+fleet2 finishes; fleet2
#      takes v4 and keeps it, fleet1 is back on its own previous release (v3), and
#      max_fail_percentage 0 ends the play after the batch: fleet3 (v2) never receives v4
#      (without it, Ansible would go on to fleet3: this scenario is what catches that).
#   D. release v5, which boots everywhere but answers 500 to 30% of its requests, with
#      `canary = 1` (install.yml again with handover_canary=1, canary_time 10s), serial 1:
#      fleet1's canary fails the reload (exit 2, the canary's numbers named), fleet1 still
#      serves v3, fleet2 and fleet3 never receive v5. Its load goes through a second HAProxy
#      frontend, made for canaries: it opens a server connection per request (`option
#      http-server-close`), so that the canary gets its share of the host's requests (with
#      HAProxy's default reuse of its server connections, a run saw the canaries answer fewer
#      than min_requests in canary_time on every host: they passed unjudged and v5 went out
#      everywhere), and it retries a 500 once on another host (and nothing else). wrk sees 0
#      failed requests; HAProxy retried the canary's 500s (about 30% of the answers it had
#      reported at its verdict) and at most 1% of the requests.
# In each, 0 failed requests, and the playbook's ROLLOUT SUMMARY (read from the hosts) is
# checked line by line against what each host serves over HTTP and holds on disk.
# Ports: 18580-18582 sshd, 18583-18585 the app, 18586 HAProxy, 18587 its frontend for D
# (nothing else uses 1858x).
# Prints `numbers:` lines; exit status 0 only if every check passed.
set -Eeuo pipefail
# Whatever else fails (a command under set -e, a pipeline under pipefail) says where and what.
trap 'echo "fleet: FAILED: line $LINENO: \`$BASH_COMMAND\` exited with status $? (unexpected)" >&2' ERR
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
[[ $(id -u) == 0 ]] || { echo "fleet: must run as root (it boots containers)" >&2; exit 1; }

export E2E_DIR=/var/lib/handover-e2e-fleet
export E2E_EXTRA_PKGS="openssh-server python3 python3-apt"
N=3
SSH_PORT0=18580
APP_PORT0=18583
LB_PORT=18586
LBC_PORT=18587
W=$ROOT/target/fleet
VENV=$ROOT/target/fleet-venv
ANSIBLE_CORE='ansible-core>=2.15,<2.18'
METRICS=/var/lib/prometheus/node-exporter/app.prom
t_start=$SECONDS

say() { echo "fleet: $*" >&2; }
fail() { echo "fleet: FAILED: $*" >&2; exit 1; }
host() { echo "fleet$1"; }
sandbox() { local i=$1; shift; E2E_NAME=handover-e2e-$(host "$i") tests/e2e/sandbox.sh "$@"; }

# ------------------------------------------------------------------ host tools
declare -A PKG_OF=([haproxy]=haproxy [wrk]=wrk [ssh]=openssh-client [ssh-keygen]=openssh-client
  [ssh-keyscan]=openssh-client [curl]=curl)
missing=()
for c in "${!PKG_OF[@]}"; do command -v "$c" >/dev/null || missing+=("${PKG_OF[$c]}"); done
/usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if ((${#missing[@]})); then
  say "installing host packages: ${missing[*]}"
  apt-get update -qq >/dev/null
  # shellcheck disable=SC2046
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi
if [[ ! -x $VENV/bin/ansible-playbook ]]; then
  say "installing $ANSIBLE_CORE from PyPI into $VENV"
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "$ANSIBLE_CORE"
fi

# ------------------------------------------------------------------ build
cargo build --release --locked
DEB=$(packaging/build-deb.sh --no-build)
tests/e2e/sandbox.sh build

rm -rf "$W"; mkdir -p "$W/releases"
LB_PID="" WRK_PID=""
cleanup() {
  [[ -n $WRK_PID ]] && kill "$WRK_PID" 2>/dev/null || true
  [[ -n $LB_PID ]] && kill "$LB_PID" 2>/dev/null || true
  local i; for ((i = 1; i <= N; i++)); do sandbox "$i" down >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

# ------------------------------------------------------------------ hosts
ssh-keygen -q -t ed25519 -N '' -C handover-fleet-test -f "$W/id_ed25519"
: > "$W/known_hosts"
t_boot=$SECONDS
for ((i = 1; i <= N; i++)); do
  port=$((SSH_PORT0 + i - 1))
  sandbox "$i" up >&2
  # Root's key, the host's own key, sshd on its loopback port only.
  sandbox "$i" exec sh -c 'mkdir -m 700 -p /root/.ssh && cat > /root/.ssh/authorized_keys' < "$W/id_ed25519.pub"
  sandbox "$i" exec sh -c "rm -f /etc/ssh/ssh_host_* && ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key &&
    printf 'Port $port\nListenAddress 127.0.0.1\nHostKey /etc/ssh/ssh_host_ed25519_key\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\n' > /etc/ssh/sshd_config.d/fleet.conf &&
    systemctl start ssh"
done
for ((i = 1; i <= N; i++)); do
  port=$((SSH_PORT0 + i - 1))
  deadline=$((SECONDS + 30))
  until ssh-keyscan -t ed25519 -p "$port" 127.0.0.1 2>/dev/null >> "$W/known_hosts" && grep -q "^\[127.0.0.1\]:$port " "$W/known_hosts"; do
    ((SECONDS < deadline)) || fail "sshd of $(host "$i") did not answer on 127.0.0.1:$port within 30 s"
    sleep 0.2
  done
done
say "3 hosts up with sshd in $((SECONDS - t_boot)) s"

{
  echo "[handover]"
  for ((i = 1; i <= N; i++)); do
    echo "$(host "$i") ansible_host=127.0.0.1 ansible_port=$((SSH_PORT0 + i - 1)) handover_listen=127.0.0.1:$((APP_PORT0 + i - 1))"
  done
  echo "[handover:vars]"
  echo "ansible_user=root"
  echo "ansible_ssh_private_key_file=$W/id_ed25519"
  echo "ansible_ssh_common_args='-o UserKnownHostsFile=$W/known_hosts -o StrictHostKeyChecking=yes'"
  echo "handover_workers=2"
  echo "handover_ready=notify"
  echo "handover_boot_timeout=20s"
  echo "handover_graceful_timeout=10s"
  echo "handover_metrics_textfile=$METRICS"
} > "$W/inventory"

export ANSIBLE_CONFIG=$ROOT/deploy/ansible/ansible.cfg
export ANSIBLE_LOCAL_TEMP=$W/ansible-tmp ANSIBLE_SSH_CONTROL_PATH_DIR=$W/cp ANSIBLE_NOCOLOR=1
playbook() { "$VENV/bin/ansible-playbook" -i "$W/inventory" "$@"; }

# Releases: a run script each. A release given BAD_ON=HOST exits at boot (code 3) on that
# host only (as a release would that needs something one host lacks), and serves elsewhere;
# one given ERROR_RATE boots everywhere and answers 500 to that share of its requests.
release() {  # release NAME [BAD_ON [ERROR_RATE]]
  local name=$1 bad=${2:-} rate=${3:-}
  mkdir -p "$W/releases/$name"
  {
    echo '#!/bin/sh'
    [[ -n $bad ]] && echo "[ \"\$(uname -n)\" = handover-e2e-$bad ] && exec /usr/bin/handover demo-worker --boot-delay 1s --message release-$name --exit-at-boot 3"
    echo "exec /usr/bin/handover demo-worker --boot-delay 1s --message release-$name${rate:+ --error-rate $rate}"
  } > "$W/releases/$name/run"
  chmod 755 "$W/releases/$name/run"
}
release v1
release v2
release v3 fleet2   # B: bad on the second host only (serial 1)
release v4 fleet1   # C: bad on the first host of a batch of two (serial 2)
release v5 "" 0.3   # D: boots everywhere, fails 30% of its answers (caught by the canary)

t=$SECONDS
playbook deploy/ansible/install.yml -e "handover_deb=$DEB" > "$W/install.log" 2>&1 ||
  { tail -n 40 "$W/install.log" >&2; fail "install.yml failed (log: $W/install.log)"; }
playbook deploy/ansible/rollout.yml -e release=v1 -e "release_src=$W/releases/v1" -e handover_serial=3 > "$W/rollout-v1.log" 2>&1 ||
  { tail -n 40 "$W/rollout-v1.log" >&2; fail "the first rollout (v1) failed (log: $W/rollout-v1.log)"; }
say "installed and started v1 on 3 hosts in $((SECONDS - t)) s"

serves() {  # serves I: the release host I's app port answers with (v1, ...), or "nothing"
  local body
  body=$(curl -fsS --max-time 5 "http://127.0.0.1:$((APP_PORT0 + $1 - 1))/" 2>&1) || { echo nothing; return 0; }
  if [[ $body =~ release-(v[0-9]+) ]]; then echo "${BASH_REMATCH[1]}"; else echo "other"; fi
}
for ((i = 1; i <= N; i++)); do
  got=$(serves "$i")
  [[ $got == v1 ]] || fail "$(host "$i") serves '$got' after the first rollout, expected v1"
done

# ------------------------------------------------------------------ HAProxy
cat > "$W/haproxy.cfg" <<EOF2
global
  log stderr format short local0 info
defaults
  mode http
  log global
  option httplog
  # Only failed requests are logged: the log is the list of errors.
  option dontlog-normal
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  # No retry and no redispatch: a connection or request a host fails is a failed request.
  retries 0
backend_placeholder
EOF2
{
  echo "frontend lb"
  echo "  bind 127.0.0.1:$LB_PORT"
  # HAProxy's own counters (CSV), to wait for load instead of sleeping.
  echo "  stats enable"
  echo "  stats uri /lb-stats"
  echo "  default_backend fleet"
  echo "backend fleet"
  echo "  balance roundrobin"
  # /info: the demo worker's --error-rate never fails it (D's release answers 500 to 30% of
  # the rest); a health check sees whether a host serves, handover judges what it serves.
  echo "  option httpchk GET /info"
  for ((i = 1; i <= N; i++)); do
    echo "  server $(host "$i") 127.0.0.1:$((APP_PORT0 + i - 1)) check inter 200ms fall 2 rise 2"
  done
  # D's way in (see the header): a server connection per request, a 500 retried once on
  # another host (nothing else is); the same servers, their health from the checks above.
  echo "frontend lbc"
  echo "  bind 127.0.0.1:$LBC_PORT"
  echo "  default_backend fleetc"
  echo "backend fleetc"
  echo "  balance roundrobin"
  echo "  option http-server-close"
  echo "  retry-on 500"
  echo "  retries 1"
  echo "  option redispatch 1"
  for ((i = 1; i <= N; i++)); do
    echo "  server $(host "$i") 127.0.0.1:$((APP_PORT0 + i - 1)) track fleet/$(host "$i")"
  done
} > "$W/haproxy.backend"
sed -i "/^backend_placeholder$/{r $W/haproxy.backend
d}" "$W/haproxy.cfg"
haproxy -c -q -f "$W/haproxy.cfg" || fail "haproxy rejects its config $W/haproxy.cfg"
haproxy -db -f "$W/haproxy.cfg" > "$W/haproxy.log" 2>&1 &
LB_PID=$!
deadline=$((SECONDS + 20))
until curl -fsS --max-time 2 "http://127.0.0.1:$LB_PORT/" >/dev/null 2>&1; do
  ((SECONDS < deadline)) || fail "HAProxy does not answer on 127.0.0.1:$LB_PORT within 20 s"
  sleep 0.2
done

# lb_stat PROXY SERVER FIELD: one of HAProxy's counters (CSV), e.g. lb_stat fleet BACKEND
# req_tot; "?" if it cannot be read.
lb_stat() {
  local csv
  csv=$(curl -fsS --max-time 2 "http://127.0.0.1:$LB_PORT/lb-stats;csv") || { echo "?"; return 0; }
  awk -F, -v px="$1" -v sv="$2" -v field="$3" \
    'NR == 1 {sub(/^# /, ""); for (i = 1; i <= NF; i++) if ($i == field) c = i; next}
     $1 == px && $2 == sv && c {print ($c == "" ? 0 : $c); found = 1} END {if (!found) print "?"}' <<< "$csv"
}
# The backend the load goes through: fleet (frontend lb), or fleetc (frontend lbc, for D).
LOAD_BACKEND=fleet LOAD_PORT=$LB_PORT
# lb_requests: requests the load's backend has answered so far (HAProxy's req_tot).
lb_requests() { lb_stat "$LOAD_BACKEND" BACKEND req_tot; }
await_requests() {  # await_requests N WHAT: until the backend has answered N more requests
  local n=$1 from now deadline=$((SECONDS + 15))
  from=$(lb_requests)
  [[ $from =~ ^[0-9]+$ ]] || fail "cannot read HAProxy's req_tot for the $LOAD_BACKEND backend (got '$from')"
  while :; do
    now=$(lb_requests)
    [[ $now =~ ^[0-9]+$ ]] && ((now - from >= n)) && return 0
    ((SECONDS < deadline)) || fail "$2: HAProxy's $LOAD_BACKEND backend did not answer $n requests within 15 s (req_tot $from -> $now)"
    sleep 0.05
  done
}

# ------------------------------------------------------------------ load
# wrk_counts FILE: "REQUESTS SOCKET_ERRORS NON_2XX" from a wrk report. Socket errors are the
# sum of connect, read, write and timeout on wrk's "Socket errors:" line (absent: none).
wrk_counts() {
  awk '/ requests in / {r = $1}
       /Socket errors:/ {for (i = 1; i < NF; i++) if ($i ~ /^(connect|read|write|timeout)$/) {v = $(i + 1); sub(/,$/, "", v); e += v}}
       /Non-2xx or 3xx responses:/ {n = $NF}
       END {print (r == "" ? "none" : r), e + 0, n + 0}' "$1"
}
# The parser itself, on a report with every kind of error: a parser that reads 0 fails here.
printf '%s\n' '  1234 requests in 2.00s, 1.00MB read' '  Socket errors: connect 1, read 2, write 3, timeout 40' \
  '  Non-2xx or 3xx responses: 5' > "$W/wrk-selftest.txt"
got=$(wrk_counts "$W/wrk-selftest.txt")
[[ $got == "1234 46 5" ]] || fail "the wrk report parser reads '$got' from $W/wrk-selftest.txt, expected '1234 46 5'"

load_start() {  # load_start NAME: wrk through HAProxy until load_stop; returns once it flows
  wrk -t1 -c4 -d600s "http://127.0.0.1:$LOAD_PORT/" > "$W/wrk-$1.txt" 2>&1 &
  WRK_PID=$!
  await_requests 1000 "$1 (load before the rollout)"
}
load_stop() {  # load_stop NAME: stops wrk (SIGINT makes it report); sets REQ SOCK_ERRS NON2XX FAILED
  await_requests 1000 "$1 (load after the rollout)"
  kill -INT "$WRK_PID"
  wait "$WRK_PID" || fail "$1: wrk exited with status $? (report: $W/wrk-$1.txt)"
  WRK_PID=""
  read -r REQ SOCK_ERRS NON2XX < <(wrk_counts "$W/wrk-$1.txt")
  [[ $REQ =~ ^[0-9]+$ ]] || { cat "$W/wrk-$1.txt" >&2; fail "$1: no 'requests in' line in wrk's report $W/wrk-$1.txt"; }
  FAILED=$((SOCK_ERRS + NON2XX))
}
# HAProxy's own count of failed requests (only those are logged, and, through lbc, those it
# retried on another host: counted by lb_retried when they ended with a 2xx). Lines for
# `lb/<NOSRV>` with CR-- are wrk's own connections closed by SIGINT before they sent a
# request: not counted. Fields: client [date] frontend backend/server timers status ...
lb_error_lines() {
  awk '$3 == "lb" && $4 ~ /^fleet\// || $3 == "lbc" && $4 ~ /^fleetc\// && $6 !~ /^2/' "$W/haproxy.log"
}
lb_errors() { lb_error_lines | wc -l; }
lb_retried() {  # requests through lbc that HAProxy redispatched (+1) and that ended with a 2xx
  awk '$3 == "lbc" && $4 ~ /^fleetc\// && $6 ~ /^2/ && $0 ~ / [0-9]+\/[0-9]+\/[0-9]+\/[0-9]+\/\+1 /' "$W/haproxy.log" | wc -l
}

# ------------------------------------------------------------------ scenarios
# rollout SCEN RELEASE SERIAL: rolls RELEASE out under load; sets RC, SECS, LOG and the
# wrk numbers; fails on any failed request.
rollout() {
  local scen=$1 rel=$2 serial=$3 t
  LOG=$W/rollout-$rel.log
  load_start "$scen"
  t=$SECONDS RC=0
  playbook deploy/ansible/rollout.yml -e "release=$rel" -e "release_src=$W/releases/$rel" -e "handover_serial=$serial" > "$LOG" 2>&1 || RC=$?
  SECS=$((SECONDS - t))
  load_stop "$scen"
  echo "numbers: fleet $scen (release $rel, serial $serial): through HAProxy $REQ requests, $FAILED failed ($SOCK_ERRS socket errors, $NON2XX non-2xx); playbook $SECS s, exit $RC"
  ((FAILED == 0)) || { cat "$W/wrk-$scen.txt" >&2; fail "$scen: $FAILED failed requests through HAProxy ($SOCK_ERRS socket errors, $NON2XX non-2xx), expected 0"; }
}

# summary SCEN: the last ROLLOUT SUMMARY the playbook printed (its lines, unquoted), in
# $W/summary-SCEN.txt; fails unless there is exactly one.
summary() {
  local scen=$1 n
  awk '/^TASK \[ROLLOUT SUMMARY\]/ {on = 1; next} on && /^ok: / {block = ""; grab = 1; next}
       grab && /^    \]/ {grab = 0; on = 0; last = block; next}
       grab && /^        "/ {l = $0; sub(/^        "/, "", l); sub(/",?$/, "", l); block = block l "\n"}
       END {printf "%s", last}' "$LOG" > "$W/summary-$scen.txt"
  [[ -s $W/summary-$scen.txt ]] || { tail -n 40 "$LOG" >&2; fail "$scen: the playbook printed no ROLLOUT SUMMARY (log: $LOG)"; }
  local printed; printed=$(grep -c '^ROLLOUT OF ' "$W/summary-$scen.txt" || true)
  # One summary task per batch; it prints only at the end of the play.
  n=$(awk '/^TASK \[ROLLOUT SUMMARY\]/ {on = 1; next} on && /^ok: / {c++} /^TASK/ {on = 0} END {print c + 0}' "$LOG")
  ((n == 1)) || { cat "$W/summary-$scen.txt" >&2; fail "$scen: the playbook printed $n ROLLOUT SUMMARYs, expected 1 (at the end of the play; log: $LOG)"; }
  ((printed == 1)) || fail "$scen: the summary has $printed 'ROLLOUT OF' lines, expected 1"
  sed "s/^/fleet: $scen summary: /" "$W/summary-$scen.txt" >&2
}

# expect SCEN RELEASE HEADER HOST=RELEASE:STATE...: checks every host against STATE (took,
# mate = took it in the batch that failed, failed, untouched), both on the host (its HTTP
# answer, its `current`, whether it holds releases/RELEASE) and in the summary's line for it
# (a failed host's with handover's reason: $WHY in it), and the summary's header and counts
# line.
WHY="exited (exit code 3) before it was ready"
expect() {
  local scen=$1 rel=$2 header=$3; shift 3
  local f=$W/summary-$scen.txt spec h i want state got cur line kind on=() failed=() unreached=()
  [[ $(head -n1 "$f") == "$header" ]] ||
    fail "$scen: the summary's first line is '$(head -n1 "$f")', expected '$header'"
  for spec in "$@"; do
    h=${spec%%=*} want=${spec#*=}; state=${want#*:} want=${want%%:*}; i=${h#fleet}
    got=$(serves "$i")
    [[ $got == "$want" ]] || fail "$scen: $h serves '$got' over HTTP, expected $want ($state)"
    cur=$(sandbox "$i" exec readlink /srv/app/current) || fail "$scen: cannot read $h's /srv/app/current"
    [[ $cur == "/srv/app/releases/$want" ]] || fail "$scen: $h's current points at '$cur', expected /srv/app/releases/$want"
    if sandbox "$i" exec test -e "/srv/app/releases/$rel"; then
      [[ $state != untouched ]] || fail "$scen: $h holds releases/$rel, expected it untouched by the rollout of $rel"
    else
      [[ $state == untouched ]] || fail "$scen: $h has no releases/$rel, expected it to have received $rel ($state)"
    fi
    case $state in
      took) kind="took $rel" ;;
      mate) kind="took $rel in the batch that failed, and keeps it" ;;
      failed) kind="FAILED: $rel did not come up, handover kept the previous generation, current points at $want again; why: " ;;
      untouched) kind="not reached by this rollout (no releases/$rel on it)" ;;
      *) fail "expect: unknown state '$state'" ;;
    esac
    line=$(grep "^$h: " "$f" || true)
    [[ $(grep -c "^$h: " "$f" || true) == 1 ]] || fail "$scen: the summary has $(grep -c "^$h: " "$f" || true) lines for $h, expected 1"
    [[ $line == "$h: serves $want - $kind"* ]] || fail "$scen: the summary says '$line', expected '$h: serves $want - $kind...'"
    if [[ $state == failed ]]; then
      [[ $line == *"$WHY"* ]] ||
        fail "$scen: the summary's reason for $h is not handover's ('...$WHY...'): '$line'"
      failed+=("$h")
    fi
    [[ $state == untouched ]] && unreached+=("$h")
    [[ $want == "$rel" ]] && on+=("$h")
  done
  local IFS=,
  local counts="serve $rel: ${on[*]:-none} (${#on[@]} of $#); failed: ${failed[*]:-none}; not reached: ${unreached[*]:-none}"
  counts=${counts//,/, }
  [[ $(sed -n 2p "$f") == "$counts" ]] || fail "$scen: the summary's second line is '$(sed -n 2p "$f")', expected '$counts'"
}

metrics_of() {  # metrics_of SCEN I: host I's metrics file in $W/SCEN-fleetI.prom
  sandbox "$2" exec cat "$METRICS" > "$W/$1-$(host "$2").prom" || fail "$1: cannot read $METRICS on $(host "$2")"
}
metric() { awk -v s="$2" '$1 == s {print $2}' "$1"; }
check_rolled_back() {  # check_rolled_back SCEN I OK [RB]: host I counts RB (1) rolled-back reloads and OK good ones
  local f rb ok want_rb=${4:-1}
  metrics_of "$1" "$2"; f=$W/$1-$(host "$2").prom
  rb=$(metric "$f" 'handover_reloads_total{name="app",result="rolled_back"}')
  ok=$(metric "$f" 'handover_reloads_total{name="app",result="ok"}')
  echo "numbers: fleet $1 $(host "$2") metrics: reloads ok ${ok:-?} rolled_back ${rb:-?}; active generation $(metric "$f" 'handover_active_generation{name="app"}'); last reload $(metric "$f" 'handover_last_reload_duration_seconds{name="app"}') s; failed worker exits $(metric "$f" 'handover_worker_exits_total{name="app",reason="failed"}')"
  [[ $rb == "$want_rb" ]] || { cat "$f" >&2; fail "$1: $(host "$2")'s metrics show '${rb}' rolled-back reloads, expected $want_rb"; }
  [[ $ok == "$3" ]] || { cat "$f" >&2; fail "$1: $(host "$2")'s metrics show '${ok}' good reloads, expected $3"; }
}
check_stopped_at() {  # check_stopped_at SCEN HOST: the play failed (exit 2) at HOST and only there
  local stops
  ((RC == 2)) || { tail -n 40 "$LOG" >&2; fail "$1: ansible-playbook exited $RC, expected 2 (a failed host; log: $LOG)"; }
  stops=$(grep -o 'ROLLOUT STOPPED at [a-z0-9]*' "$LOG" | awk '{print $4}' | paste -sd ' ' - || true)
  [[ $stops == "$2" ]] || { tail -n 40 "$LOG" >&2; fail "$1: the playbook stopped at '$stops', expected at $2 only (log: $LOG)"; }
}

# masters: "fleet1=PID ..." the MainPID of handover@app on every host. A reload keeps the
# master (a restart would replace it: with the socket held by systemd it may lose no
# request, so only this shows it).
masters() {
  local i pid out=()
  for ((i = 1; i <= N; i++)); do
    pid=$(sandbox "$i" exec systemctl show -P MainPID handover@app.service) || fail "cannot read $(host "$i")'s MainPID"
    out+=("$(host "$i")=$pid")
  done
  echo "${out[*]}"
}

# A: a good release, one host at a time.
before=$(masters)
[[ $before != *=0* ]] || fail "A: handover@app is not running on every host before the rollout ($before)"
rollout A v2 1
after=$(masters)
[[ $after == "$before" ]] || fail "A: the handover masters changed ($before -> $after), expected the same PIDs (a reload, not a restart)"
((RC == 0)) || { tail -n 40 "$LOG" >&2; fail "A: the rollout of the good release v2 exited $RC, expected 0 (log: $LOG)"; }
a_hosts=$(grep -o 'fleet[0-9]: release v2 serves; rollout on this host [0-9.]* s, reload [0-9.]* s' "$LOG" |
  sed 's/: release v2 serves; rollout on this host / /; s/ s, reload / s (reload /; s/ s$/ s)/' | paste -sd ';' - || true)
echo "numbers: fleet A per host: $a_hosts"
[[ $(grep -c 'release v2 serves' "$LOG" || true) == 3 ]] || fail "A: $(grep -c 'release v2 serves' "$LOG" || true) hosts reported 'release v2 serves', expected 3"
summary A
expect A v2 "ROLLOUT OF v2 DONE: every host was reached" fleet1=v2:took fleet2=v2:took fleet3=v2:took

# B: a release bad only on the second host, one host at a time: fleet1 takes it, fleet2 is
# rolled back, the play stops there, fleet3 never receives it.
before=$(masters)
rollout B v3 1
[[ $(masters) == "$before" ]] || fail "B: the handover masters changed ($before -> $(masters)), expected the same PIDs"
check_stopped_at B fleet2
summary B
expect B v3 "ROLLOUT OF v3 STOPPED: it did not come up on fleet2; the play ends after this batch (fleet2)" \
  fleet1=v3:took fleet2=v2:failed fleet3=v2:untouched
check_rolled_back B 2 1

# C: two hosts at a time, the release bad on the first host of the first batch: its
# batch-mate fleet2 takes it and keeps it (a stopped rollout undoes nothing), fleet1 is back
# on ITS previous release (v3), and max_fail_percentage 0 stops the play after the batch:
# fleet3 never receives it. Without max_fail_percentage Ansible would go on to fleet3.
before=$(masters)
rollout C v4 2
[[ $(masters) == "$before" ]] || fail "C: the handover masters changed ($before -> $(masters)), expected the same PIDs"
check_stopped_at C fleet1
summary C
expect C v4 "ROLLOUT OF v4 STOPPED: it did not come up on fleet1; the play ends after this batch (fleet1, fleet2)" \
  fleet1=v3:failed fleet2=v4:mate fleet3=v2:untouched
check_rolled_back C 1 2

# D: a release that boots everywhere but fails 30% of its answers, with a canary. The role
# writes canary = 1 and canary_time = 10s; the changed config reloads each running app (its
# canary passes: nothing but health checks reach it, fewer than min_requests).
t=$SECONDS
playbook deploy/ansible/install.yml -e "handover_deb=$DEB" -e handover_canary=1 -e handover_canary_time=10s > "$W/install-canary.log" 2>&1 ||
  { tail -n 40 "$W/install-canary.log" >&2; fail "D: install.yml with handover_canary=1 failed (log: $W/install-canary.log)"; }
for ((i = 1; i <= N; i++)); do
  sandbox "$i" exec grep -qx 'canary = 1' /etc/handover/app.toml || fail "D: $(host "$i")'s config has no 'canary = 1' after install.yml"
done
say "D: canary = 1 on 3 hosts (install.yml, config reloaded) in $((SECONDS - t)) s"
before=$(masters)
LOAD_BACKEND=fleetc LOAD_PORT=$LBC_PORT
retried0=$(lb_stat fleetc BACKEND wretr)
rollout D v5 1
retried=$(( $(lb_stat fleetc BACKEND wretr) - retried0 ))
LOAD_BACKEND=fleet LOAD_PORT=$LB_PORT
for ((i = 1; i <= N; i++)); do  # what each host's canary was told, if it ran
  verdicts=$(sandbox "$i" exec journalctl -u handover@app.service -o cat --no-pager \
    HANDOVER_EVENT=canary-failed HANDOVER_EVENT=canary-passed | tail -n 1) || verdicts="(journal not read)"
  echo "numbers: fleet D $(host "$i")'s last canary verdict: ${verdicts:-none}"
done
[[ $(masters) == "$before" ]] || fail "D: the handover masters changed ($before -> $(masters)), expected the same PIDs"
check_stopped_at D fleet1
summary D
WHY=" canary: " expect D v5 "ROLLOUT OF v5 STOPPED: it did not come up on fleet1; the play ends after this batch (fleet1)" \
  fleet1=v3:failed fleet2=v4:untouched fleet3=v2:untouched
# fleet1: v2 and v3 good, v4 rolled back (C), the config reload of install.yml, v5 rolled back.
check_rolled_back D 1 3 2
canary_rb=$(metric "$W/D-fleet1.prom" 'handover_rollbacks_total{name="app",reason="canary"}')
[[ $canary_rb == 1 ]] || fail "D: fleet1's metrics show '$canary_rb' canary rollbacks, expected 1"
# The canary's verdict names the answers it had reported: 3 in 10 of them were 500s, each
# retried by HAProxy (the only retries: nothing else failed), except that some of them were
# health checks (GET /info, never failed: at most 5 a second, for at most canary_time 10 s).
judged=$(grep '^fleet1: ' "$W/summary-D.txt" | sed -n 's/.* canary: [0-9.]*% of \([0-9]*\) requests failed, gen [0-9]*: 0% (max_error_rate 1%).*/\1/p')
[[ $judged =~ ^[0-9]+$ ]] || fail "D: no 'canary: P% of N requests failed, gen G: 0% (max_error_rate 1%)' in fleet1's summary line"
least=$(( judged > 50 ? (judged - 50) * 3 / 10 : 1 ))
logged=$(lb_retried)
echo "numbers: fleet D: HAProxy retried $retried of $REQ requests on another host (logged: $logged, each answered 2xx in the end); fleet1's canary had reported $judged answers at its verdict (30% of those that were no health check failed); wrk saw $FAILED failed"
((retried >= least && retried >= 1)) || fail "D: HAProxy retried $retried requests, fewer than the $least 500s fleet1's canary reported at least"
((retried * 100 <= REQ)) || fail "D: HAProxy retried $retried of $REQ requests, more than 1%: more than a canary's share failed"
((logged == retried)) || fail "D: HAProxy logged $logged retried requests that ended well, its counter says $retried"

n_lb_errors=$(lb_errors)
((n_lb_errors == 0)) || { lb_error_lines | head >&2; fail "HAProxy logged $n_lb_errors failed requests, expected 0"; }
if grep -q 'is DOWN' "$W/haproxy.log"; then grep 'is DOWN' "$W/haproxy.log" >&2; fail "a host failed HAProxy's health check, expected none to"; fi

echo "numbers: fleet total $((SECONDS - t_start)) s (3 containers, install, 5 rollouts)"
echo "fleet: ok"
