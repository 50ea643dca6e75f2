#!/usr/bin/env bash
# sandbox.sh: boot a real systemd (Debian's 252, 254, 257 or sid's; E2E_SYSTEMD) as PID 1 of
# a container of its own, for handover's end-to-end tests, on a host whose PID 1 need not be
# systemd.
#
#   tests/e2e/sandbox.sh build [--force]   build/refresh the cached root fs (~1 min, network)
#   tests/e2e/sandbox.sh up                boot; prints "pid1=<host pid> boot_s=<s> state=<state>"
#   tests/e2e/sandbox.sh exec CMD [ARG...] run CMD inside; stdin/stdout/exit status pass through
#   tests/e2e/sandbox.sh status            "running pid1=..." (exit 3 if not running)
#   tests/e2e/sandbox.sh down              power off; kill only our own tree; remove our cgroups
#   tests/e2e/sandbox.sh purge             down + delete the cached root fs ($E2E_DIR)
#
# Why a container and not the host: systemd must be PID 1 to manage units, and booting it on
# the host root would let it take over host mounts, cgroups and /tmp. Here it gets:
#  - its own root: a debootstrap minbase of the Debian suite that has the chosen systemd
#    (cached in $E2E_DIR/rootfs-$E2E_SYSTEMD, one per version) as the
#    read-only lower layer of an overlay whose upper layer is a tmpfs that exists only in
#    the container's private mount namespace: nothing it writes reaches the host disk, and
#    every `up` starts from the same clean state;
#  - new mount, pid, uts, ipc and cgroup namespaces; NOT a new network namespace, on
#    purpose: ports its socket units bind are host ports, so the test drives load from the
#    host against 127.0.0.1 (pick ports nothing else uses);
#  - a dedicated cgroup2 subtree ($CG2/$E2E_NAME) that is the root of its cgroup namespace,
#    so systemd runs in unified mode there and everything it starts stays inside;
#  - a reduced capability bounding set, read-only /proc/sys and /sys, a minimal /dev.
# It prevents accidents; it is NOT a security boundary (container root keeps CAP_SYS_ADMIN).
#
# Teardown only ever touches what this script created: its own PID 1 (by pid, verified to be
# in our cgroup), then `cgroup.kill` of our own subtree. Never kill by name.
#
# Needs root and: bash, util-linux (unshare, nsenter, setsid, script, flock, findmnt,
# setpriv), apt-get/dpkg-deb (to fetch debootstrap without installing it), wget, gpgv,
# perl, mknod; a kernel with overlayfs and cgroup2 (cgroup.kill: 5.14+). The first `up` on
# a machine (per version) downloads packages from deb.debian.org.
#
# Environment (all optional):
#   E2E_SYSTEMD       which systemd: 252 (bookworm), 254 (bookworm-backports; the default),
#                     257 (trixie) or sid (the newest Debian has; apt's Check-Valid-Until is
#                     off for it, so a snapshot mirror works)
#   E2E_NAME          instance name, must start with "handover-e2e" (default: handover-e2e)
#   E2E_DIR           state dir; last component must contain "handover-e2e"
#                     (default: /var/lib/handover-e2e)
#   E2E_MIRROR        Debian mirror (default: http://deb.debian.org/debian)
#   E2E_BIND          "SRC:DST[:rw] ..." host paths bound into the container (read-only default)
#   E2E_BOOT_TIMEOUT  seconds to wait for boot (default: 60)
#   E2E_TMPFS_SIZE    size of the tmpfs holding the overlay's upper layer (default: 1g)
#   E2E_EXTRA_PKGS    more Debian packages for the root fs (openssh-server, say); give such a
#                     root fs its own E2E_DIR (the package list is part of the recipe stamp)
set -euo pipefail

RECIPE=2   # bump when the root fs recipe changes; `up` rebuilds a root fs with another stamp
SYSTEMD_WANTED=${E2E_SYSTEMD:-254}
# The Debian suite that has each systemd; -t BACKPORTS takes systemd & co from backports.
BACKPORTS=""; APT_CONF=""
case $SYSTEMD_WANTED in
  252) SUITE=bookworm ;;
  254) SUITE=bookworm; BACKPORTS=bookworm-backports ;;
  257) SUITE=trixie ;;
  sid) SUITE=sid
       # A snapshot mirror's Release file is past its Valid-Until date.
       APT_CONF='Acquire::Check-Valid-Until "false";' ;;
  *) echo "sandbox.sh: E2E_SYSTEMD must be 252, 254, 257 or sid (got $SYSTEMD_WANTED)" >&2; exit 1 ;;
