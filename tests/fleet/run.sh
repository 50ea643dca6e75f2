#!/usr/bin/env bash
# tests/fleet/run.sh: a fleet rollout with deploy/ansible/ over three hosts behind HAProxy,
# under continuous load, with a good release and then a broken one.
#
#   sudo tests/fleet/run.sh
#
# The hosts are three systemd 254 containers from tests/e2e/sandbox.sh
# (E2E_NAME=handover-e2e-fleet1..3, root fs with openssh-server and python3 in
# /var/lib/handover-e2e-fleet), each with sshd on its own loopback port and the app on
# another; Ansible (ansible-core from PyPI, in a venv under target/) reaches them over real
# SSH with a key made here. HAProxy (Debian) on the host balances over the three app ports
# with health checks and no retries, and wrk sends load through it for each whole scenario.
#   A. release v2 (good): every host serves it; 0 failed requests.
#   B. release v3 (dies at boot): the playbook fails at the first host and names it; that
#      host still serves v2 (handover rolled back), the other two never received v3; 0 failed
#      requests; the host's metrics file counts one rolled-back reload.
# Ports: 18580-18582 sshd, 18583-18585 the app, 18586 HAProxy (nothing else uses 1858x).
# Prints `numbers:` lines; exit status 0 only if every check passed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
[[ $(id -u) == 0 ]] || { echo "fleet: must run as root (it boots containers)" >&2; exit 1; }

export E2E_DIR=/var/lib/handover-e2e-fleet
export E2E_EXTRA_PKGS="openssh-server python3 python3-apt"
N=3
SSH_PORT0=18580
APP_PORT0=18583
LB_PORT=18586
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

# Releases: a run script each; v3 dies at boot (a broken release).
release() {  # release NAME ARGS...
  local name=$1; shift
  mkdir -p "$W/releases/$name"
  printf '#!/bin/sh\nexec /usr/bin/handover demo-worker --boot-delay 1s %s "$@"\n' "$*" > "$W/releases/$name/run"
  chmod 755 "$W/releases/$name/run"
}
release v1 --message release-v1
release v2 --message release-v2
release v3 --message release-v3 --exit-at-boot 3

t=$SECONDS
playbook deploy/ansible/install.yml -e "handover_deb=$DEB" > "$W/install.log" 2>&1 ||
  { tail -n 40 "$W/install.log" >&2; fail "install.yml failed (log: $W/install.log)"; }
playbook deploy/ansible/rollout.yml -e release=v1 -e "release_src=$W/releases/v1" -e handover_serial=3 > "$W/rollout-v1.log" 2>&1 ||
  { tail -n 40 "$W/rollout-v1.log" >&2; fail "the first rollout (v1) failed (log: $W/rollout-v1.log)"; }
say "installed and started v1 on 3 hosts in $((SECONDS - t)) s"

serves() {  # serves I: the release host I's app port answers with
  curl -fsS --max-time 5 "http://127.0.0.1:$((APP_PORT0 + $1 - 1))/" 2>/dev/null | grep -o 'release-v[0-9]*' | head -n1 || true
}
for ((i = 1; i <= N; i++)); do
  [[ $(serves "$i") == release-v1 ]] || fail "$(host "$i") does not serve v1: $(serves "$i")"
done

# ------------------------------------------------------------------ HAProxy
cat > "$W/haproxy.cfg" <<EOF
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
EOF
{
  echo "frontend lb"
  echo "  bind 127.0.0.1:$LB_PORT"
  echo "  default_backend fleet"
  echo "backend fleet"
  echo "  balance roundrobin"
  echo "  option httpchk GET /"
  for ((i = 1; i <= N; i++)); do
    echo "  server $(host "$i") 127.0.0.1:$((APP_PORT0 + i - 1)) check inter 200ms fall 2 rise 2"
  done
} > "$W/haproxy.backend"
sed -i "/^backend_placeholder$/{r $W/haproxy.backend
d}" "$W/haproxy.cfg"
haproxy -c -q -f "$W/haproxy.cfg" || fail "haproxy config"
haproxy -db -f "$W/haproxy.cfg" > "$W/haproxy.log" 2>&1 &
LB_PID=$!
deadline=$((SECONDS + 20))
until curl -fsS --max-time 2 "http://127.0.0.1:$LB_PORT/" >/dev/null 2>&1; do
  ((SECONDS < deadline)) || fail "HAProxy does not answer on 127.0.0.1:$LB_PORT"
  sleep 0.2
done

# ------------------------------------------------------------------ load
load_start() {  # load_start NAME: wrk through HAProxy until load_stop
  wrk -t1 -c4 -d600s "http://127.0.0.1:$LB_PORT/" > "$W/wrk-$1.txt" 2>&1 &
  WRK_PID=$!
  sleep 2   # steady load before the rollout: a window to compare with, not a synchronisation
}
load_stop() {  # load_stop NAME: stops wrk (SIGINT makes it report); sets REQ and FAILED
  sleep 1   # load after the rollout, likewise
  kill -INT "$WRK_PID"; wait "$WRK_PID" || true; WRK_PID=""
  local f=$W/wrk-$1.txt req errs non2xx
  req=$(awk '/requests in/ {print $1}' "$f")
  errs=$(awk -F'[ ,]+' '/Socket errors/ {print $4 + $6 + $8 + $10}' "$f")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$f")
  [[ -n $req ]] || { cat "$f" >&2; fail "no wrk report for $1"; }
  REQ=$req FAILED=$((${errs:-0} + ${non2xx:-0}))
}
# HAProxy's own count of failed requests (only those are logged). Lines for `lb/<NOSRV>`
# with CR-- are wrk's own connections closed by SIGINT before they sent a request: not counted.
lb_errors() {
  grep -c ' lb fleet/' "$W/haproxy.log" || true
}

