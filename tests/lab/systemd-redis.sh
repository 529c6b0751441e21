# Restart= under systemd: an operator's `systemctl kill` of Debian's
# redis-server (Restart=always) is their stop; PID 1 starting it again by
# itself is a respawn by systemd naming the unit and its Restart= policy.
# The operator's own `systemctl stop` and `start` afterwards raise nothing,
# nor does a crash that Restart= answers (audited as one).
set -euo pipefail
. /lab/lib.sh
redis_alerts() {
    alerts | jq -s '[.[] | select(.service == "redis" and .resolves == null)] | length'
}
systemctl start redis-server
main=$(systemctl show -P MainPID redis-server)
wait_until 30 "the agent to see redis-server $main" status_has ".services[] | select(.name == \"redis\" and .pid == $main)"
[ "$(systemctl show -P Restart redis-server)" = always ] || fail "redis-server.service is not Restart=always"
as_operator systemctl kill redis-server
restarted() {
    local now
    now=$(systemctl show -P MainPID redis-server)
    [ "$now" != 0 ] && [ "$now" != "$main" ]
}
wait_until 60 "systemd to restart redis-server" restarted
wait_until 30 "the respawn alert" has_alert ".service == \"redis\" and .unit == \"redis-server.service\" and .kind == \"respawn_after_operator_stop\" and .respawned_by.supervisor == \"systemd\" and .respawned_by.unit == \"redis-server.service\" and .respawned_by.restart == \"always\" and (.summary | test(\"Restart=always\")) and .stopped_by.loginuid == $OPERATOR_UID and .stopped_by.via == \"systemctl kill redis-server\""
before=$(redis_alerts)
as_operator systemctl stop redis-server
as_operator systemctl start redis-server
wait_until 30 "redis-server to run again" systemctl is-active --quiet redis-server
sleep 2
[ "$(redis_alerts)" = "$before" ] || fail "the operator's own systemctl stop and start raised an alert: $(alerts)"
crashed=$(systemctl show -P MainPID redis-server)
wait_until 30 "the agent to see redis-server $crashed" status_has ".services[] | select(.name == \"redis\" and .pid == $crashed)"
kill -KILL "$crashed"
main=$crashed
wait_until 60 "systemd to restart the crashed redis-server" restarted
crash_restarts() {
    jq -n -e "[inputs | select(.finding == \"crash_restart\" and .started.service == \"redis\" and .started.unit == \"redis-server.service\")] | length > 0" /var/log/stopguard/audit.jsonl > /dev/null
}
wait_until 30 "the crash restart in the audit log" crash_restarts
sleep 1
[ "$(redis_alerts)" = "$before" ] || fail "a crash that Restart= answered raised an alert: $(alerts)"
echo "systemd-redis: systemctl kill by uid $OPERATOR_UID then Restart=always: respawn by systemd naming redis-server.service and Restart=always; the operator's own stop and start, a kill -9 crash: no alert"
