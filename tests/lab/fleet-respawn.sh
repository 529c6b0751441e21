# fleet-respawn.sh: an operator stops labd on this fleet lab guest inside the
# cluster window; runsv's respawn must be held frozen, and the alert must name
# runsv, the operator and the cluster. Prints the held pid.
set -euo pipefail
. /lab/lib.sh
first=$(stopguard status --json | jq -r '.services[] | select(.name == "labd") | .pid')
[ "$first" != null ] || fail "labd is not running"
as_operator kill -TERM "$first"
wait_until 60 "runsv's respawn to be frozen" status_has '.services[] | select(.name == "labd") | .frozen | length > 0'
pid=$(stopguard status --json | jq -r '.services[] | select(.name == "labd") | .frozen[0]')
in_frozen_cgroup "$pid" || fail "labd $pid is not in a frozen cgroup: $(cat /proc/$pid/cgroup)"
has_alert ".service == \"labd\" and .kind == \"respawn_in_window\" and .cluster == \"lab\" and .respawned_by.supervisor == \"runsv\" and .stopped_by.loginuid == $OPERATOR_UID" ||
    fail "no alert naming the cluster, runsv and the operator: $(alerts)"
echo "$pid"
