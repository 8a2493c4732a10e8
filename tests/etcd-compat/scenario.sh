#!/usr/bin/env bash
# The etcdctl 3.4 compatibility scenario: one fixed sequence of etcdctl
# commands against a FRESH cluster (revisions are compared, so nothing else may
# write to it). Prints the RAW transcript: `## step` headers, each command's
# stdout and stderr, and `-> exit N`. scripts/etcd-compat runs it and
# normalises the transcript with normalise.py; run it through that script.
#
#   tests/etcd-compat/scenario.sh ENDPOINTS WORKDIR
#
# Step names never contain raw lease ids (they say $L1, $L2...), so that the
# normaliser's order-of-appearance lease labels come from command output only.
# Background commands (watch, lock, elect) are sequenced by waiting for what
# they print or write, never by fixed sleeps alone, so their output is the
# same on every run.
set -euo pipefail

(($# == 2)) || {
  echo "usage: $0 ENDPOINTS WORKDIR" >&2
  exit 2
}
readonly endpoints=$1
work=$(cd "$2" && pwd)
readonly work
cd "$work"

export ETCDCTL_API=3
readonly etcdctl=${ETCDCTL:-etcdctl}
ctl=("$etcdctl" --endpoints "$endpoints" --dial-timeout=3s --command-timeout=10s)
# How long a background command gets to show an expected line.
readonly wait_s=15
# Background commands are children of this shell; never leave one behind.
trap 'jobs -p | xargs -r kill 2>/dev/null || true' EXIT

# Runs a step: prints `## NAME`, then the command's output and exit code.
# The command's stdin is the caller's (txn steps feed it a here-document).
step() {
  local name=$1 rc=0
  shift
  echo "## $name"
  "$@" >"$work/last" 2>&1 || rc=$?
  cat "$work/last"
  echo "-> exit $rc"
}

ctl() { "${ctl[@]}" "$@"; }

# A field of `get KEY -w fields` (e.g. CreateRevision, ModRevision,
# Revision), read without recording a step.
# Prints nothing when the get fails: the steps that follow then fail
# visibly in the transcript instead of aborting the scenario.
field() {
  { ctl get "$1" -w fields 2>/dev/null || true; } |
    awk -F' : ' -v f="\"$2\"" '$1 == f { print $2; exit }'
}

# The lease id that the last step (a `lease grant`) printed.
granted_lease() { awk '/granted with TTL/ { print $2; exit }' "$work/last"; }

# Waits until file $1 has a line equal to $2; fails after $wait_s seconds.
wait_line() {
  local deadline=$((SECONDS + wait_s))
  until grep -qxF -- "$2" "$1" 2>/dev/null; do
    ((SECONDS < deadline)) || return 1
    sleep 0.05
  done
}

# Waits until `get --prefix $1 --keys-only` lists $2 keys.
wait_keys() {
  local deadline=$((SECONDS + wait_s))
  until (($(ctl get --prefix "$1" --keys-only | grep -c .) == $2)); do
    ((SECONDS < deadline)) || return 1
    sleep 0.05
  done
}

# Prints a note line for a wait's outcome, so that a timeout shows in the
# transcript instead of silently reordering it.
note_wait() {
  if "$@"; then echo "(waited: ok)"; else echo "(waited: TIMED OUT: $*)"; fi
}

# Stops a background etcdctl with SIGTERM (what etcdctl handles as "release
# and exit") and prints its exit code.
stop_bg() {
  local rc=0
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" || rc=$?
  echo "-> exit $rc"
}

kv_steps() {
  step "put k/a va1" ctl put k/a va1                      # rev 2
  step "put k/b vb1" ctl put k/b vb1                      # rev 3
  step "put k/c vc1" ctl put k/c vc1                      # rev 4
  step "put k/a va2" ctl put k/a va2                      # rev 5
  step "put k/d vd1" ctl put k/d vd1                      # rev 6
  step "put z/other zz" ctl put z/other zz                # rev 7
  step "put k/b vb2 --prev-kv" ctl put k/b vb2 --prev-kv # rev 8
  step "get k/a" ctl get k/a
  step "get k/a -w json" ctl get k/a -w json
  step "get k/ --prefix" ctl get k/ --prefix
  step "get k/ --prefix --keys-only" ctl get k/ --prefix --keys-only
  step "get k/ --prefix --print-value-only" ctl get k/ --prefix --print-value-only
  step "get k/a --rev 2" ctl get k/a --rev 2
  step "get k/ --prefix --rev 4 -w json" ctl get k/ --prefix --rev 4 -w json
  step "get k/ --prefix --limit 2" ctl get k/ --prefix --limit 2
  step "get k/ --prefix --limit 2 -w json" ctl get k/ --prefix --limit 2 -w json
  step "get k/ --prefix --sort-by=VALUE --order=DESCEND" \
    ctl get k/ --prefix --sort-by=VALUE --order=DESCEND
  step "get k/ --prefix --sort-by=CREATE --order=DESCEND --keys-only" \
    ctl get k/ --prefix --sort-by=CREATE --order=DESCEND --keys-only
  step "get k/ --prefix --sort-by=MODIFY --order=ASCEND --keys-only" \
    ctl get k/ --prefix --sort-by=MODIFY --order=ASCEND --keys-only
  step "get k/ --prefix --sort-by=VERSION --order=DESCEND --limit 1 -w json" \
    ctl get k/ --prefix --sort-by=VERSION --order=DESCEND --limit 1 -w json
  step "get k/b k/d (range)" ctl get k/b k/d
  step "get --from-key k/c --keys-only" ctl get --from-key k/c --keys-only
  step "get k/missing" ctl get k/missing
  step "get k/a --rev 1000 (future revision)" ctl get k/a --rev 1000
  step "del k/c --prev-kv" ctl del k/c --prev-kv          # rev 9
  step "del k/ --prefix" ctl del k/ --prefix               # rev 10
  step "del k/ --prefix (nothing left)" ctl del k/ --prefix
  step "put p/1 one" ctl put p/1 one                       # rev 11
  step "put p/2 two" ctl put p/2 two                       # rev 12
  step "del p/ --prefix --prev-kv" ctl del p/ --prefix --prev-kv # rev 13
  step "get '' --prefix -w json (everything)" ctl get '' --prefix -w json
}

txn_steps() {
  step "put t/a 1" ctl put t/a 1
  step "put t/b 1" ctl put t/b 1
  step "put t/a 2" ctl put t/a 2
  local create mod
  create=$(field t/a CreateRevision)
  mod=$(field t/a ModRevision)
  step "txn: value, version, create and mod all hold -> success branch" ctl txn <<EOF
value("t/a") = "2"
version("t/a") = "2"
create("t/a") = "$create"
mod("t/a") = "$mod"

put t/res success
get t/ --prefix

put t/res failure

EOF
  step "txn: value and version fail -> failure branch (-w json)" ctl txn -w json <<EOF
value("t/a") = "2"
version("t/a") > "5"

put t/res yes

put t/res no --prev-kv
get t/res
del t/b --prev-kv

EOF
  step "txn: create < and mod > on present and missing keys" ctl txn <<EOF
create("t/a") < "$((create + 1))"
mod("t/a") > "$((mod - 1))"
create("t/missing") = "0"

del t/ --prefix --prev-kv

get t/a

EOF
  step "txn: no compares -> success" ctl txn <<EOF

put t/c 3


EOF
  step "txn: put and del of one key (error)" ctl txn <<EOF
value("t/c") = "3"

put t/x 1
del t/x


EOF
  step "get t/ --prefix -w json" ctl get t/ --prefix -w json
}

watch_steps() {
  local rev
  rev=$(field t/c Revision)
  # --rev makes the live watch replay from the first put even if it is
  # established after it, so its output never depends on timing.
  timeout 60 "${ctl[@]}" watch --prefix w/ --prev-kv --rev $((rev + 1)) >"$work/watch-live" 2>&1 &
  local live=$!
  step "put w/a 1" ctl put w/a 1
  step "put w/b 1" ctl put w/b 1
  step "put w/a 2" ctl put w/a 2
  step "del w/b" ctl del w/b
  step "put w/c 1" ctl put w/c 1
  step "del w/ --prefix (two keys, one revision)" ctl del w/ --prefix
  step "put w/end done" ctl put w/end "done"
  echo "## watch --prefix w/ --prev-kv --rev \$first (live, from the first put)"
  note_wait wait_line "$work/watch-live" "done"
  stop_bg "$live"
  cat "$work/watch-live"
  timeout 60 "${ctl[@]}" watch --prefix w/ --rev $((rev + 3)) >"$work/watch-replay" 2>&1 &
  local replay=$!
  echo "## watch --prefix w/ --rev \$first+2 (history replay)"
  note_wait wait_line "$work/watch-replay" "done"
  stop_bg "$replay"
  cat "$work/watch-replay"
}

lease_steps() {
  local l1 l2 l3
  step "lease grant 60 (\$L1)" ctl lease grant 60
  l1=$(granted_lease)
  step "put l/a 1 --lease=\$L1" ctl put l/a 1 --lease="$l1"
  step "put l/b 2 --lease=\$L1" ctl put l/b 2 --lease="$l1"
  step "put l/c 3 (no lease)" ctl put l/c 3
  step "lease timetolive \$L1 --keys" ctl lease timetolive "$l1" --keys
  step "lease timetolive \$L1" ctl lease timetolive "$l1"
  step "lease keep-alive --once \$L1" ctl lease keep-alive --once "$l1"
  step "lease grant 120 (\$L2)" ctl lease grant 120
  l2=$(granted_lease)
  step "put l/d 4 --lease=\$L2" ctl put l/d 4 --lease="$l2"
  step "lease list [unordered]" ctl lease list
  step "get l/ --prefix -w json" ctl get l/ --prefix -w json
  step "lease revoke \$L1 (deletes l/a and l/b)" ctl lease revoke "$l1"
  step "get l/ --prefix" ctl get l/ --prefix
  step "lease timetolive \$L1 --keys (revoked)" ctl lease timetolive "$l1" --keys
  step "lease revoke \$L1 again" ctl lease revoke "$l1"
  step "lease keep-alive --once \$L1 (revoked)" ctl lease keep-alive --once "$l1"
  step "put l/e 5 --lease=\$L1 (revoked)" ctl put l/e 5 --lease="$l1"
  step "lease grant 3 (\$L3, left to expire)" ctl lease grant 3
  l3=$(granted_lease)
  step "put l/exp soon --lease=\$L3" ctl put l/exp soon --lease="$l3"
  step "get l/exp" ctl get l/exp
  echo "## wait for \$L3 to expire (up to ${wait_s}s)"
  note_wait wait_keys l/exp 0
  step "get l/exp (expired)" ctl get l/exp
  step "lease timetolive \$L3 (expired)" ctl lease timetolive "$l3"
  step "get l/ --prefix -w json (revision after expiry)" ctl get l/ --prefix -w json
  step "lease revoke \$L2 (deletes l/d)" ctl lease revoke "$l2"
  step "get l/ --prefix --keys-only" ctl get l/ --prefix --keys-only
}

lock_steps() {
  local events=$work/lock-events one two
  : >"$events"
  timeout 60 "${ctl[@]}" lock compat-lock >"$work/lock-1" 2>&1 &
  one=$!
  echo "## lock: contender 1 acquires"
  note_wait wait_keys compat-lock/ 1
  note_wait wait_line "$work/lock-1" ""
  echo "contender 1: acquired" >>"$events"
  # Contender 2 runs a command while it holds the lock; the command logs to
  # the same event file, so the file shows the order of the two holders.
  # shellcheck disable=SC2016 # expanded by the sh that etcdctl runs
  LOCK_EVENTS=$events timeout 60 "${ctl[@]}" lock compat-lock -- sh -c \
    'echo "contender 2: acquired $ETCD_LOCK_KEY at revision $ETCD_LOCK_REV" | tee -a "$LOCK_EVENTS"' \
    >"$work/lock-2" 2>&1 &
  two=$!
  echo "## lock: contender 2 waits"
  note_wait wait_keys compat-lock/ 2
  step "get compat-lock/ --prefix --sort-by=CREATE --keys-only" \
    ctl get compat-lock/ --prefix --sort-by=CREATE --keys-only
  # Time for a broken lock to let contender 2 in early, which would put its
  # line before contender 1's release below.
  sleep 0.5
  echo "contender 1: releasing" >>"$events"
  echo "## lock: contender 1 output"
  stop_bg "$one"
  cat "$work/lock-1"
  echo "## lock: contender 2 output"
  local rc=0
  wait "$two" || rc=$?
  cat "$work/lock-2"
  echo "-> exit $rc"
  echo "## lock: event order"
  cat "$events"
  step "get compat-lock/ --prefix (both released)" ctl get compat-lock/ --prefix
}

elect_steps() {
  local observer one two
  timeout 60 "${ctl[@]}" elect -l compat-elect >"$work/elect-observer" 2>&1 &
  observer=$!
  timeout 60 "${ctl[@]}" elect compat-elect p1 >"$work/elect-1" 2>&1 &
  one=$!
  echo "## elect: p1 campaigns and wins; the observer sees it"
  note_wait wait_line "$work/elect-1" p1
  note_wait wait_line "$work/elect-observer" p1
  timeout 60 "${ctl[@]}" elect compat-elect p2 >"$work/elect-2" 2>&1 &
  two=$!
  echo "## elect: p2 campaigns and waits"
  note_wait wait_keys compat-elect/ 2
  step "get compat-elect/ --prefix --sort-by=CREATE" \
    ctl get compat-elect/ --prefix --sort-by=CREATE
  echo "## elect: p1 resigns (SIGTERM); p2 wins; the observer sees it"
  stop_bg "$one"
  note_wait wait_line "$work/elect-2" p2
  note_wait wait_line "$work/elect-observer" p2
  echo "## elect: p2 resigns (SIGTERM)"
  stop_bg "$two"
  note_wait wait_keys compat-elect/ 0
  echo "## elect: observer stops (SIGTERM)"
  stop_bg "$observer"
  echo "## elect: p1 output"
  cat "$work/elect-1"
  echo "## elect: p2 output"
  cat "$work/elect-2"
  echo "## elect: observer output"
  cat "$work/elect-observer"
}

cluster_steps() {
  step "member list -w table [unordered]" ctl member list -w table
  step "member list -w json [unordered]" ctl member list -w json
  # The member serving the first endpoint, with the peer URL it has.
  local member
  member=$(ctl member list -w json | python3 -c '
import json, sys
first = "http://" + sys.argv[1]
m = [m for m in json.load(sys.stdin)["members"] if first in m.get("clientURLs", [])][0]
print("%x %s" % (m["ID"], m["peerURLs"][0]))' "${endpoints%%,*}")
  step "member update with the member's own peer URL" ctl member update ${member% *} --peer-urls="${member#* }"
  step "endpoint status -w table" ctl endpoint status -w table
  step "endpoint status -w json" ctl endpoint status -w json
  step "endpoint health [unordered]" ctl endpoint health
  step "endpoint health -w table [unordered]" ctl endpoint health -w table
  step "endpoint health -w json [unordered]" ctl endpoint health -w json
  step "alarm list" ctl alarm list
}

maintenance_steps() {
  local first=${endpoints%%,*} rev
  step "snapshot save (all endpoints: refused)" ctl snapshot save snap.db
  rm -f snap.db
  step "snapshot save (first endpoint)" "$etcdctl" --endpoints "$first" snapshot save snap.db
  # `etcdctl snapshot status` opens the file as etcd's bbolt database;
  # calm's snapshot is its own format (it restores calm, not etcd), so the
  # scenario checks only that the download is accepted and saved.
  rev=$(field z/other Revision)
  step "get '' --prefix --keys-only --rev \$now-3" ctl get '' --prefix --keys-only --rev $((rev - 3))
  step "compaction \$now-3" ctl compaction $((rev - 3))
  step "get '' --prefix --keys-only --rev \$now-3 (at the compacted revision)" \
    ctl get '' --prefix --keys-only --rev $((rev - 3))
  step "get '' --prefix --rev \$now-4 (compacted)" ctl get '' --prefix --rev $((rev - 4))
  step "compaction \$now-3 again" ctl compaction $((rev - 3))
  step "compaction \$now+100 (future)" ctl compaction $((rev + 100))
  step "watch --prefix w/ --rev 2 (compacted)" timeout 20 "${ctl[@]}" watch --prefix w/ --rev 2
  step "compaction --physical \$now" ctl compaction --physical "$rev"
  step "defrag" ctl defrag
  step "alarm list (after defrag)" ctl alarm list
  step "get '' --prefix -w json (final state)" ctl get '' --prefix -w json
}

kv_steps
txn_steps
watch_steps
lease_steps
lock_steps
elect_steps
cluster_steps
maintenance_steps
