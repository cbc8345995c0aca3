#!/usr/bin/env bash
# A real S3 server for the tests: a single-node Ceph (one mon, one bluestore OSD, one
# RADOS Gateway) on 127.0.0.1, from Debian's packages.
#
#   tests/ceph-rgw.sh install   apt-get the daemons when they are missing (root)
#   tests/ceph-rgw.sh start     start a cluster in $CEPH_S3_DIR; print `export ...` lines
#                               (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...) to eval
#   tests/ceph-rgw.sh stop      kill the daemons this directory's pid files name, and
#                               remove the directory
#   tests/ceph-rgw.sh kill-gateway | start-gateway
#                               SIGKILL the gateway alone, or start it again (same port,
#                               same data): what a crash and a restart of RGW look like
#
# Everything lives in $CEPH_S3_DIR (default /tmp/blockvault-ceph-s3): config, keyring,
# the mon's store, the OSD's sparse block file, sockets, logs, pid files. Nothing is
# written elsewhere, nothing listens off 127.0.0.1, and stop touches only processes whose
# command line names this directory's ceph.conf. The procedure and its quirks:
# ../shared/reference/s3-ceph-rgw.md (cephx, not auth none; tcp_nodelay; fast paxos).
set -euo pipefail

DIR=${CEPH_S3_DIR:-/tmp/blockvault-ceph-s3}
CONF=$DIR/ceph.conf
PACKAGES=(ceph-mon ceph-osd radosgw ceph-common)

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

