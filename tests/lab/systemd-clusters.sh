# Two PostgreSQL clusters on one host, each its own service (the default
# config's `unit = "postgresql@*.service"`): a script with no login starting
# the one an operator stopped is a respawn of that cluster alone, named by
# its unit; the operator's own stop of one and start of another (as
# pg_upgradecluster does) raises nothing; status lists both.
set -euo pipefail
. /lab/lib.sh
version=$(ls /etc/postgresql | sort -n | tail -1)
main="postgresql@$version-main"
second="postgresql@$version-second"
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
serves() { PGCONNECT_TIMEOUT=3 as_postgres psql -p "$1" -qAtc 'select 1' > /dev/null 2>&1; }
# Respawns are alerted, not frozen (the default), whatever ran before.
sed -i '/^on_unexpected_respawn = "freeze"$/d' /etc/stopguard/stopguard.toml
systemctl reload stopguard
wait_until 120 "$main to serve" serves 5432
pg_createcluster -p 5433 "$version" second > /dev/null
systemctl start "$second"
wait_until 120 "$second to serve" serves 5433
running() {
    status_has "[.services[] | select(.state == \"running\" and .unit == \"$main.service\" and .pid == $(systemctl show -P MainPID "$main"))] | length == 1" &&
        status_has "[.services[] | select(.state == \"running\" and .unit == \"$second.service\" and .pid == $(systemctl show -P MainPID "$second"))] | length == 1"
}
wait_until 30 "status to list both clusters, running" running
pg_alerts() {
    alerts | jq -n "[inputs | select(.service | startswith(\"postgresql@\")) | select(.resolves == null)] | length"
}
before=$(pg_alerts)
as_operator pg_ctlcluster "$version" second stop
wait_until 30 "$second to be stopped by the operator" status_has ".services[] | select(.name == \"$second\" and .state == \"stopped_by_operator\" and .stopped_by.loginuid == $OPERATOR_UID)"
status_has ".services[] | select(.name == \"$main\" and .state == \"running\")" || fail "$main is not running: $(stopguard status --json)"
# A watchdog script with no login identity starts it again.
systemctl start "$second"
wait_until 60 "the respawn alert for $second" has_alert ".service == \"$second\" and .unit == \"$second.service\" and .kind == \"respawn_after_operator_stop\" and .stopped_by.loginuid == $OPERATOR_UID and (.respawned_by.via // \"\" | test(\"systemctl start $second\"))"
[ "$(pg_alerts)" = $((before + 1)) ] || fail "other alerts than $second's one respawn: $(alerts)"
# The operator's upgrade-style maintenance: one cluster stopped, the other
# started, both by them.
before=$(pg_alerts)
as_operator pg_ctlcluster "$version" main stop
as_operator pg_ctlcluster "$version" second restart
as_operator pg_ctlcluster "$version" main start
wait_until 120 "$main to serve again" serves 5432
wait_until 30 "status to list both clusters, running" running
sleep 2
[ "$(pg_alerts)" = "$before" ] || fail "the operator's own stops and starts raised an alert: $(alerts)"
echo "systemd-clusters: $main and $second each their own service; $second's restart by a script without a login alerted alone; the operator's own stops and starts: none"
