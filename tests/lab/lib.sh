# Shared by the lab's guest-side scripts. They run as root inside a Debian
# guest whose PID 1 is systemd, from the payload disk mounted read-only at
# /lab, with no login identity of their own (the runner is a system service).

# The login uid the scripted operator gets, as PAM gives one at login.
OPERATOR_UID=4242

fail() {
    echo "FAIL: $*"
    echo "the agent's last lines:"
    journalctl -u stopguard --no-pager -o cat -n 15 | sed 's/^/    /'
    exit 1
}

# wait_until SECONDS WHAT COMMAND...: polls COMMAND until it succeeds.
wait_until() {
    local secs=$1 what=$2
    shift 2
    local end=$((SECONDS + secs))
    until "$@"; do
        [ "$SECONDS" -lt "$end" ] || fail "waited ${secs} s for $what"
        sleep 0.2
    done
}

# as_operator COMMAND...: COMMAND run by a logged-in person.
as_operator() {
    (echo "$OPERATOR_UID" > /proc/self/loginuid && exec "$@")
}

# scenario NAME SCRIPT [ARGS...]: one matrix cell, timed.
scenario() {
    local name=$1 start status=pass
    shift
    # The row's scenarios (kernel-sensitive ones on every kernel, userland
    # ones on the userland's own kernel only), when the host names them.
    if [ -f /lab/scenarios ] && ! grep -qx "$name" /lab/scenarios; then
        echo "--- $name: not on this row"
        return 0
    fi
    start=$(date +%s%N)
    echo "--- $name"
    bash "$@" || status=fail
    echo "LAB-RESULT $name $status $((($(date +%s%N) - start) / 1000000))"
}

# The alerts the agent raised, one JSON object per line.
alerts() {
    jq -c 'select(.alert) | .alert' /var/log/stopguard/audit.jsonl
}

# has_alert JQ-CONDITION: whether an alert matches. (jq 1.6's -e goes by
# the last input only: each test gathers its inputs first.)
has_alert() {
    alerts | jq -n -e "[inputs | select($1)] | length > 0" > /dev/null
}

# status_has JQ-CONDITION: whether `stopguard status --json` satisfies it.
status_has() {
    timeout 20 stopguard status --json | jq -e "$1" > /dev/null
}

# Whether PID sits alone in its own frozen cgroup of the agent's.
in_frozen_cgroup() {
    grep -qx "0::/stopguard/frozen-$1" "/proc/$1/cgroup" &&
        grep -qx "frozen 1" "/sys/fs/cgroup/stopguard/frozen-$1/cgroup.events"
}

# Whether PID sits in UNIT's own cgroup (systemd's ControlGroup=), frozen
# there with the freezer systemd reads.
in_frozen_unit() {
    local cgroup
    cgroup=$(systemctl show -P ControlGroup "$2")
    [ -n "$cgroup" ] && grep -qx "0::$cgroup" "/proc/$1/cgroup" &&
        grep -qx "frozen 1" "/sys/fs/cgroup$cgroup/cgroup.events"
}

# Whether systemd reports UNIT's FreezerState= as it does for a unit the
# agent froze: running. systemd reports only freezes it made itself
# (252 and 257 alike); the kernel's cgroup.events of its ControlGroup= is
# what says frozen (`in_frozen_unit`).
reports_running() {
    [ "$(systemctl show -P FreezerState "$1")" = running ]
}

# The unit as installed: enabled, active, hardened, logging in the journal's
# conventions; prints its exposure score as a LAB-EXPOSURE line.
check_unit() {
    wait_until 120 "stopguard.service to be active" systemctl is-active --quiet stopguard
    [ "$(systemctl is-enabled stopguard)" = enabled ] || fail "stopguard.service is not enabled"
    [ "$(systemctl show -P Type stopguard)" = notify ] || fail "stopguard.service is not Type=notify"
    for setting in ProtectSystem=strict ProtectHome=yes PrivateTmp=yes NoNewPrivileges=yes; do
        [ "$(systemctl show -P "${setting%%=*}" stopguard)" = "${setting#*=}" ] ||
            fail "stopguard.service lacks $setting"
    done
    stopguard status > /dev/null || fail "stopguard status does not answer"
    status_has '.pinning.state == "pinned"' || fail "the probes are not pinned: $(stopguard status)"
    local score
    score=$(systemd-analyze security stopguard.service --no-pager 2>/dev/null |
        sed -n 's/.*Overall exposure level for stopguard.service: \([0-9.]*\) \([A-Z]*\).*/\1 \2/p')
    [ -n "$score" ] || fail "systemd-analyze security gave no exposure score"
    echo "LAB-EXPOSURE $score"
    # The journal adds its own time and takes the level from a <N> prefix.
    local ready
    ready=$(journalctl -u stopguard -o json --no-pager |
        jq -r 'select(.MESSAGE | type == "string" and test("stopguard running")) | "\(.PRIORITY) \(.MESSAGE)"' | tail -1)
    [ -n "$ready" ] || fail "no 'stopguard running' line in the journal"
    case "$ready" in
        "6 "[0-9][0-9][0-9][0-9]-*) fail "the journal line carries a timestamp of its own: $ready" ;;
        "6 "*) ;;
        *) fail "the journal line is not at priority 6 (info): $ready" ;;
    esac
}

