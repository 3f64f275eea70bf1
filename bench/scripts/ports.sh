# Sourced by the bench scripts.

# A free port outside the ephemeral range, so that no outgoing connection
# (wrk's, HAProxy's, anyone's) can hold it as its source port. Sets $port_out.
read -r eph_lo eph_hi </proc/sys/net/ipv4/ip_local_port_range
declare -A taken=()
free_port() {
    local p
    while :; do
        if ((eph_lo > 11000)); then
            p=$((10000 + RANDOM % (eph_lo - 10000)))
        elif ((eph_hi < 64000)); then
            p=$((eph_hi + 1 + RANDOM % (65535 - eph_hi)))
        else
            p=$((20000 + RANDOM % 30000))
        fi
        [[ -n ${taken[$p]:-} ]] && continue
        if [[ -z $(ss -Hltn "sport = :$p") ]]; then
            taken[$p]=1
            port_out=$p
            return
        fi
    done
}
