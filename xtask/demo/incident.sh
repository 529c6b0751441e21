#!/bin/bash
# The incident, replayed in a sandbox: PostgreSQL under monit, an operator
# stops it for maintenance, monit restarts it, stopguard freezes it.
# Run by `cargo xtask demo` as root: incident.sh /path/to/stopguard
set -Eeuo pipefail

sg=$1
dir=/tmp/stopguard-demo
port=55432
export STOPGUARD_SOCKET=$dir/agent/stopguard.sock # root-owned: the agent writes nowhere postgres could plant a link
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
pg_ctl="$pgbin/pg_ctl -D $dir/data -o '-p $port -k $dir' -l $dir/postgres.log"
# Where the agent makes its frozen cgroups: cgroup v2 (hybrid or unified), the v1 freezer.
frozen_glob="/sys/fs/cgroup/unified/stopguard/frozen-* /sys/fs/cgroup/stopguard/frozen-* /sys/fs/cgroup/freezer/stopguard/frozen-*"
monit_pid= agent_pid=

if [ -t 1 ]; then b=$'\e[1m' r=$'\e[31;1m' g=$'\e[32m' n=$'\e[0m'; else b= r= g= n=; fi
say() { printf '\n%s%s%s\n' "$b" "$*" "$n"; }
shown() { printf '  %s$ %s%s\n' "$g" "$*" "$n"; }
indent() { sed 's/^/  /'; }
fail() {
    printf '%sdemo failed: %s%s\n' "$r" "$*" "$n" >&2
    if [ -s "$dir/agent.log" ]; then
        echo "agent log (last lines):" >&2
        tail -n 15 "$dir/agent.log" | indent >&2
    fi
    exit 1
}
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
# A shell of the operator: loginuid 1000 is what a login (sshd, PAM) sets.
as_operator() { bash -c "echo 1000 > /proc/self/loginuid && $1"; }
psql_() { timeout 3 setpriv --reuid=postgres --regid=postgres --init-groups \
    "$pgbin/psql" -h "$dir" -p "$port" -d postgres -tAc "$1" 2>&1; }
wait_until() { # wait_until SECONDS WHAT COMMAND...
    local seconds=$1 what=$2 deadline=$((SECONDS + $1))
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail "$what did not happen within $seconds s"
        sleep 0.2
    done
}

# --- cleaning up: also what a stale sandbox left, so it works from pid files ---

