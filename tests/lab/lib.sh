# Shared by the lab's guest-side scripts. They run as root inside a Debian
# guest whose PID 1 is systemd, from the payload disk mounted read-only at
# /lab, with no login identity of their own (the runner is a system service).

# The login uid the scripted operator gets, as PAM gives one at login.
OPERATOR_UID=4242

fail() {
    echo "FAIL: $*"
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
    stopguard status --json | jq -e "$1" > /dev/null
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
