# The incident with Debian's own cluster: an operator opens a window and
# stops PostgreSQL with pg_ctl; monit, whose start program is pg_ctl,
# starts it again; the new postmaster is frozen before it serves and the
# alert names monit.
set -euo pipefail
. /lab/lib.sh
version=$(ls /etc/postgresql | sort -n | tail -1)
bin=/usr/lib/postgresql/$version/bin
data=/var/lib/postgresql/$version/main
pidfile=/run/postgresql/$version-main.pid
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
serves() { PGCONNECT_TIMEOUT=3 as_postgres psql -qAtc 'select 1' > /dev/null 2>&1; }
# Debian's cluster runs in postgresql@VERSION-main.service: a service of
# its own; monit's pg_ctl starts it again outside the unit.
instance="postgresql@$version-main"
wait_until 120 "PostgreSQL $version to serve" serves
start_monit "$pidfile" "\"$bin/pg_ctl -D $data -o '-c config_file=/etc/postgresql/$version/main/postgresql.conf' -l /var/log/postgresql/lab-monit.log start\" as uid postgres and gid postgres"
as_operator stopguard window open postgres --reason "schema change"
as_operator setpriv --reuid=postgres --regid=postgres --init-groups "$bin/pg_ctl" -D "$data" stop -m fast
wait_until 120 "monit's restart to be frozen" status_has ".services[] | select(.name == \"$instance\") | .frozen | length > 0"
pid=$(stopguard status --json | jq -r ".services[] | select(.name == \"$instance\") | .frozen[0]")
in_frozen_cgroup "$pid" || fail "postgres $pid is not in a frozen cgroup"
! serves || fail "the frozen PostgreSQL serves"
has_alert ".service == \"$instance\" and .kind == \"respawn_in_window\" and .respawned_by.supervisor == \"monit\" and .stopped_by.loginuid == $OPERATOR_UID and .stopped_by.comm == \"pg_ctl\"" ||
    fail "no alert naming monit and the operator: $(alerts)"
stop_monit
stopguard window close postgres --kill
wait_until 60 "the frozen postmaster to end" sh -c "! kill -0 $pid 2> /dev/null"
systemctl start "postgresql@$version-main"
wait_until 120 "PostgreSQL $version to serve again" serves
echo "postgres: $version's restart by monit frozen ($pid) before serving; alert names monit and uid $OPERATOR_UID"
