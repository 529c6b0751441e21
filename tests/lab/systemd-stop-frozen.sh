# A respawn held frozen in its unit is still the unit's, to stop or kill:
# - held across an agent restart, an operator's `systemctl stop` of the
#   unit delivers SIGTERM with SIGCONT to a postmaster that never ran, the
#   unit's cgroup thawed for the job (by systemd 252 itself; for 257, which
#   thaws only what it froze, by the agent seeing PID 1 signal the unit):
#   it ends without its startup (the data directory untouched, not a line
#   in the log from it), in seconds, and the unit is inactive;
# - `stopguard window close --kill` ends it and thaws the unit: what else
#   of the start job sat frozen there (pg_ctlcluster, pg_ctl) ends too, and
#   the unit is inactive or failed, as after any kill.
# The respawns are `systemctl start`s run by a script (no login identity),
# after the operator's own `systemctl stop`.
set -euo pipefail
. /lab/lib.sh
version=$(ls /etc/postgresql | sort -n | tail -1)
unit="postgresql@$version-main"
data=/var/lib/postgresql/$version/main
log=/var/log/postgresql/postgresql-$version-main.log
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
serves() { PGCONNECT_TIMEOUT=3 as_postgres psql -qAtc 'select 1' > /dev/null 2>&1; }
frozen_pid() {
    stopguard status --json | jq -r ".services[] | select(.name == \"$unit\") | .frozen[0] // empty"
}
held() {
    [ -n "$(frozen_pid)" ]
}
released() {
    ! status_has ".frozen | index($1) != null"
}
# respawn: the operator stops the unit, a script starts it again; sets
# `pid` to the postmaster held frozen in the unit.
respawn() {
    as_operator systemctl stop "$unit"
    touch /run/lab-stopped
    systemctl start --no-block "$unit"
    wait_until 120 "the script's start of $unit to be frozen" held
    pid=$(frozen_pid)
    in_frozen_unit "$pid" "$unit" || fail "postgres $pid is not frozen in $unit: $(cat "/proc/$pid/cgroup")"
    reports_running "$unit" || fail "systemd reports $unit $(systemctl show -P FreezerState "$unit")"
}
# untouched PID: the data directory and the log show nothing of PID.
untouched() {
    local touched
    touched=$(find "$data" -newer /run/lab-stopped)
    [ -z "$touched" ] || fail "postmaster $1 changed its data directory: $touched"
    ! grep -q "\[$1\]" "$log" || fail "postmaster $1 ran: $(grep "\[$1\]" "$log")"
}
grep -q '^on_unexpected_respawn = "freeze"' /etc/stopguard/stopguard.toml ||
    sed -i '/^name = "postgres"$/a on_unexpected_respawn = "freeze"' /etc/stopguard/stopguard.toml
systemctl reload stopguard
wait_until 120 "PostgreSQL $version to serve" serves

# The operator's stop of the frozen unit, after an agent restart: the agent
# leaves the unit's cgroup thawed (its process stopped) while it is away,
# and freezes it again when back.
respawn
systemctl restart stopguard
wait_until 60 "stopguard.service to be active" systemctl is-active --quiet stopguard
status_has ".frozen | index($pid) != null" || fail "the agent lost frozen $pid: $(stopguard status)"
in_frozen_unit "$pid" "$unit" || fail "postgres $pid is not frozen in $unit again after the agent's restart"
start=$SECONDS
as_operator timeout 60 systemctl stop "$unit" || fail "systemctl stop $unit of the frozen unit did not end within 60 s"
took=$((SECONDS - start))
[ "$took" -lt 30 ] || fail "systemctl stop of the frozen $unit took $took s"
wait_until 10 "the frozen postmaster $pid to end" sh -c "! kill -0 $pid 2> /dev/null"
state=$(systemctl is-active "$unit" || true)
[ "$state" = inactive ] || fail "$unit is $state after the operator's stop"
untouched "$pid"
wait_until 10 "the agent to let go of $pid" released "$pid"
stopped="stopped in $took s, $unit $state"

# A window closed with --kill.
as_operator systemctl start "$unit"
wait_until 120 "PostgreSQL to serve again" serves
as_operator stopguard window open postgres --reason "lab: close --kill" > /dev/null
respawn
control_group=$(systemctl show -P ControlGroup "$unit")
as_operator stopguard window close postgres --kill
wait_until 10 "the frozen postmaster $pid to end" sh -c "! kill -0 $pid 2> /dev/null"
ended() {
    case "$(systemctl is-active "$unit")" in inactive | failed) true ;; *) false ;; esac
}
wait_until 60 "$unit to end" ended
state=$(systemctl is-active "$unit" || true)
left=$(cat "/sys/fs/cgroup$control_group/cgroup.procs" 2> /dev/null || true)
[ -z "$left" ] || fail "left in $unit after the kill: $(ps -o pid,stat,args -p "$(echo $left | tr ' ' ,)")"
! grep -qx "frozen 1" "/sys/fs/cgroup$control_group/cgroup.events" 2> /dev/null ||
    fail "$unit's cgroup is still frozen after the kill"
untouched "$pid"
killed="$unit $state"

as_operator systemctl start "$unit"
wait_until 120 "PostgreSQL to serve once started by the operator" serves
echo "systemd-stop-frozen: held in $unit across an agent restart; the operator's systemctl stop of the frozen unit: $stopped, the postmaster never ran; window close --kill: $killed, nothing left frozen"
