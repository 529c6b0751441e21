# fleet-boot.sh: a fleet lab guest's boot (`cargo xtask lab fleet`). It names
# the guest, brings up its link to the host (etcd at 10.0.2.100:2379, the
# lab's control at 10.0.2.100:7000), installs the package with `[fleet]`
# added to its packaged config, starts the worker that runs other guests'
# `lab-on` commands; then sg1 waits for every guest and runs the script,
# and the others wait to be stopped.
set -u
. /lab/lib.sh
host=$(cat /lab/fleet-host)
hostname "$host"
echo "$host" > /etc/hostname
dev=$(ls /sys/class/net | grep -vx lo | head -n 1)
[ -n "$dev" ] || { echo "FAIL: $host has no network card"; exit 1; }
ip link set "$dev" up
ip addr add 10.0.2.15/24 dev "$dev"
install -m 755 /lab/lab-on /lab/lab-partition /lab/lab-ready /usr/local/bin/
bash /lab/install.sh /lab/stopguard.deb || exit $?
# The guest's path to etcd is qemu's forward to the host's loopback: no
# packet leaves the machine, but the agent sees a plain http:// endpoint
# that is not its own loopback, which it refuses unless told.
cat >> /etc/stopguard/stopguard.toml <<'TOML'

[fleet]
etcd = ["http://10.0.2.100:2379"]
cluster = "lab"
insecure = true
heartbeat = "2s"
unreachable_after = "10s"
TOML
stopguard check-config /etc/stopguard/stopguard.toml --reach || exit 1
systemctl restart stopguard
wait_until 120 "the agent to reach etcd" status_has '.fleet.reachable == true'
setsid bash /lab/fleet-worker.sh < /dev/null > /var/log/lab-worker.log 2>&1 &
echo "$host: up, on etcd as cluster lab"
if [ "$host" != sg1 ]; then
    exec sleep infinity
fi
lab-ready || exit 1
echo 'stopguard-lab: script'
exec bash /lab/script.sh
