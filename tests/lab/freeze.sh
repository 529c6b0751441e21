# Freeze at exec and the cgroup freeze, under the hardened unit: a service
# added to the packaged config, runit's runsv as its supervisor, an operator
# who opens a window and stops it; runsv's respawn is held before it runs.
set -euo pipefail
. /lab/lib.sh
start_labd
first=$LABD_PID
as_operator stopguard window open labd --reason "lab maintenance"
as_operator kill -TERM "$first"
wait_until 60 "runsv's respawn to be frozen" status_has '.services[] | select(.name == "labd") | .frozen | length > 0'
pid=$(stopguard status --json | jq -r '.services[] | select(.name == "labd") | .frozen[0]')
in_frozen_cgroup "$pid" || fail "labd $pid is not in a frozen cgroup: $(cat /proc/$pid/cgroup)"
sleep 1
! grep -q "^start $pid\$" /var/lib/labd/data || fail "the frozen respawn $pid ran"
has_alert ".service == \"labd\" and .kind == \"respawn_in_window\" and .respawned_by.supervisor == \"runsv\" and .stopped_by.loginuid == $OPERATOR_UID" ||
    fail "no alert naming runsv and the operator: $(alerts)"
echo "$pid" > /run/lab-frozen
echo "freeze: labd $pid held in /sys/fs/cgroup/stopguard/frozen-$pid, alert names runsv and uid $OPERATOR_UID"
