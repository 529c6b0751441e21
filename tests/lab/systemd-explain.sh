# explain under systemd: Debian's redis-server (Restart=always) would be
# started again, and `explain` says so (exit 3) naming the unit, its
# Restart= and the off switch; the Debian cluster's unit (no Restart=)
# would not (exit 0). `stop --and-pause` masks redis-server for the
# window, so systemd does not start it after the stop; the window's close
# unmasks it, and both switches are in the audit log.
set -euo pipefail
. /lab/lib.sh
# explain SERVICE: its JSON answer in $out, its exit status in $code.
explain() {
    set +e
    out=$(timeout 30 stopguard explain "$1" --json)
    code=$?
    set -e
}
systemctl start redis-server
main=$(systemctl show -P MainPID redis-server)
wait_until 30 "the agent to see redis-server $main" status_has ".services[] | select(.name == \"redis\" and .pid == $main)"
explain redis
[ "$code" = 3 ] || fail "explain redis exited $code, not 3, though Restart=always would start it again: $out"
echo "$out" | jq -e '.main.pid == '"$main"' and ([.supervisors[] | select(.supervisor == "systemd" and .name == "redis-server.service" and .state == "Restart=always" and .would_restart and .off == ["systemctl", "mask", "--runtime", "redis-server.service"])] | length == 1)' > /dev/null ||
    fail "explain redis does not name systemd, Restart=always and its off switch: $out"
text=$(timeout 30 stopguard explain redis || true)
echo "$text" | grep -q "switch it off:  systemctl mask --runtime redis-server.service" ||
    fail "explain's words do not give the off switch: $text"
cluster="postgresql@$(ls /etc/postgresql | sort -n | tail -1)-main"
systemctl start "$cluster"
wait_until 30 "the agent to see $cluster" status_has ".services[] | select(.name == \"$cluster\" and .pid != null)"
explain "$cluster"
[ "$code" = 0 ] || fail "explain $cluster exited $code, not 0, though its unit has no Restart=: $out"
echo "$out" | jq -e '[.supervisors[] | select(.supervisor == "systemd" and .state == "Restart=no" and (.would_restart | not))] | length == 1' > /dev/null ||
    fail "explain $cluster does not say Restart=no: $out"
as_operator stopguard stop redis --and-pause --reason "lab explain" > /tmp/stop.out 2>&1 ||
    fail "stop redis --and-pause failed: $(cat /tmp/stop.out)"
grep -q "systemd switched off: systemctl mask --runtime redis-server.service" /tmp/stop.out ||
    fail "stop --and-pause does not say it masked redis-server: $(cat /tmp/stop.out)"
[ "$(systemctl show -P LoadState redis-server)" = masked ] || fail "redis-server.service is not masked after stop --and-pause"
sleep 3
if systemctl is-active --quiet redis-server; then
    fail "systemd started redis-server again while it was masked"
fi
explain redis
[ "$code" = 0 ] || fail "explain redis exited $code after stop --and-pause, not 0: $out"
as_operator stopguard window close redis > /tmp/close.out 2>&1 || fail "window close failed: $(cat /tmp/close.out)"
grep -q "systemd switched back on: systemctl unmask --runtime redis-server.service" /tmp/close.out ||
    fail "window close does not say it unmasked redis-server: $(cat /tmp/close.out)"
[ "$(systemctl show -P LoadState redis-server)" = loaded ] || fail "redis-server.service is still masked after the window closed"
switched() {
    jq -n -e "[inputs | select(.event == \"supervisor_switched\" and .service == \"redis\" and .on == $1 and .loginuid == $OPERATOR_UID and .error == null)] | length == 1" /var/log/stopguard/audit.jsonl > /dev/null
}
switched false || fail "the audit log lacks the operator's switch off"
switched true || fail "the audit log lacks the switch back on"
systemctl start redis-server
echo "systemd-explain: redis (Restart=always) exit 3 with systemctl mask --runtime, the cluster (Restart=no) exit 0; stop --and-pause masked redis-server, nothing restarted it, window close unmasked it"
