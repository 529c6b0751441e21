# The incident under systemd: an operator stops Debian's cluster with
# pg_ctlcluster, which hands it to `systemctl stop` (PID 1 and the unit's
# ExecStop= send the signal); monit, whose start program is `systemctl
# start`, asks PID 1 to start it again. The new postmaster is frozen before
# it serves and the alert names monit (not systemd), the unit, and the
# operator with their systemctl.
set -euo pipefail
. /lab/lib.sh
version=$(ls /etc/postgresql | sort -n | tail -1)
unit="postgresql@$version-main"
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
serves() { PGCONNECT_TIMEOUT=3 as_postgres psql -qAtc 'select 1' > /dev/null 2>&1; }
wait_until 120 "PostgreSQL $version to serve" serves
sed -i '/^name = "postgres"$/a on_unexpected_respawn = "freeze"' /etc/stopguard/stopguard.toml
systemctl reload stopguard
main=$(systemctl show -P MainPID "$unit")
wait_until 30 "the agent to see $unit's postmaster $main" status_has ".services[] | select(.name == \"postgres\" and .pid == $main)"
cat > /root/lab-monitrc <<MONIT
set daemon 1
set logfile /var/log/lab-monit.log
set pidfile /run/lab-monit.pid
set idfile /var/lib/lab-monit.id
set statefile /var/lib/lab-monit.state
check process postgres with pidfile /run/postgresql/$version-main.pid
  start program = "/usr/bin/systemctl start $unit" with timeout 120 seconds
MONIT
chmod 600 /root/lab-monitrc
monit -c /root/lab-monitrc
cleanup() {
    monit -c /root/lab-monitrc quit > /dev/null 2>&1 || true
}
trap cleanup EXIT
sleep 3
as_operator pg_ctlcluster "$version" main stop
wait_until 120 "monit's start to be frozen" status_has '.services[] | select(.name == "postgres") | .frozen | length > 0'
pid=$(stopguard status --json | jq -r '.services[] | select(.name == "postgres") | .frozen[0]')
! serves || fail "the frozen PostgreSQL serves"
has_alert ".service == \"postgres\" and .kind == \"respawn_after_operator_stop\" and .respawned_by.supervisor == \"monit\" and .respawned_by.unit == \"$unit.service\" and (.respawned_by.via // \"\" | test(\"systemctl start $unit\")) and .stopped_by.loginuid == $OPERATOR_UID and (.stopped_by.via // \"\" | test(\"systemctl.* stop $unit\"))" ||
    fail "no alert naming monit, $unit and the operator's systemctl: $(alerts)"
cleanup
stopguard thaw "$pid"
wait_until 120 "PostgreSQL to serve once thawed" serves
echo "systemd-monit: monit's systemctl start of $unit frozen ($pid) before serving; alert names monit and uid $OPERATOR_UID via systemctl stop; thawed, it serves"