esac
NAME=${E2E_NAME:-handover-e2e}
BASE=${E2E_DIR:-/var/lib/handover-e2e}
MIRROR=${E2E_MIRROR:-http://deb.debian.org/debian}
ROOTFS=$BASE/rootfs-$SYSTEMD_WANTED
RUNDIR=$BASE/run/$NAME
BOOT_TIMEOUT=${E2E_BOOT_TIMEOUT:-60}
SELF=$(readlink -f "${BASH_SOURCE[0]}")
# systemd and its libraries; dbus for systemctl; procps for debugging (ps, pgrep by the
# person looking); python3 and nodejs for the e2e suite's Python and Node apps (a Python
# and a Node app must run unchanged under the hardened, unprivileged unit); curl for
# docs/deploy.md's commands (tests/e2e_guide.rs runs them); E2E_EXTRA_PKGS
# adds more (the fleet test's sshd).
PKGS="systemd systemd-sysv libsystemd0 libsystemd-shared libnss-systemd dbus procps python3 nodejs curl${E2E_EXTRA_PKGS:+ $E2E_EXTRA_PKGS}"
STAMP="recipe=$RECIPE systemd=$SYSTEMD_WANTED suite=$SUITE${BACKPORTS:+ -t $BACKPORTS} pkgs=$PKGS"
CPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Capabilities removed from the bounding set of the container's PID 1 and of every `exec`:
# device nodes, the host clock, modules, raw I/O, host network config, kernel log, audit,
# accounting, MAC, suspend, perf/checkpoint. None is needed to run a web app.
DROP_CAPS=-mknod,-sys_module,-sys_time,-sys_rawio,-net_admin,-syslog,-audit_control,-audit_read,-sys_pacct,-mac_admin,-mac_override,-wake_alarm,-block_suspend,-perfmon,-checkpoint_restore
# Units masked in the root fs: whatever would touch host-global kernel state (sysctl,
# modules, binfmt, clock, udev, debugfs & co, network config) or makes no sense in a
# container (gettys, timers, first boot). Fewer units also means a faster boot.
MASK_UNITS="systemd-sysctl.service systemd-modules-load.service kmod-static-nodes.service
 systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount
 systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket
 systemd-udev-trigger.service systemd-udev-settle.service systemd-hwdb-update.service
 systemd-networkd.service systemd-networkd.socket systemd-networkd-wait-online.service
 systemd-network-generator.service systemd-resolved.service systemd-timesyncd.service
 systemd-time-wait-sync.service systemd-random-seed.service systemd-pstore.service
 systemd-firstboot.service systemd-journald-audit.socket systemd-boot-update.service
 sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount
 sys-fs-fuse-connections.mount sys-firmware-efi-efivars.mount dev-hugepages.mount
 console-getty.service getty@.service serial-getty@.service container-getty@.service
 e2scrub_reap.service e2scrub_all.timer fstrim.timer apt-daily.timer
 apt-daily-upgrade.timer dpkg-db-backup.timer"

die() { echo "sandbox.sh: $*" >&2; exit 1; }
log() { echo "sandbox.sh: $*" >&2; }
need_root() { [[ $(id -u) == 0 ]] || die "must run as root"; }
need_cmds() { local c m=(); for c in "$@"; do command -v "$c" >/dev/null || m+=("$c"); done
  [[ ${#m[@]} == 0 ]] || die "missing host commands: ${m[*]}"; }

[[ $NAME =~ ^handover-e2e[a-z0-9_-]{0,40}$ ]] || die "E2E_NAME must match ^handover-e2e[a-z0-9_-]*\$"
# purge does rm -rf $BASE: insist on an absolute, plain path whose last component names us.
[[ $BASE =~ ^(/[A-Za-z0-9._-]+)+$ && $(basename "$BASE") == *handover-e2e* ]] ||
  die "E2E_DIR must be an absolute plain path whose last component contains 'handover-e2e'"

# The cgroup2 hierarchy: /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on hybrid ones.
cg2_root() {
  if [[ $(stat -fc %T /sys/fs/cgroup 2>/dev/null) == cgroup2fs ]]; then echo /sys/fs/cgroup
  elif [[ $(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null) == cgroup2fs ]]; then echo /sys/fs/cgroup/unified
  else die "no cgroup2 hierarchy mounted at /sys/fs/cgroup or /sys/fs/cgroup/unified"; fi
}
CG2=$(cg2_root)
CGDIR=$CG2/$NAME                 # holds no process itself
CG_SUP=$CGDIR/supervisor         # the host-side script(1) and unshare processes
CG_PAYLOAD=$CGDIR/payload        # root of the container's cgroup namespace ("/" for its systemd)
CG_REL=/${CGDIR#"$CG2"/}         # the path as /proc/PID/cgroup shows it (0::...)

with_lock() {  # with_lock FILE CMD...: serialize build / up / down / purge
  mkdir -p "$(dirname "$1")"
  local f=$1; shift
  exec 9>>"$f"
  flock -w 600 9 || die "timeout waiting for lock $f"
  "$@"
  exec 9>&-
}

# ---------------------------------------------------------------- process helpers
alive() {  # PID exists and is not a zombie
  [[ -n ${1:-} && -r /proc/$1/stat ]] || return 1
  local st; st=$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $st && $st != Z && $st != X ]]
}
in_our_cgroup() {  # PID is inside our cgroup subtree (seen from the host's cgroup namespace)
  local l; l=$(grep '^0::' "/proc/$1/cgroup" 2>/dev/null) || return 1
  [[ ${l#0::} == "$CG_REL" || ${l#0::} == "$CG_REL"/* ]]
}
read_pids() {
  UPID=$(cat "$RUNDIR/unshare.pid" 2>/dev/null || true)
  PID1=$(cat "$RUNDIR/pid1" 2>/dev/null || true)
}
running() {  # our PID 1 is alive and really is ours (our cgroup, another pid namespace)
  read_pids
  alive "$PID1" && in_our_cgroup "$PID1" && [[ $(readlink "/proc/$PID1/ns/pid") != $(readlink /proc/self/ns/pid) ]]
}
cg_procs() {  # every pid in our cgroup subtree
  [[ -d $CGDIR ]] || return 0
  find "$CGDIR" -name cgroup.procs -exec cat {} + 2>/dev/null || true
}
in_ns() {  # run a command inside the container: all namespaces of its PID 1, fewer caps, clean env
  # Join the container's root cgroup first, so the command is inside the container's cgroup
  # tree (0::/ from inside) and systemd can see and account for it.
  ( echo "$BASHPID" > "$CG_PAYLOAD/cgroup.procs" 2>/dev/null || true
  exec nsenter -t "$PID1" -a -r -w -- /usr/bin/setpriv --bounding-set "$DROP_CAPS" -- \
    /usr/bin/env -i PATH=$CPATH HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" SYSTEMD_PAGER= \
    SYSTEMD_COLORS=0 container=handover-e2e "$@" )
}

# ---------------------------------------------------------------- root fs
rootfs_ok() { [[ -f $ROOTFS/.e2e-stamp && $(head -n1 "$ROOTFS/.e2e-stamp") == "$STAMP" ]]; }

setup_min_dev() {  # setup_min_dev DIR: a minimal /dev on a fresh tmpfs (no host block devices)
  local d=$1
  mount -t tmpfs -o mode=0755,nosuid,size=4m handover-e2e-dev "$d"
  mknod -m 666 "$d/null" c 1 3; mknod -m 666 "$d/zero" c 1 5; mknod -m 666 "$d/full" c 1 7
  mknod -m 666 "$d/random" c 1 8; mknod -m 666 "$d/urandom" c 1 9; mknod -m 666 "$d/tty" c 5 0
  mkdir -m 755 "$d/pts"; mkdir -m 1777 "$d/shm"
  mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts "$d/pts"
  ln -s pts/ptmx "$d/ptmx"
  mount -t tmpfs -o mode=1777,nosuid,nodev handover-e2e-shm "$d/shm"
  ln -s /proc/self/fd "$d/fd"; ln -s /proc/self/fd/0 "$d/stdin"
  ln -s /proc/self/fd/1 "$d/stdout"; ln -s /proc/self/fd/2 "$d/stderr"
}

build_inner() {  # PID 1 of a throw-away pid+mount namespace: nothing it mounts or starts survives it
  local tmp=$1 r=$1/rootfs
  DEBOOTSTRAP_DIR=$tmp/dbs/usr/share/debootstrap "$tmp/dbs/usr/sbin/debootstrap" \
    --variant=minbase "$SUITE" "$r" "$MIRROR"
  [[ -z $BACKPORTS ]] || echo "deb $MIRROR $BACKPORTS main" > "$r/etc/apt/sources.list.d/backports.list"
  [[ -z $APT_CONF ]] || echo "$APT_CONF" > "$r/etc/apt/apt.conf.d/99handover-e2e"
  # No package may start a daemon during the build (there is no init to own it).
  printf '#!/bin/sh\nexit 101\n' > "$r/usr/sbin/policy-rc.d"; chmod 755 "$r/usr/sbin/policy-rc.d"
  mount -t proc proc "$r/proc"
  setup_min_dev "$r/dev"
  mount -t tmpfs -o mode=755 tmpfs "$r/run"
  mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
  local ch=(chroot "$r" /usr/bin/env -i PATH=$CPATH DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8)
  "${ch[@]}" apt-get update -q
  # -t backports: every package that exists there (systemd & co) comes from there.
  # shellcheck disable=SC2086
  "${ch[@]}" apt-get install -q -y --no-install-recommends ${BACKPORTS:+-t "$BACKPORTS"} $PKGS
  "${ch[@]}" apt-get clean
  rm -rf "$r"/var/lib/apt/lists/* "$r/usr/sbin/policy-rc.d"
  rm -f "$r"/etc/systemd/system/*.wants/*
  local u; for u in $MASK_UNITS; do ln -sf /dev/null "$r/etc/systemd/system/$u"; done
  # A volatile journal: it lives in the tmpfs upper layer anyway.
  mkdir -p "$r/etc/systemd/journald.conf.d"
  printf '[Journal]\nStorage=volatile\nRateLimitBurst=0\n' > "$r/etc/systemd/journald.conf.d/e2e.conf"
  ln -sf /usr/lib/systemd/system/multi-user.target "$r/etc/systemd/system/default.target"
  { echo "$STAMP"; "${ch[@]}" dpkg-query -W systemd libsystemd0 dbus python3 nodejs; } > "$r/.e2e-stamp"
}

do_build() {
  local force=${1:-}
  if rootfs_ok && [[ $force != --force ]]; then log "root fs up to date: $ROOTFS"; return 0; fi
  need_cmds apt-get dpkg-deb unshare chroot wget gpgv perl mknod
  [[ -e $ROOTFS ]] && running && die "the container runs on $ROOTFS; run down first"
  mkdir -p "$BASE"
  rm -rf --one-file-system "$BASE"/.build.* "$BASE"/.old.*   # debris of earlier failed builds
  local tmp t0=$SECONDS; tmp=$(mktemp -d "$BASE/.build.XXXXXX")
  # debootstrap is fetched as a .deb and unpacked here: nothing is installed on the host.
  if ! (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root debootstrap >/dev/null 2>&1); then
    log "apt-get download debootstrap failed; running apt-get update on the host first"
    apt-get update -q >/dev/null
    (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root debootstrap >/dev/null)
  fi
  dpkg-deb -x "$tmp"/debootstrap_*.deb "$tmp/dbs"
  log "building root fs for systemd $SYSTEMD_WANTED ($SUITE minbase${BACKPORTS:+ + $BACKPORTS}) in $tmp ..."
  if ! unshare --mount --pid --fork --uts --ipc --propagation private --mount-proc \
      "$SELF" __build-inner "$tmp" > "$tmp/build.log" 2>&1; then
    tail -n 30 "$tmp/build.log" >&2
    die "root fs build failed; log kept in $tmp/build.log"
  fi
  if [[ -e $ROOTFS ]]; then mv "$ROOTFS" "$BASE/.old.$$" && rm -rf --one-file-system "$BASE/.old.$$"; fi
  mv "$tmp/rootfs" "$ROOTFS"
  rm -rf --one-file-system "$tmp"
  log "root fs ready in $((SECONDS - t0)) s: $(sed -n '2,$p' "$ROOTFS/.e2e-stamp" | tr '\t\n' '= ')"
}

# ---------------------------------------------------------------- container init
init_inner() {  # PID 1 of the new pid namespace, in a private mount namespace (host root still visible)
  [[ $$ == 1 ]] || die "__init must run as PID 1 of a new pid namespace"
  local m=$RUNDIR/mnt r=$RUNDIR/mnt/root
  mount -t tmpfs -o "mode=0755,size=${E2E_TMPFS_SIZE:-1g}" handover-e2e-overlay "$m"
  mkdir "$m/upper" "$m/work" "$r"
  mount -t overlay -o "lowerdir=$ROOTFS,upperdir=$m/upper,workdir=$m/work" handover-e2e-root "$r"
  # /proc of the new pid namespace; kernel tunables read-only.
  mount -t proc -o nosuid,nodev,noexec proc "$r/proc"
  local p; for p in sys sysrq-trigger; do
    [[ -e $r/proc/$p ]] || continue
    mount --bind "$r/proc/$p" "$r/proc/$p"; mount -o remount,bind,ro "$r/proc/$p"
  done
  # Read-only sysfs; cgroup2 mounted inside the cgroup namespace shows only our subtree.
  mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$r/sys"
  mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$r/sys/fs/cgroup"
  setup_min_dev "$r/dev"
  # The pty script(1) gave us becomes /dev/console (systemd writes boot messages only to a
  # tty), as systemd-nspawn does; script(1) copies it to console.log.
  local con; con=$(tty) || die "stdin is not a tty"
  touch "$r/dev/console"; mount --bind "$con" "$r/dev/console"
  mount -t tmpfs -o mode=0755,nosuid,nodev handover-e2e-run "$r/run"
  mount -t tmpfs -o mode=1777,nosuid,nodev handover-e2e-tmp "$r/tmp"
  local b src dst mode
  for b in ${E2E_BIND:-}; do
    IFS=: read -r src dst mode <<<"$b"
    [[ -e $src && $dst == /* ]] || die "bad E2E_BIND entry: $b"
    if [[ -d $src ]]; then mkdir -p "$r$dst"; else mkdir -p "$(dirname "$r$dst")"; touch "$r$dst"; fi
    mount --rbind "$src" "$r$dst"
    [[ $mode == rw ]] || mount -o remount,bind,ro "$r$dst"
  done
  echo "$NAME" > "$r/etc/hostname"
  cd "$r"; mkdir .e2e-oldroot
  pivot_root . .e2e-oldroot
  exec /usr/bin/env -i PATH=$CPATH container=handover-e2e LANG=C.UTF-8 \
    /usr/bin/setpriv --bounding-set "$DROP_CAPS" -- /bin/sh -c '
      cd / && umount -l /.e2e-oldroot && rmdir /.e2e-oldroot &&
      exec /usr/lib/systemd/systemd systemd.getty_auto=0 systemd.firstboot=0 systemd.show_status=1'
}

# ---------------------------------------------------------------- commands
do_up() {
  need_cmds unshare nsenter setsid script flock findmnt setpriv
  if running; then
    echo "pid1=$PID1 state=$(in_ns systemctl is-system-running 2>/dev/null || true) (already running)"
    return 0
  fi
  rootfs_ok || do_build
  cleanup_stale
  mkdir -p "$RUNDIR/mnt"; : > "$RUNDIR/console.log"
  mkdir "$CGDIR" "$CG_SUP" "$CG_PAYLOAD"
  local t0; t0=$(date +%s%N)
  # Process tree: setsid (own session: survives the caller's shell) -> script(1) (in the
  # supervisor cgroup; owns the pty that becomes the container's /dev/console) -> bash,
  # which joins the payload cgroup and becomes `unshare` (its new cgroup namespace is rooted
  # there) -> its child, PID 1 of the new pid namespace: __init, then systemd.
  # --kill-child: if unshare dies, the whole container dies with it (no orphans).
  local inner
  inner="echo \$\$ > '$CG_PAYLOAD/cgroup.procs' && echo \$\$ > '$RUNDIR/unshare.pid' && exec unshare --mount --pid --fork --uts --ipc --cgroup --propagation private --kill-child=SIGKILL -- '$SELF' __init"
  SHELL=/bin/bash setsid -f /bin/bash -c 'echo $$ > "$1/cgroup.procs"; echo $$ > "$2/supervisor.pid"; exec script -q -f -e -c "$3" "$2/console.log"' \
    _ "$CG_SUP" "$RUNDIR" "$inner" </dev/null >/dev/null 2>&1 9>&-
  local i
  for ((i = 0; i < 200; i++)); do   # up to 10 s for the process tree to appear
    UPID=$(cat "$RUNDIR/unshare.pid" 2>/dev/null || true)
    [[ -n $UPID ]] && PID1=$(cat "/proc/$UPID/task/$UPID/children" 2>/dev/null | awk '{print $1}') && [[ -n $PID1 ]] && break
    sleep 0.05
  done
  [[ -n ${PID1:-} ]] || { tail -n 20 "$RUNDIR/console.log" >&2; die "container did not start"; }
  echo "$PID1" > "$RUNDIR/pid1"
  echo "$UPID" > "$CG_SUP/cgroup.procs"   # keep systemd's cgroup root free of foreign processes
  local st=""
  for ((i = 0; i < BOOT_TIMEOUT * 10; i++)); do
    alive "$PID1" || { tail -n 30 "$RUNDIR/console.log" >&2; die "container PID 1 exited during boot (log: $RUNDIR/console.log)"; }
    st=$(in_ns systemctl is-system-running 2>/dev/null || true)
    [[ $st == running || $st == degraded ]] && break
    sleep 0.1
  done
  local t1; t1=$(date +%s%N)
  echo "pid1=$PID1 boot_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", (b-a)/1e9}') state=$st"
  [[ $st == running || $st == degraded ]] || die "boot did not finish within ${BOOT_TIMEOUT}s (state: ${st:-unknown})"
}

rm_cgroups() {  # depth-first rmdir of our subtree, retrying while dying tasks are released
  local i
  for ((i = 0; i < 100; i++)); do
    [[ -d $CGDIR ]] || return 0
    find "$CGDIR" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    [[ -d $CGDIR ]] || return 0
    sleep 0.1
  done
  die "could not remove $CGDIR (still holds: $(cg_procs | tr '\n' ' '))"
}

cleanup_stale() {  # leftovers of a crashed instance: only our own cgroup subtree and run dir
  local procs; procs=$(cg_procs)
  if [[ -n $procs ]]; then
    log "killing leftover processes in $CGDIR: $(echo "$procs" | tr '\n' ' ')"
    echo 1 > "$CGDIR/cgroup.kill"
  fi
  rm_cgroups
  if [[ -d $RUNDIR ]]; then
    [[ -f $RUNDIR/console.log ]] && tr -d '\r' < "$RUNDIR/console.log" > "$BASE/run/$NAME.console.last.log"
    findmnt -rn -o TARGET | grep -qF "$RUNDIR" && die "something is mounted under $RUNDIR in the host namespace"
    rm -rf --one-file-system "$RUNDIR"
  fi
}

do_down() {
  local i
  if running; then
    kill -s RTMIN+4 "$PID1"   # systemd: SIGRTMIN+4 = poweroff (a clean stop of every unit)
    for ((i = 0; i < 300; i++)); do alive "$PID1" || break; sleep 0.1; done
    if alive "$PID1" && in_our_cgroup "$PID1"; then
      log "PID 1 did not power off in 30 s; SIGKILL (ends its whole pid namespace)"
      kill -KILL "$PID1"
    fi
  fi
  # unshare and script(1) exit by themselves once PID 1 is gone.
  for ((i = 0; i < 50; i++)); do [[ -z $(cg_procs) ]] && break; sleep 0.1; done
  cleanup_stale
  echo "down"
}

do_status() {
  if running; then
    echo "running pid1=$PID1 unshare=$UPID state=$(in_ns systemctl is-system-running 2>/dev/null || true) cgroup=$CGDIR"
  else
    echo "not running"; return 3
  fi
}

do_exec() {
  [[ $# -gt 0 ]] || die "usage: sandbox.sh exec CMD [ARG...]"
  running || die "not running (sandbox.sh up)"
  in_ns "$@"
}

do_purge() {
  do_down
  findmnt -rn -o TARGET | grep -qF "$BASE" && die "something is mounted under $BASE in the host namespace"
  rm -rf --one-file-system "$BASE"
  echo "purged $BASE"
}

cmd=${1:-}; shift || true
case $cmd in
  __init) init_inner ;;
  __build-inner) build_inner "$@" ;;
  build) need_root; with_lock "$BASE/.lock" do_build "${1:-}" ;;
  up) need_root; with_lock "$BASE/.lock" do_up ;;
  down) need_root; with_lock "$BASE/.lock" do_down ;;
  purge) need_root; with_lock "$BASE/.lock" do_purge ;;
  status) need_root; do_status ;;
  exec) need_root; do_exec "$@" ;;
  *) sed -n '2,10p' "$SELF" | sed 's/^# \{0,1\}//'; [[ $cmd == -h || $cmd == --help || $cmd == help ]] ;;
esac