# start_monit PIDFILE START-PROGRAM: a monit of the scenario's own, polling
# every second, restarting the PostgreSQL cluster whose pidfile is PIDFILE
# with START-PROGRAM (monit's syntax, `as uid` and all); `stop_monit` (set
# to run when the scenario exits) ends it.
start_monit() {
    cat > /root/lab-monitrc <<MONIT
set daemon 1
set logfile /var/log/lab-monit.log
set pidfile /run/lab-monit.pid
set idfile /var/lib/lab-monit.id
set statefile /var/lib/lab-monit.state
check process postgres with pidfile $1
  start program = $2 with timeout 120 seconds
MONIT
    chmod 600 /root/lab-monitrc
    monit -c /root/lab-monitrc
    trap stop_monit EXIT
    sleep 3
}

stop_monit() {
    monit -c /root/lab-monitrc quit > /dev/null 2>&1 || true
}

# respawn_loop_start: something that starts labd every 0.3 s, each pid and
# its start time (ns) in /run/lab-respawns; inside labd's window each start
# is a respawn. respawn_loop_stop ends it.
respawn_loop_start() {
    cat > /run/lab-respawn-loop.sh <<'LOOP'
while :; do
    /usr/local/bin/labd /var/lib/labd/data &
    echo "$! $(date +%s%N)" >> /run/lab-respawns
    sleep 0.3
done
LOOP
    : > /run/lab-respawns
    setsid bash /run/lab-respawn-loop.sh < /dev/null > /dev/null 2>&1 &
}

respawn_loop_stop() {
    pkill -f lab-respawn-loop || true
    sleep 1
}

# The time (ns) of the latest journal line of stopguard containing TEXT.
journal_ns() {
    journalctl -u stopguard -o json --no-pager |
        jq -r --arg text "$1" 'select(.MESSAGE | type == "string" and contains($text)) | .__REALTIME_TIMESTAMP' |
        tail -1 | sed 's/$/000/'
}

# respawn_loop_check WHAT: every start the loop made was stopped before it
# ran and seen by an agent (a respawn, or a retry killed), some while no
# agent ran (from the old agent's "stopguard stopped" to the new one's
# "stopguard running"); prints how many, and the longest any of those
# waited to be seen, as a LAB-GAP line.
respawn_loop_check() {
    local down up total=0 in_gap=0 worst_ms=0 pid spawned seen wait_ms
    local -A ran at
    down=$(journal_ns "stopguard stopped")
    up=$(journal_ns "stopguard running")
    [ -n "$down" ] && [ -n "$up" ] || fail "no stop and start of the agent in the journal"
    # One pass over the data and one over the audit, not one per start.
    while read -r pid; do ran[$pid]=1; done < <(awk '/^start / { print $2 }' /var/lib/labd/data)
    while read -r pid seen; do
        [ -n "${at[$pid]:-}" ] || at[$pid]=$seen
    done < <(stopguard audit --json --service labd | jq -r '
        if .finding == "respawn" then "\(.started.pid) \(.at)"
        elif .event == "respawn_retry_killed" then "\(.pid) \(.at)"
        else empty end')
    while read -r pid spawned; do
        total=$((total + 1))
        [ -z "${ran[$pid]:-}" ] || fail "respawn $pid ran (started at $spawned)"
        seen=${at[$pid]:-}
        [ -n "$seen" ] || fail "respawn $pid (started at $spawned) was seen by no agent"
        if [ "$spawned" -gt "$down" ] && [ "$spawned" -lt "$up" ]; then
            in_gap=$((in_gap + 1))
            wait_ms=$((($(date -d "$seen" +%s%N) - spawned) / 1000000))
            [ "$wait_ms" -gt "$worst_ms" ] && worst_ms=$wait_ms
        fi
    done < /run/lab-respawns
    [ "$in_gap" -gt 0 ] || fail "no respawn while no agent ran (down $down, up $up): the check proves nothing"
    echo "LAB-GAP $1: $in_gap of $total respawns while no agent ran, none ran; the longest waited $worst_ms ms to be seen"
}

# start_labd: labd (the suite's daemon) under runit's runsv, added to the
# packaged config; done when the agent sees it running, its pid in LABD_PID.
start_labd() {
    install -m 755 /lab/sgdaemon /usr/local/bin/labd
    mkdir -p /etc/sv/labd /var/lib/labd
    printf '#!/bin/sh\nexec /usr/local/bin/labd /var/lib/labd/data\n' > /etc/sv/labd/run
    chmod 755 /etc/sv/labd/run
    cat >> /etc/stopguard/stopguard.toml <<'TOML'

[[service]]
name = "labd"
exe = ["/usr/local/bin/labd"]
TOML
    systemctl reload stopguard
    wait_until 30 "the agent to watch labd" status_has '.services[] | select(.name == "labd")'
    setsid runsv /etc/sv/labd < /dev/null > /dev/null 2>&1 &
    wait_until 30 "labd to start" grep -qs '^start ' /var/lib/labd/data
    LABD_PID=$(awk '/^start/ { print $2; exit }' /var/lib/labd/data)
    wait_until 30 "the agent to see labd running" status_has ".services[] | select(.name == \"labd\" and .pid == $LABD_PID)"
}