tails() {
    for f in "$DIR"/log/*; do
        [ -f "$f" ] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }
    done
}

fail() {
    echo "ceph-rgw: $*" >&2
    tails
    stop_daemons
    exit 1
}

alive() {  # a pid of ours that is neither gone nor a zombie
    local pid=$1
    [ -r "/proc/$pid/stat" ] || return 1
    local state
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [ "$state" != Z ]
}

ours() {  # the pid runs a ceph daemon on this directory's config
    local pid=$1
    [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$CONF"
}

daemon() {  # NAME COMMAND...: start a daemon in the foreground mode, in its own session
    local name=$1
    shift
    setsid "$@" -f </dev/null >>"$DIR/log/$name.out" 2>&1 &
    echo $! >"$DIR/run/$name.pid"
}

wait_for() {  # SECONDS WHAT COMMAND...: retry COMMAND until it succeeds
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        for pidfile in "$DIR"/run/*.pid; do
            [ -f "$pidfile" ] || continue
            alive "$(cat "$pidfile")" || fail "$(basename "$pidfile" .pid) died while waiting for $what"
        done
        [ $SECONDS -lt $deadline ] || fail "no $what within $limit s"
        sleep 0.1
    done
}

stop_daemons() {
    local pids=()
    for pidfile in "$DIR"/run/*.pid; do
        [ -f "$pidfile" ] || continue
        local pid
        pid=$(cat "$pidfile")
        if alive "$pid" && ours "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
        rm -f "$pidfile"
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 100); do alive "$pid" || break; sleep 0.05; done
    done
}

cmd_install() {
    command -v radosgw >/dev/null && command -v ceph-mon >/dev/null \
        && command -v ceph-osd >/dev/null && command -v ceph >/dev/null && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "ceph-rgw: install ${PACKAGES[*]} as root (apt-get)" >&2
        return 1
    fi
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${PACKAGES[@]}" >&2
}

cmd_start() {
    command -v radosgw >/dev/null || { echo "ceph-rgw: radosgw is not installed (run install)" >&2; exit 1; }
    if [ -e "$DIR" ]; then
        echo "ceph-rgw: $DIR exists: stop that cluster first (tests/ceph-rgw.sh stop)" >&2
        exit 1
    fi
    mkdir -p "$DIR"/{run,log,crash,mon/ceph-a,osd/ceph-0,rgw}
    chmod 700 "$DIR"
    local mon_port=${MON_PORT:-$(free_port)} rgw_port=${RGW_PORT:-$(free_port)}
    local fsid osd_uuid
    fsid=$(cat /proc/sys/kernel/random/uuid)
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    cat >"$CONF" <<EOF
[global]
fsid = $fsid
mon_host = [v2:127.0.0.1:$mon_port]
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_msgr1 = false
ms_bind_msgr2 = true
ms_bind_ipv6 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
keyring = $DIR/keyring
run_dir = $DIR/run
admin_socket = $DIR/run/\$cluster-\$name.asok
log_file = $DIR/log/\$name.log
mon_cluster_log_file = $DIR/log/cluster.log
crash_dir = $DIR/crash
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
paxos_propose_interval = 0.05
paxos_min_wait = 0.01

[mon]
mon_data = $DIR/mon/ceph-\$id

[osd]
osd_data = $DIR/osd/ceph-\$id
osd_objectstore = bluestore
bluestore_block_create = true
bluestore_block_size = $(( ${CEPH_S3_BLOCK_GB:-10} << 30 ))
osd_memory_target = 939524096

[client.rgw.a]
rgw_frontends = beast endpoint=127.0.0.1:$rgw_port tcp_nodelay=1
rgw_data = $DIR/rgw
EOF
    local kr=$DIR/keyring
    ceph-authtool --create-keyring "$kr" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool "$kr" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' \
        --cap mgr 'allow *' >/dev/null
    ceph-authtool "$kr" --gen-key -n osd.0 --cap mon 'allow profile osd' --cap osd 'allow *' \
        --cap mgr 'allow profile osd' >/dev/null
    ceph-authtool "$kr" --gen-key -n client.rgw.a --cap mon 'allow rw' --cap osd 'allow rwx' \
        --cap mgr 'allow rw' >/dev/null
    chmod 600 "$kr"
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$DIR/monmap" >/dev/null
    ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$kr" \
        >>"$DIR/log/mon-mkfs.out" 2>&1 || fail "ceph-mon --mkfs failed"
    daemon mon ceph-mon -c "$CONF" -i a
    wait_for 30 "the monitor's quorum" ceph -c "$CONF" --connect-timeout 5 quorum_status

    ceph -c "$CONF" osd new "$osd_uuid" >/dev/null || fail "ceph osd new failed"
    ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" >>"$DIR/log/osd-mkfs.out" 2>&1 \
        || fail "ceph-osd --mkfs failed"
    daemon osd ceph-osd -c "$CONF" -i 0
    wait_for 60 "osd.0 up" sh -c "ceph -c '$CONF' osd dump | grep -q '^osd.0 up'"

    # The S3 user's keys are made by radosgw-admin, never passed on a command line.
    radosgw-admin -c "$CONF" user create --uid=blockvault --display-name=blockvault \
        >"$DIR/user.json" 2>>"$DIR/log/radosgw-admin.out" || fail "radosgw-admin user create failed"
    chmod 600 "$DIR/user.json"
    daemon rgw radosgw -c "$CONF" -n client.rgw.a
    local endpoint=http://127.0.0.1:$rgw_port
    wait_for 60 "the gateway at $endpoint" python3 -c "
import urllib.request; urllib.request.urlopen('$endpoint/', timeout=2)"
    python3 - "$DIR/user.json" "$endpoint" >"$DIR/env" <<'EOF'
import json, shlex, sys
key = json.load(open(sys.argv[1]))["keys"][0]
for name, value in (
    ("AWS_ENDPOINT_URL", sys.argv[2]),
    ("AWS_ACCESS_KEY_ID", key["access_key"]),
    ("AWS_SECRET_ACCESS_KEY", key["secret_key"]),
    ("AWS_DEFAULT_REGION", "default"),
):
    print(f"export {name}={shlex.quote(value)}")
EOF
    chmod 600 "$DIR/env"
    echo "export CEPH_S3_DIR=$(printf %q "$DIR")"
    cat "$DIR/env"
}

cmd_stop() {
    [ -d "$DIR" ] || return 0
    [ -f "$CONF" ] || { echo "ceph-rgw: $DIR is not a cluster of this script; left alone" >&2; return 1; }
    stop_daemons
    rm -rf "$DIR"
}

cmd_kill_gateway() {
    local pid
    pid=$(cat "$DIR/run/rgw.pid")
    alive "$pid" && ours "$pid" && kill -KILL "$pid"
    for _ in $(seq 100); do alive "$pid" || return 0; sleep 0.05; done
    echo "ceph-rgw: the gateway $pid did not die" >&2
    return 1
}

cmd_start_gateway() {
    local endpoint
    endpoint=$(sed -n "s/^export AWS_ENDPOINT_URL=//p" "$DIR/env" | tr -d "'")
    daemon rgw radosgw -c "$CONF" -n client.rgw.a
    wait_for 60 "the gateway at $endpoint" python3 -c "
import urllib.request; urllib.request.urlopen('$endpoint/', timeout=2)"
}

case ${1:-} in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    kill-gateway) cmd_kill_gateway ;;
    start-gateway) cmd_start_gateway ;;
    *) echo "usage: $0 install|start|stop|kill-gateway|start-gateway" >&2; exit 2 ;;
esac