# ------------------------------------------------------------------ A: a good release
load_start A
t=$SECONDS
playbook deploy/ansible/rollout.yml -e release=v2 -e "release_src=$W/releases/v2" > "$W/rollout-v2.log" 2>&1 ||
  { tail -n 40 "$W/rollout-v2.log" >&2; fail "rollout of v2 failed (log: $W/rollout-v2.log)"; }
a_secs=$((SECONDS - t))
load_stop A; a_req=$REQ a_failed=$FAILED
for ((i = 1; i <= N; i++)); do
  [[ $(serves "$i") == release-v2 ]] || fail "A: $(host "$i") does not serve v2: $(serves "$i")"
done
a_hosts=$(grep -o 'fleet[0-9]: release v2 serves; rollout on this host [0-9.]* s, reload [0-9.]* s' "$W/rollout-v2.log" |
  sed 's/: release v2 serves; rollout on this host / /; s/ s, reload / s (reload /; s/ s$/ s)/' | paste -sd ';' -)
echo "numbers: fleet A (good release v2, serial 1): through HAProxy $a_req requests, $a_failed failed; playbook $a_secs s; per host: $a_hosts"
((a_failed == 0)) || { cat "$W/wrk-A.txt" >&2; fail "A: $a_failed failed requests"; }
[[ $(grep -c 'release v2 serves' "$W/rollout-v2.log") == 3 ]] || fail "A: not every host reported v2"

# ------------------------------------------------------------------ B: a broken release
load_start B
t=$SECONDS
if playbook deploy/ansible/rollout.yml -e release=v3 -e "release_src=$W/releases/v3" > "$W/rollout-v3.log" 2>&1; then
  fail "B: the rollout of the broken release v3 succeeded"
fi
b_secs=$((SECONDS - t))
load_stop B; b_req=$REQ b_failed=$FAILED
stopped=$(grep -o 'ROLLOUT STOPPED at [a-z0-9]*' "$W/rollout-v3.log" | head -n1 | awk '{print $4}')
[[ $stopped == fleet1 ]] || { tail -n 40 "$W/rollout-v3.log" >&2; fail "B: the playbook did not stop at fleet1 (said: '${stopped}')"; }
grep -q 'fleet1 still serves v2' "$W/rollout-v3.log" || fail "B: the failure message does not say fleet1 still serves v2"
for ((i = 1; i <= N; i++)); do
  [[ $(serves "$i") == release-v2 ]] || fail "B: $(host "$i") does not serve v2: $(serves "$i")"
done
for ((i = 2; i <= N; i++)); do
  if sandbox "$i" exec test -e /srv/app/releases/v3; then fail "B: $(host "$i") received v3"; fi
done
[[ $(sandbox 1 exec readlink /srv/app/current) == /srv/app/releases/v2 ]] || fail "B: fleet1's current was not put back to v2"
sandbox 1 exec cat "$METRICS" > "$W/fleet1.prom"
metric() { awk -v s="$1" '$1 == s {print $2}' "$W/fleet1.prom"; }
rb=$(metric 'handover_reloads_total{name="app",result="rolled_back"}')
ok=$(metric 'handover_reloads_total{name="app",result="ok"}')
gen=$(metric 'handover_active_generation{name="app"}')
last=$(metric 'handover_last_reload_duration_seconds{name="app"}')
failed_exits=$(metric 'handover_worker_exits_total{name="app",reason="failed"}')
why=$(grep -o 'handover: reload to generation [^"]*' "$W/rollout-v3.log" | head -n1 | cut -c1-160)
echo "numbers: fleet B (broken release v3): through HAProxy $b_req requests, $b_failed failed; playbook $b_secs s, stopped at $stopped: ${why:-?}"
echo "numbers: fleet B fleet1 metrics: reloads ok $ok rolled_back $rb; active generation $gen; last reload ${last} s; failed worker exits $failed_exits"
((b_failed == 0)) || { cat "$W/wrk-B.txt" >&2; fail "B: $b_failed failed requests"; }
[[ $rb == 1 ]] || { cat "$W/fleet1.prom" >&2; fail "B: fleet1's metrics show $rb rolled-back reloads, not 1"; }
[[ $ok == 1 ]] || fail "B: fleet1's metrics show $ok good reloads, not 1 (v2)"
n_lb_errors=$(lb_errors)
((n_lb_errors == 0)) || { grep ' lb fleet/' "$W/haproxy.log" | head >&2; fail "HAProxy logged $n_lb_errors failed requests"; }
if grep -q 'is DOWN' "$W/haproxy.log"; then grep 'is DOWN' "$W/haproxy.log" >&2; fail "a host failed HAProxy's health check"; fi

echo "numbers: fleet total $((SECONDS - t_start)) s (3 containers, install, 3 rollouts)"
echo "fleet: ok"
