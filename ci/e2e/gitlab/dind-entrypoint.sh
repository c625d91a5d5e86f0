#!/bin/sh
# The daemon of ci/e2e/gitlab/dind.Dockerfile: load /preload/*.tar on a
# private socket, then serve tcp://0.0.0.0:2375 (and the usual socket).
set -eu
log() { echo "dind: $*" >&2; }

# cgroup v2: move ourselves out of the root cgroup so that dockerd can
# enable controllers for its children (what docker:dind's "dind" does).
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    mkdir -p /sys/fs/cgroup/init
    xargs -rn1 </sys/fs/cgroup/cgroup.procs >/sys/fs/cgroup/init/cgroup.procs 2>/dev/null || :
    sed -e 's/ / +/g' -e 's/^/+/' </sys/fs/cgroup/cgroup.controllers \
        >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || :
fi

# cgroup v1 without --privileged (this CI's daemon cannot grant
# CAP_SYS_RESOURCE, so its "privileged" service is all other capabilities
# and a cgroup namespace of its own): the hierarchies come read-only;
# mount them afresh, which gives this namespace's own, writable.
if [ ! -f /sys/fs/cgroup/cgroup.controllers ] && [ -d /sys/fs/cgroup/cpuset ] &&
        ! mkdir /sys/fs/cgroup/cpuset/.dind-probe 2>/dev/null; then
    mount -o remount,rw /sys/fs/cgroup
    awk '{ for (i = 1; i <= NF; i++) if ($i == "-") break; if ($(i + 1) == "cgroup") print $5, $(i + 3) }' \
            /proc/self/mountinfo |
    while read -r dir opts; do
        opts=$(echo "$opts" | tr , '\n' | grep -vx 'r[ow]' | paste -sd, -)
        case ",$opts," in *,name=*) opts="none,$opts" ;; esac
        umount "$dir" && mount -t cgroup -o "$opts" cgroup "$dir" ||
            { log "cannot mount the cgroup hierarchy $dir ($opts) writable"; exit 1; }
    done
fi
rmdir /sys/fs/cgroup/cpuset/.dind-probe 2>/dev/null || :

set -- /preload/*.tar
if [ -e "$1" ]; then
    sock=unix:///run/preload.sock
    dockerd --host="$sock" --pidfile=/run/preload.pid >/var/log/dockerd-preload.log 2>&1 &
    pid=$!
    i=0
    until docker -H "$sock" version >/dev/null 2>&1; do
        i=$((i + 1))
        if [ "$i" -gt 120 ] || ! kill -0 "$pid" 2>/dev/null; then
            tail -20 /var/log/dockerd-preload.log >&2
            log "dockerd did not start"; exit 1
        fi
        sleep 0.25
    done
    for t in "$@"; do
        docker -H "$sock" load -i "$t" >&2 || { log "cannot load $t"; exit 1; }
    done
    kill "$pid"
    wait "$pid" || :
fi
log "serving tcp://0.0.0.0:2375"
exec dockerd --host=tcp://0.0.0.0:2375 --host=unix:///var/run/docker.sock --tls=false
