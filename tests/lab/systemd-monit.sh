# The incident under systemd: an operator stops Debian's cluster with
# pg_ctlcluster, which hands it to `systemctl stop` (PID 1 and the unit's
# ExecStop= send the signal); monit, whose start program is `systemctl
# start`, asks PID 1 to start it again. The new postmaster is frozen before
# it serves, inside its unit, whose cgroup is frozen (systemd lists it
# there; its FreezerState= says running: it reports only freezes it made);
# its data directory is left as the stop left it; the alert names monit (not
# systemd), the unit, and the operator with their systemctl. Thawed, it
# serves and the unit is active.
set -euo pipefail
. /lab/lib.sh
version=$(ls /etc/postgresql | sort -n | tail -1)
unit="postgresql@$version-main"
data=/var/lib/postgresql/$version/main
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
serves() { PGCONNECT_TIMEOUT=3 as_postgres psql -qAtc 'select 1' > /dev/null 2>&1; }
wait_until 120 "PostgreSQL $version to serve" serves
sed -i '/^name = "postgres"$/a on_unexpected_respawn = "freeze"' /etc/stopguard/stopguard.toml
systemctl reload stopguard
main=$(systemctl show -P MainPID "$unit")
wait_until 30 "the agent to see $unit's postmaster $main" status_has ".services[] | select(.name == \"$unit\" and .pid == $main)"
start_monit "/run/postgresql/$version-main.pid" "\"/usr/bin/systemctl start $unit\""
as_operator pg_ctlcluster "$version" main stop
# The data directory as the stop left it: nothing may touch it from here.
touch /run/lab-stopped
wait_until 120 "monit's start to be frozen" status_has ".services[] | select(.name == \"$unit\") | .frozen | length > 0"
pid=$(stopguard status --json | jq -r ".services[] | select(.name == \"$unit\") | .frozen[0]")
in_frozen_unit "$pid" "$unit" ||
    fail "postgres $pid is not frozen in $unit's cgroup $(systemctl show -P ControlGroup "$unit"): $(cat "/proc/$pid/cgroup")"
reports_running "$unit" || fail "systemd reports $unit $(systemctl show -P FreezerState "$unit")"
status=$(systemctl status "$unit" --no-pager 2>&1 || true)
echo "$status" | sed -n 's/^ *\(Active: .*\)/systemctl status: \1/p'
echo "$status" | grep -q "─$pid " || fail "systemctl status $unit does not show $pid: $status"
sleep 5
! serves || fail "the frozen PostgreSQL serves"
touched=$(find "$data" -newer /run/lab-stopped)
[ -z "$touched" ] || fail "the frozen respawn changed its data directory: $touched"
[ ! -e "$data/postmaster.pid" ] || fail "the frozen respawn wrote its postmaster.pid"
has_alert ".service == \"$unit\" and .unit == \"$unit.service\" and .kind == \"respawn_after_operator_stop\" and .respawned_by.supervisor == \"monit\" and .respawned_by.unit == \"$unit.service\" and (.respawned_by.via // \"\" | test(\"systemctl start $unit\")) and .stopped_by.loginuid == $OPERATOR_UID and (.stopped_by.via // \"\" | test(\"systemctl.* stop $unit\"))" ||
    fail "no alert naming monit, $unit and the operator's systemctl: $(alerts)"
stop_monit
stopguard thaw "$pid"
wait_until 120 "PostgreSQL to serve once thawed" serves
wait_until 60 "$unit to be active" systemctl is-active --quiet "$unit"
! grep -qx "frozen 1" "/sys/fs/cgroup$(systemctl show -P ControlGroup "$unit")/cgroup.events" ||
    fail "$unit's cgroup is still frozen once thawed"
[ "$(systemctl show -P MainPID "$unit")" = "$pid" ] ||
    fail "$unit's main process is $(systemctl show -P MainPID "$unit"), not the thawed $pid"
echo "systemd-monit: monit's systemctl start of $unit frozen ($pid) in the unit's cgroup before serving (FreezerState=running: systemd reports only its own freezes), the data directory untouched; alert names monit and uid $OPERATOR_UID via systemctl stop; thawed, it serves and the unit is active"
