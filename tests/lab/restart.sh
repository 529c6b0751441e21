# `systemctl restart stopguard` inside a window: the window and the frozen
# respawn carry over, and what respawns labd meanwhile (every 0.3 s) is
# stopped by the pinned probes and seen by the new agent; then thawing
# lets the frozen one run.
set -euo pipefail
. /lab/lib.sh
pid=$(cat /run/lab-frozen)
before=$(systemctl show -P MainPID stopguard)
respawn_loop_start
trap respawn_loop_stop EXIT
sleep 1
systemctl restart stopguard
wait_until 60 "stopguard.service to be active" systemctl is-active --quiet stopguard
sleep 2
respawn_loop_stop
respawn_loop_check restart
[ "$(systemctl show -P MainPID stopguard)" != "$before" ] || fail "the agent did not restart"
status_has '.windows[] | select(.service == "labd")' || fail "the window did not survive the restart"
status_has ".frozen | index($pid) != null" || fail "the agent lost frozen $pid: $(stopguard status)"
in_frozen_cgroup "$pid" || fail "labd $pid left its frozen cgroup"
! grep -q "^start $pid\$" /var/lib/labd/data || fail "the frozen respawn $pid ran"
stopguard thaw "$pid"
wait_until 30 "the thawed respawn to run" grep -q "^start $pid\$" /var/lib/labd/data
stopguard window close labd
pkill -x runsv
pkill -f /usr/local/bin/labd || true
echo "restart: window and frozen $pid kept across the restart; thawed, it ran"
