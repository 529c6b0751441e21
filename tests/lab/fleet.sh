# fleet.sh: the fleet lab's scenario, run on sg1 of three guests
# (`cargo xtask lab fleet --script tests/lab/fleet.sh`). One cluster window
# opened on sg2 reaches every host; a respawn on sg3 is held; sg1's fleet
# view shows it; sg3's agent killed shows DOWN while its pinned guard holds;
# sg2 cut off from etcd keeps the window through its close, alerts, is
# named by a window opened meanwhile, and reconciles when it is back.
set -euo pipefail
. /lab/lib.sh
hosts="sg1 sg2 sg3"
LAB_RESULT=pass
check() {
    local what=$1
    shift
    if "$@"; then echo "ok: $what"; else echo "FAIL: $what"; LAB_RESULT=fail; fi
}
on_as_operator() {
    local host=$1
    shift
    lab-on "$host" "echo $OPERATOR_UID > /proc/self/loginuid && $*"
}
fleet_json() { timeout 20 stopguard fleet status --json; }
# hosts_up N: whether sg1's fleet view shows N hosts up.
hosts_up() { test "$(fleet_json | jq '[.hosts[] | select(.presence != null)] | length')" = "$1"; }
# applied HOST N: whether HOST applies N cluster windows.
applied() { test "$(lab-on "$1" stopguard status --json | jq '.fleet.applied | length')" = "$2"; }

for host in $hosts; do
    lab-on "$host" bash /lab/fleet-labd.sh
done
wait_until 60 "all three hosts present in etcd" hosts_up 3

echo "--- a cluster window opened on sg2"
out=$(on_as_operator sg2 't=$(date +%s%N); stopguard window open labd --cluster --for 10m --reason "fleet lab upgrade" --wait 60s; rc=$?; echo "opened in $(( ($(date +%s%N) - t) / 1000000 )) ms"; exit $rc') ||
    fail "window open --cluster on sg2 did not reach every host: $out"
echo "$out"
for host in $hosts; do
    check "$host acknowledged the window" grep -Eq "^  $host +applied as w" <<< "$out"
    check "$host applies it" applied $host 1
done
echo "LAB-FLEET propagation $(sed -n 's/^opened in \([0-9]*\) ms$/\1/p' <<< "$out") ms"

echo "--- an operator stops labd on sg3; runsv respawns it"
held=$(lab-on sg3 bash /lab/fleet-respawn.sh | tail -n 1)
echo "sg3 holds labd $held"
wait_until 30 "sg1's fleet view to show sg3 holding $held" \
    sh -c "timeout 20 stopguard fleet status --json | jq -e '.hosts[] | select(.host == \"sg3\") | .presence.held | index($held)' > /dev/null"
stopguard fleet status

echo "--- sg3's agent killed"
lab-on sg3 'mkdir -p /run/systemd/system/stopguard.service.d && printf "[Service]\nRestart=no\n" > /run/systemd/system/stopguard.service.d/lab.conf && systemctl daemon-reload && systemctl kill -s KILL stopguard'
wait_until 60 "sg1 to show sg3 down" hosts_up 2
view=$(stopguard fleet status) && rc=0 || rc=$?
echo "$view"
check "fleet status exits 4 with a host down" test "$rc" = 4
check "sg3 is DOWN, its pinned guard holding" grep -q "^sg3 .*DOWN since .*pinned guard still holds there" <<< "$view"
check "sg3's respawn stays frozen without its agent" lab-on sg3 ". /lab/lib.sh; in_frozen_cgroup $held"
lab-on sg3 'rm -r /run/systemd/system/stopguard.service.d && systemctl daemon-reload && systemctl reset-failed stopguard; systemctl start stopguard'
wait_until 60 "sg3 back in the fleet" hosts_up 3
wait_until 30 "sg3 to keep the cluster window" applied sg3 1

echo "--- sg2 cut off from etcd; the window closed on sg1"
lab-partition sg2 on
out=$(on_as_operator sg1 stopguard window close labd --cluster --thaw) || fail "window close --cluster: $out"
echo "$out"
wait_until 30 "sg3 to close its window" applied sg3 0
check "sg3's held respawn runs again" lab-on sg3 "grep -q '^start $held\$' /var/lib/labd/data || { sleep 5; grep -q '^start $held\$' /var/lib/labd/data; }"
check "sg1 closed its window" applied sg1 0
wait_until 40 "sg2 to see etcd gone" lab-on sg2 ". /lab/lib.sh; status_has '.fleet.reachable == false'"
check "sg2, cut off, keeps enforcing the window" applied sg2 1
wait_until 30 "sg2 to alert fleet_unreachable" lab-on sg2 ". /lab/lib.sh; has_alert '.kind == \"fleet_unreachable\" and .cluster == \"lab\"'"
lab-on sg2 stopguard status | grep FLEET || true

echo "--- a window opened while sg2 is cut off"
wait_until 30 "sg1 to show sg2 down" hosts_up 2
out=$(on_as_operator sg1 'stopguard window open labd --cluster --for 10m --reason "second pass" --wait 10s') && rc=0 || rc=$?
echo "$out"
check "the open exits 4: not every host applied it" test "$rc" = 4
check "the open names sg2 down" grep -Eq "^  sg2 +DOWN since .*not applied" <<< "$out"
second=$(awk 'NR == 1 { print $3 }' <<< "$out")

echo "--- sg2 back"
lab-partition sg2 off
# applies_only HOST ID: whether HOST applies one cluster window, ID.
applies_only() {
    lab-on "$1" stopguard status --json | jq -e --arg id "$2" '.fleet.applied | length == 1 and .[0][0] == $id' > /dev/null
}
wait_until 60 "sg2 to reconcile: the first window closed, the second applied" applies_only sg2 "$second"
check "sg2 audited why: gone from etcd" lab-on sg2 "jq -e -s '[.[] | select(.event == \"cluster_window_closed\" and (.why // \"\" | test(\"gone from etcd\")))] | length == 1' /var/log/stopguard/audit.jsonl > /dev/null"
check "sg2 linked again" lab-on sg2 ". /lab/lib.sh; status_has '.fleet.reachable == true'"
on_as_operator sg1 stopguard window close labd --cluster
for host in $hosts; do
    wait_until 30 "$host to close the second window" applied "$host" 0
done
[ "$LAB_RESULT" = pass ] || exit 1
echo "fleet: every check passed"
