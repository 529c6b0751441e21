#!/bin/bash
# The incident, replayed in a sandbox: PostgreSQL under monit, an operator
# stops it for maintenance, monit restarts it, stopguard freezes it.
# Run by `cargo xtask demo` as root: incident.sh /path/to/stopguard
set -euo pipefail

sg=$1
dir=/tmp/stopguard-demo
port=55432
sock=$dir/stopguard.sock
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
monit_pid= agent_pid= frozen=

if [ -t 1 ]; then b=$'\e[1m' r=$'\e[31;1m' g=$'\e[32m' n=$'\e[0m'; else b= r= g= n=; fi
say() { printf '\n%s%s%s\n' "$b" "$*" "$n"; }
shown() { printf '  %s$ %s%s\n' "$g" "$*" "$n"; }
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
# A shell of the operator: loginuid 1000 is what a login (sshd, PAM) sets.
as_alice() { bash -c "echo 1000 > /proc/self/loginuid && $1"; }
psql_() { timeout 3 setpriv --reuid=postgres --regid=postgres --init-groups \
    "$pgbin/psql" -h "$dir" -p "$port" -d postgres -tAc "$1" 2>&1; }
wait_until() { # wait_until SECONDS WHAT COMMAND...
    local deadline=$((SECONDS + $1)) what=$2; shift 2
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            printf '%sdemo failed: %s did not happen within the time allowed%s\n' "$r" "$what" "$n" >&2
            [ -f "$dir/agent.log" ] && { echo "agent log (last lines):"; tail -n 15 "$dir/agent.log"; } >&2
            return 1
        fi
        sleep 0.2
    done
}

cleanup() {
    set +e
    [ -n "$monit_pid" ] && kill "$monit_pid" 2>/dev/null && wait "$monit_pid" 2>/dev/null
    pkill -KILL -f "$dir/data" 2>/dev/null
    if [ -n "$agent_pid" ]; then
        kill -TERM "$agent_pid" 2>/dev/null
        wait "$agent_pid" 2>/dev/null
    fi
    [ -n "$frozen" ] && rmdir "/sys/fs/cgroup/unified/stopguard/frozen-$frozen" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -rf "$dir" && mkdir -p "$dir" && chown postgres:postgres "$dir"

say "1. A throwaway PostgreSQL under monit"
echo "  initdb $dir/data, port $port; monit checks it every second and starts it when it is down"
as_postgres "$pgbin/initdb" -D "$dir/data" -A trust >/dev/null
pg_ctl="$pgbin/pg_ctl -D $dir/data -o '-p $port -k $dir' -l $dir/postgres.log"
cat > "$dir/monitrc" <<MONIT
set daemon 1
set logfile $dir/monit.log
set pidfile $dir/monit.pid
set idfile $dir/monit.id
set statefile $dir/monit.state
check process postgres with pidfile $dir/data/postmaster.pid
  start program = "$pg_ctl start" as uid postgres and gid postgres with timeout 20 seconds
MONIT
chmod 0600 "$dir/monitrc"
monit -I -c "$dir/monitrc" >/dev/null 2>&1 &
monit_pid=$!
wait_until 60 "PostgreSQL starting under monit" psql_ "select 1"
first=$(head -n 1 "$dir/data/postmaster.pid")
psql_ "create table orders (id int); insert into orders values (1), (2), (3)" >/dev/null
echo "  postgres is serving (postmaster pid $first), monit pid $monit_pid"

say "2. stopguard watches it"
cat > "$dir/stopguard.toml" <<CONFIG
[agent]
host = "demo-host"
socket = "$sock"
state_dir = "$dir/state"
audit_log = "$dir/audit.jsonl"

[[service]]
name = "postgres"
exe = ["/usr/lib/postgresql/*/bin/postgres"]
on_respawn = "freeze"
on_unexpected_respawn = "freeze"
CONFIG
shown "stopguard run --config $dir/stopguard.toml"
"$sg" run --config "$dir/stopguard.toml" >"$dir/alerts.jsonl" 2>"$dir/agent.log" &
agent_pid=$!
wait_until 30 "the agent starting" grep -q "stopguard running" "$dir/agent.log"
echo "  $(grep -o 'stopguard running.*' "$dir/agent.log" | head -n 1)"

say "3. alice (login uid 1000) starts maintenance and stops the database"
shown "stopguard window open postgres --reason 'schema change' --for 30m"
as_alice "'$sg' --socket '$sock' window open postgres --reason 'schema change' --for 30m" | sed 's/^/  /'
shown "pg_ctl -D $dir/data stop"
as_alice "setpriv --reuid=postgres --regid=postgres --init-groups $pg_ctl -m fast stop" | sed 's/^/  /'

say "4. monit, still running, restarts it within seconds: stopguard catches it"
wait_until 30 "monit's restart being caught" grep -q '"kind":"respawn' "$dir/alerts.jsonl"
alert=$(grep -m 1 '"kind":"respawn' "$dir/alerts.jsonl")
frozen=$(grep -o '"process":{"pid":[0-9]*' <<<"$alert" | grep -o '[0-9]*$')
summary=$(sed -n 's/.*"summary":"\([^"]*\)".*/\1/p' <<<"$alert")
printf '  %sALERT%s %s\n\n  The alert record (JSON, as sinks receive it):\n' "$r" "$n" "$summary"
if command -v python3 >/dev/null; then
    # One line per field: readable, and still the record itself.
    python3 -c 'import json, sys
fields = json.load(sys.stdin).items()
print("{")
print(",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in fields))
print("}")' <<<"$alert" | sed 's/^/    /'
else
    fold -s -w 100 <<<"$alert" | sed 's/^/    /'
fi

say "5. The new postmaster (pid $frozen) has not run one instruction of its own"
shown "grep State /proc/$frozen/status"
grep State "/proc/$frozen/status" | sed 's/^/  /'
shown "grep ^0:: /proc/$frozen/cgroup"
grep '^0::' "/proc/$frozen/cgroup" | sed 's/^/  /'
shown "psql -h $dir -p $port -c 'select 1'"
if out=$(psql_ "select 1"); then
    printf '%sdemo failed: the frozen postgres answered: %s%s\n' "$r" "$out" "$n" >&2
    exit 1
fi
echo "  no answer within 3 s: it is not serving"
snapshot() { find "$dir/data" -printf '%p %s %T@\n' | sort; }
before=$(snapshot); sleep 2
if [ "$(snapshot)" != "$before" ]; then
    printf '%sdemo failed: the data directory changed while frozen%s\n' "$r" "$n" >&2
    exit 1
fi
echo "  and $dir/data did not change in 2 s ($(wc -l <<<"$before") files, sizes and times compared)"
shown "stopguard status"
"$sg" --socket "$sock" status | sed 's/^/  /'

say "6. Maintenance done: alice closes the window and lets it run"
shown "stopguard window close postgres --thaw"
as_alice "'$sg' --socket '$sock' window close postgres --thaw" | sed 's/^/  /'
wait_until 30 "PostgreSQL serving again" psql_ "select 1"
shown "psql -h $dir -p $port -c 'select count(*) from orders'"
echo "  $(psql_ "select count(*) from orders") rows: the same postmaster (pid $frozen) is serving"
frozen=

say "7. What happened, from the audit log"
shown "stopguard audit --service postgres"
"$sg" --socket "$sock" audit --service postgres | sed 's/^/  /'

say "Done: cleaning up (monit, PostgreSQL, the agent, $dir)"
