# The trace workload: exec, fork, a signal from a logged-in shell, an exit
# code, each reported exactly.
set -euo pipefail
. /lab/lib.sh
stopguard trace --json > /tmp/trace.jsonl 2> /tmp/trace.err &
tracer=$!
wait_until 60 "trace to attach" grep -q "tracing exec" /tmp/trace.err
read -r shell sleeper exiter < <(bash /lab/workload.sh)
sleep 1
kill -INT "$tracer"
wait "$tracer" || fail "trace exited $?: $(cat /tmp/trace.err)"
event() {
    jq -n -e --argjson shell "$shell" --argjson sleeper "$sleeper" --argjson exiter "$exiter" \
        "[inputs | select($1)] | length > 0" /tmp/trace.jsonl > /dev/null && return
    echo "events about $sleeper and $exiter:"
    jq -c --argjson sleeper "$sleeper" --argjson exiter "$exiter" \
        'select(.pid == $sleeper or .child_pid == $sleeper or .target.pid == $sleeper or .pid == $exiter)' /tmp/trace.jsonl
    fail "no trace event with $1"
}
event '.kind == "exec" and .pid == $sleeper and .filename == "/usr/bin/sleep" and .ppid == $shell and .loginuid == 1000'
event '.kind == "fork" and .child_pid == $sleeper and .pid == $shell and .loginuid == 1000'
event '.kind == "signal" and .target.pid == $sleeper and .signal == 15 and .sender.pid == $shell and .sender.loginuid == 1000'
event '.kind == "exit" and .pid == $sleeper and .signal == 15'
event '.kind == "exit" and .pid == $exiter and .exit_code == 3'
echo "trace: $(wc -l < /tmp/trace.jsonl) events, every workload record exact"