# The pid in FILE when that process is alive and belongs to the sandbox.
ours() {
    local pid
    pid=$(head -n 1 "$1" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$dir/" && echo "$pid"
    return 0
}
# PID and all its descendants.
tree() {
    local child
    echo "$1"
    for child in $(pgrep -P "$1" || true); do tree "$child"; done
}
gone() { local p; for p in "$@"; do [ ! -d "/proc/$p" ] && continue; return 1; done; }
wait_gone() { # wait_gone SECONDS PID...
    local deadline=$((SECONDS + $1))
    shift
    until gone "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}
# Frozen cgroups made while the sandbox existed (the agent names them frozen-PID).
demo_cgroups() {
    local d
    for d in $frozen_glob; do
        [ -d "$d" ] && ! grep -qxF "$d" "$dir/cgroups.before" 2>/dev/null && echo "$d"
    done
    return 0
}

cleanup() {
    set +e
    trap - ERR
    local monit agent postmaster cg pid starters
    # A frozen process may only die once its cgroup is thawed (v1 freezer);
    # it stays stopped by SIGSTOP meanwhile.
    for cg in $(demo_cgroups); do
        echo 0 >"$cg/cgroup.freeze" 2>/dev/null || echo THAWED >"$cg/freezer.state" 2>/dev/null
    done
    # monit first, so nothing starts postgres again; with it whatever it was
    # starting (pg_ctl, a postmaster frozen at exec), but not a postmaster
    # that runs: pg_ctl stops that one with its backends, below.
    monit=${monit_pid:-$(ours "$dir/monit.pid")}
    if [ -n "$monit" ]; then
        starters=$(tree "$monit" | grep -vxF "$(ours "$dir/data/postmaster.pid")")
        kill -KILL $starters 2>/dev/null
        wait_gone 10 $starters
    fi
    agent=${agent_pid:-$(ours "$dir/agent.pid")}
    if [ -n "$agent" ]; then
        kill -TERM "$agent" 2>/dev/null
        wait_gone 10 "$agent" || kill -KILL "$agent" 2>/dev/null
    fi
    # Its probes stay pinned past it, still guarding postgres: let go.
    "$sg" unpin >/dev/null 2>&1
    postmaster=$(ours "$dir/data/postmaster.pid")
    if [ -n "$postmaster" ]; then
        as_postgres $pgbin/pg_ctl -D "$dir/data" -m immediate -t 20 stop >/dev/null 2>&1 ||
            kill -KILL "$postmaster" 2>/dev/null
    fi
    for cg in $(demo_cgroups); do
        for pid in $(cat "$cg/cgroup.procs" 2>/dev/null); do
            tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$dir/" && kill -KILL "$pid" 2>/dev/null
        done
        wait_gone 10 $(cat "$cg/cgroup.procs" 2>/dev/null)
        rmdir "$cg" 2>/dev/null
    done
    rm -rf "$dir"
}

trap 'fail "line $LINENO: $BASH_COMMAND"' ERR
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -e "$dir" ]; then
    echo "  removing $dir from an earlier run"
    (cleanup) # in a subshell: it turns off set -e
fi
mkdir -p "$dir" && chown postgres:postgres "$dir"
ls -d $frozen_glob >"$dir/cgroups.before" 2>/dev/null || true
for other in $(pgrep -x stopguard || true); do
    echo "  note: another stopguard agent runs here (pid $other); it sees this demo too"
done

operator=$(getent passwd 1000 | cut -d: -f1) || true
operator="The operator (login uid 1000${operator:+, $operator on this machine})"

say "1. A throwaway PostgreSQL under monit"
echo "  initdb $dir/data, port $port; monit checks it every second and starts it when it is down"
as_postgres "$pgbin/initdb" -D "$dir/data" -A trust >/dev/null
cat >"$dir/monitrc" <<MONIT
set daemon 1
set logfile $dir/monit.log
set pidfile $dir/monit.pid
set idfile $dir/monit.id
set statefile $dir/monit.state
check process postgres with pidfile $dir/data/postmaster.pid
  start program = "$pg_ctl start" as uid postgres and gid postgres with timeout 20 seconds
MONIT
chmod 0600 "$dir/monitrc" # monit refuses a control file others can read
monit -I -c "$dir/monitrc" >/dev/null 2>&1 &
monit_pid=$!
disown # cleanup kills it; no job report from bash
wait_until 60 "PostgreSQL starting under monit" psql_ "select 1"
psql_ "create table orders (id int); insert into orders values (1), (2), (3)" >/dev/null
echo "  postgres is serving (postmaster pid $(head -n 1 "$dir/data/postmaster.pid")), monit pid $monit_pid"

say "2. stopguard watches it"
cat >"$dir/stopguard.toml" <<CONFIG
[agent]
host = "demo-host"
socket = "$STOPGUARD_SOCKET"
state_dir = "$dir/agent/state"
audit_log = "$dir/agent/audit.jsonl"

[[service]]
name = "postgres"
exe = ["/usr/lib/postgresql/*/bin/postgres"]
on_respawn = "freeze"             # inside a maintenance window
on_unexpected_respawn = "freeze"  # after an operator stop outside one
CONFIG
echo "  $dir/stopguard.toml: one service, postgres; a respawn is frozen"
shown "export STOPGUARD_SOCKET=$STOPGUARD_SOCKET"
shown "stopguard run --config $dir/stopguard.toml"
"$sg" run --config "$dir/stopguard.toml" >"$dir/alerts.jsonl" 2>"$dir/agent.log" &
agent_pid=$!
disown
echo "$agent_pid" >"$dir/agent.pid"
wait_until 30 "the agent starting" grep -q "stopguard running" "$dir/agent.log"
echo "  $(grep -o 'stopguard running[^;]*' "$dir/agent.log" | head -n 1)"

say "3. $operator starts maintenance and stops the database"
shown "stopguard window open postgres --reason 'schema change' --for 30m"
as_operator "'$sg' window open postgres --reason 'schema change' --for 30m" | indent
shown "pg_ctl -D $dir/data -m fast stop"
as_operator "setpriv --reuid=postgres --regid=postgres --init-groups $pg_ctl -m fast stop" | indent

say "4. monit, still running, starts it again within seconds: stopguard catches it"
wait_until 30 "stopguard alerting on monit's restart" grep -q '"kind":"respawn' "$dir/alerts.jsonl"
alert=$(grep -m 1 '"kind":"respawn' "$dir/alerts.jsonl")
frozen=$(grep -o '"process":{"pid":[0-9]*' <<<"$alert" | grep -o '[0-9]*$')
summary=$(sed -n 's/.*"summary":"\([^"]*\)".*/\1/p' <<<"$alert")
printf '\n  %sALERT%s %s%s%s\n\n' "$r" "$n" "$b" "$summary" "$n"
echo "  The alert record (one JSON line on the agent's stdout; sinks get the same):"
if command -v jq >/dev/null; then
    # One line per field: readable, and still the record itself.
    { echo "{"; jq -r 'to_entries | map("  \(.key | tojson): \(.value | tojson)") | join(",\n")' <<<"$alert"; echo "}"; } | indent | indent
elif command -v python3 >/dev/null; then
    python3 -c 'import json, sys
print("{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in json.load(sys.stdin).items()) + "\n}")' <<<"$alert" | indent | indent
else
    fold -s -w 100 <<<"$alert" | indent | indent
fi

say "5. The new postmaster (pid $frozen) has not run one instruction of its own"
shown "grep State /proc/$frozen/status"
grep State "/proc/$frozen/status" | indent
shown "grep stopguard /proc/$frozen/cgroup"
grep stopguard "/proc/$frozen/cgroup" | indent
shown "psql -h $dir -p $port -c 'select 1'"
if out=$(psql_ "select 1"); then
    fail "the frozen postgres answered: $out"
fi
echo "  $(head -n 1 <<<"${out:-no answer within 3 s}")"
echo "  it is not serving"
snapshot() { find "$dir/data" -printf '%p %s %T@\n' | sort; }
before=$(snapshot)
sleep 2
[ "$(snapshot)" = "$before" ] || fail "the data directory changed while postgres was frozen"
echo "  and $dir/data did not change in 2 s ($(wc -l <<<"$before") files, sizes and times compared)"
shown "stopguard status"
"$sg" status | indent

say "6. Maintenance done: the operator closes the window and lets it run"
shown "stopguard window close postgres --thaw"
as_operator "'$sg' window close postgres --thaw" | indent
wait_until 30 "PostgreSQL serving again after the thaw" psql_ "select 1"
shown "psql -h $dir -p $port -c 'select count(*) from orders'"
echo "  $(psql_ "select count(*) from orders") rows: the same postmaster (pid $frozen) is serving"

say "7. What happened, from the audit log"
shown "stopguard audit --service postgres"
"$sg" audit --service postgres | indent

say "Done: cleaning up (monit, PostgreSQL, the agent, $dir)"
