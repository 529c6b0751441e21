# fleet-worker.sh: runs the commands other guests send with `lab-on`, one at
# a time, as root, and answers each with its exit status and output.
set -u
b64() {
    local text
    text=$(base64 -w0 < "$1")
    echo "${text:--}"
}
out=$(mktemp)
err=$(mktemp)
while :; do
    if ! exec 3<> /dev/tcp/10.0.2.100/7000; then
        sleep 1
        continue
    fi
    echo worker >&3
    while read -r id job <&3; do
        (cd / && bash -c "$(base64 -d <<< "$job")") < /dev/null > "$out" 2> "$err" 3>&-
        echo "$id $? $(b64 "$out") $(b64 "$err")" >&3
    done
    exec 3>&-
    sleep 1
done
