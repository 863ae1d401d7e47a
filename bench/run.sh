#!/usr/bin/env bash
# bench/run.sh: throughput benchmark of the bento extension.
#
# Run as root from the project root after "make install":
#
#     bench/run.sh
#
# It creates a throwaway PostgreSQL 15 cluster (owned by the postgres OS user,
# unix socket only, in a mktemp directory) and a mock Bento (mock/bento_mock.py),
# then measures
#
#   1. drain rate: how fast the worker empties a backlog of 100,000 events
#      into the mock (no rate limit, batches of 1000);
#   2. enqueue cost: bento_track() against a plain INSERT of the same row into
#      an identical table, in bulk (INSERT ... SELECT vs SELECT bento_track(...)
#      over generate_series) and per call (pgbench, one-row transactions).
#
# Everything is stopped and removed on exit.  See bench/README.md for how to
# read the output.  Settings (environment):
#
#   BENCH_EVENTS=100000          backlog size for the drain (at least 100000 for
#                                the reported figure)
#   BENCH_BULK_ROWS=100000       rows per bulk enqueue measurement
#   BENCH_REPS=3                 alternating repetitions of each enqueue measurement
#   BENCH_PGBENCH_TXNS=2000      pgbench transactions per run (-t)
#   BENCH_DRAIN_TIMEOUT=600      seconds before the drain counts as failed
#   BENCH_SYNC_COMMIT=off        synchronous_commit of the bench cluster
#   BENCH_KEEP=1                 keep the work directory (logs) after the run
#   BENCH_AUTO_EXPLAIN=1         log EXPLAIN ANALYZE of statements over 10 ms during
#                                the drain (server.log; use with BENCH_KEEP=1); it
#                                slows the drain down, so the figure is not comparable
#   PG_CONFIG=...                pg_config of the PostgreSQL to use
#
# The setup it shares with bench/watch.sh (preconditions, work directory and
# cleanup, cluster, psql and arithmetic helpers) is in bench/lib.sh.
set -Eeuo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

EVENTS=${BENCH_EVENTS:-100000}
BULK_ROWS=${BENCH_BULK_ROWS:-100000}
REPS=${BENCH_REPS:-3}
PGB_TXNS=${BENCH_PGBENCH_TXNS:-2000}
DRAIN_TIMEOUT=${BENCH_DRAIN_TIMEOUT:-600}
AUTO_EXPLAIN=${BENCH_AUTO_EXPLAIN:-0}
PYTHON=${PYTHON:-$(command -v python3 || echo /usr/bin/python3)}

# Credentials the mock demands and the worker is given (not secrets: a mock).
SITE_UUID=bench-site-0000
PUB_KEY=bench-publishable
SECRET_KEY=bench-secret

# ---------------------------------------------------------------------------
# Preconditions
# ---------------------------------------------------------------------------
bench_preconditions
[ -f "$ROOT/mock/bento_mock.py" ] || die "$ROOT/mock/bento_mock.py not found"
[ -x "$PYTHON" ] || die "python3 not found; set PYTHON"
[ "$EVENTS" -ge 1 ] && [ "$BULK_ROWS" -ge 1 ] && [ "$REPS" -ge 1 ] && [ "$PGB_TXNS" -ge 1 ] ||
	die "BENCH_* counts must be positive integers"

PGSS=0
[ -f "$PKGLIBDIR/pg_stat_statements.so" ] && [ -f "$SHAREDIR/extension/pg_stat_statements.control" ] && PGSS=1

# ---------------------------------------------------------------------------
# Work directory, cleanup (the mock is stopped after the server)
# ---------------------------------------------------------------------------
MOCK_PID=
bench_cleanup_extra() {
	if [ -n "$MOCK_PID" ] && kill -0 "$MOCK_PID" 2>/dev/null; then
		kill -TERM "$MOCK_PID" 2>/dev/null
		for _ in $(seq 50); do kill -0 "$MOCK_PID" 2>/dev/null || break; sleep 0.1; done
		kill -0 "$MOCK_PID" 2>/dev/null && kill -KILL "$MOCK_PID" 2>/dev/null
		wait "$MOCK_PID" 2>/dev/null
	fi
}
bench_workdir /tmp/bento-bench.XXXXXX

# GET /_mock/stats (or another read-only mock path) and print selected keys.
mock_get() {
	"$PYTHON" - "$MOCK_URL" "$@" <<'EOF'
import json, sys, urllib.request
base, path, *keys = sys.argv[1:]
with urllib.request.urlopen(base + path, timeout=60) as r:
    data = json.load(r)
print(" ".join(str(data[k]) for k in keys))
EOF
}

# ---------------------------------------------------------------------------
# Mock Bento
# ---------------------------------------------------------------------------
"$PYTHON" "$ROOT/mock/bento_mock.py" --host 127.0.0.1 --port 0 --port-file "$WORK/mock.port" --quiet \
	--publishable-key "$PUB_KEY" --secret-key "$SECRET_KEY" --site-uuid "$SITE_UUID" \
	>"$WORK/mock.log" 2>&1 &
MOCK_PID=$!
for _ in $(seq 100); do
	[ -s "$WORK/mock.port" ] && break
	kill -0 "$MOCK_PID" 2>/dev/null || die "the mock exited at start: $(cat "$WORK/mock.log")"
	sleep 0.1
done
[ -s "$WORK/mock.port" ] || die "the mock did not write its port file within 10 s"
MOCK_PORT=$(tr -d '[:space:]' <"$WORK/mock.port")
MOCK_URL=http://127.0.0.1:$MOCK_PORT
mock_get /_mock/stats requests >/dev/null || die "the mock does not answer GET /_mock/stats"

# ---------------------------------------------------------------------------
# PostgreSQL cluster
# ---------------------------------------------------------------------------
bench_initdb "bento bench"

preload=bento
[ "$PGSS" -eq 1 ] && preload="$preload,pg_stat_statements"
[ "$AUTO_EXPLAIN" -eq 1 ] && preload="$preload,auto_explain"
cat >>"$DATA/postgresql.conf" <<EOF
shared_preload_libraries = '$preload'
bento.database = 'postgres'
bento.api_url = '$MOCK_URL/api/v1'
EOF
[ "$PGSS" -eq 1 ] && echo "pg_stat_statements.track = 'all'" >>"$DATA/postgresql.conf"
if [ "$AUTO_EXPLAIN" -eq 1 ]; then
	# Plans of the worker's slow statements during the drain, in the server log.
	cat >>"$DATA/postgresql.conf" <<EOF
auto_explain.log_min_duration = '10ms'
auto_explain.log_analyze = on
auto_explain.log_buffers = on
auto_explain.log_nested_statements = on
EOF
fi

bench_start

pg -c "CREATE EXTENSION bento" >/dev/null
[ "$PGSS" -eq 1 ] && pg -c "CREATE EXTENSION pg_stat_statements" >/dev/null

for _ in $(seq 300); do
	[ "$(pg -c "SELECT worker_running FROM bento.status")" = t ] && break
	sleep 0.1
done
[ "$(pg -c "SELECT worker_running FROM bento.status")" = t ] || die "the bento worker is not running after 30 s"

# Waits until no event is pending or sending (the partial index the worker
# claims from makes the check cheap), committing between polls so that it
# holds no snapshot back; returns the clock_timestamp() of the first poll that
# saw an empty queue.
pg >/dev/null <<'EOF'
CREATE SCHEMA bench;
CREATE PROCEDURE bench.wait_drained(timeout_s double precision,
                                    INOUT drained_at timestamptz DEFAULT NULL,
                                    INOUT polls integer DEFAULT 0)
LANGUAGE plpgsql AS $$
DECLARE
    deadline timestamptz := clock_timestamp() + make_interval(secs => timeout_s);
    s record;
BEGIN
    LOOP
        polls := polls + 1;
        IF NOT EXISTS (SELECT 1 FROM bento.outbox o WHERE o.status IN ('pending', 'sending')) THEN
            drained_at := clock_timestamp();
            RETURN;
        END IF;
        COMMIT;
        IF clock_timestamp() > deadline THEN
            SELECT * INTO s FROM bento.status;
            RAISE EXCEPTION 'the outbox did not drain within % s', timeout_s
                USING DETAIL = format('pending=%s sending=%s sent=%s dead=%s last_delivery_outcome=%s last_http_status=%s last_transport_error=%s worker_running=%s',
                                      s.pending, s.sending, s.sent, s.dead, s.last_delivery_outcome,
                                      s.last_http_status, s.last_transport_error, s.worker_running);
        END IF;
        PERFORM pg_sleep(0.05);
        COMMIT;
    END LOOP;
END
$$;
EOF

bench_banner "bento bench"
say ""

# ---------------------------------------------------------------------------
# 1. Drain rate
# ---------------------------------------------------------------------------
say "== 1. drain rate (worker -> mock Bento at $MOCK_URL, no rate limit, bento.batch_size = 1000)"

# The worker idles: bento.api_url points at the mock but no credentials are set.
ENQ=$(pg <<EOF
SELECT clock_timestamp() AS t0 \gset
SELECT count(bento_track('bench.event', 'user' || g || '@example.com',
                         jsonb_build_object('plan', 'growth', 'n', g),
                         jsonb_build_object('order', g), 'bench-' || g))
FROM generate_series(1, $EVENTS) g \g /dev/null
SELECT extract(epoch FROM clock_timestamp() - :'t0'::timestamptz);
EOF
)
read -r PENDING OTHER <<<"$(pg -c "SELECT pending, sending + sent + dead FROM bento.status" | tr '|' ' ')"
[ "$PENDING" -eq "$EVENTS" ] && [ "$OTHER" -eq 0 ] ||
	die "after the enqueue bento.status shows pending=$PENDING and $OTHER other rows; expected $EVENTS pending (did the worker send while unconfigured?)"
[ "$(mock_get /_mock/stats requests)" -eq 0 ] || die "the mock received requests before the worker was configured"
say "backlog: $EVENTS events queued by bento_track in $(calc %.2f "$ENQ") s (worker idle, no credentials)"

# Per-process CPU time (utime + stime, in clock ticks) for the drain profile.
WORKER_PID=$(pg -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'bento'")
TICKS=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# The whole cluster: the postmaster, its exited children (reaped: cutime and
# cstime) and its live children.
cpu_all_pg_ticks() {
	local sum p
	sum=$(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$PM_PID/stat")
	for p in $(pgrep -P "$PM_PID" || true); do
		sum=$((sum + $(cpu_ticks "$p")))
	done
	echo "$sum"
}
PM_PID=$(head -n 1 "$DATA/postmaster.pid")
W0=$(cpu_ticks "$WORKER_PID"); M0=$(cpu_ticks "$MOCK_PID"); P0=$(cpu_all_pg_ticks)
[ "$PGSS" -eq 1 ] && pg -c "SELECT pg_stat_statements_reset()" >/dev/null

DRAIN_OUT=$(pg 2>&1 <<EOF
ALTER SYSTEM SET bento.site_uuid = '$SITE_UUID';
ALTER SYSTEM SET bento.publishable_key = '$PUB_KEY';
ALTER SYSTEM SET bento.secret_key = '$SECRET_KEY';
ALTER SYSTEM SET bento.max_requests_per_minute = 0;
ALTER SYSTEM SET bento.batch_size = 1000;
SELECT clock_timestamp() AS t0, pg_reload_conf() AS reloaded \gset
CALL bench.wait_drained($DRAIN_TIMEOUT) \gset
SELECT extract(epoch FROM :'drained_at'::timestamptz - :'t0'::timestamptz) || ' ' || :polls;
EOF
) || die "drain: $(printf '%s' "$DRAIN_OUT" | tr '\n' ' ')"
read -r DRAIN_S POLLS <<<"$DRAIN_OUT"
W1=$(cpu_ticks "$WORKER_PID"); M1=$(cpu_ticks "$MOCK_PID"); P1=$(cpu_all_pg_ticks)
if [ "$PGSS" -eq 1 ]; then
	# Before the checks below add statements of their own; the bench's polling
	# statement is left out.
	PGSS_OUT=$(pg <<'EOF'
SELECT format('%8s ms %5s calls %8s ms/call  %s', round((total_exec_time + total_plan_time)::numeric, 1), calls,
              round(((total_exec_time + total_plan_time) / calls)::numeric, 2),
              left(regexp_replace(query, '\s+', ' ', 'g'), 80))
FROM pg_stat_statements
WHERE query !~* 'wait_drained|pg_reload_conf|ALTER SYSTEM|pg_stat_statements|pg_sleep|^NOT EXISTS'
ORDER BY total_exec_time + total_plan_time DESC
LIMIT 5;
EOF
)
fi

# Verify: bento.status, every row sent, every delivery delivered, and the mock
# holds each event exactly once.
read -r ST_PENDING ST_SENDING ST_SENT ST_DEAD <<<"$(pg -c "SELECT pending, sending, sent, dead FROM bento.status" | tr '|' ' ')"
[ "$ST_PENDING" -eq 0 ] && [ "$ST_SENDING" -eq 0 ] && [ "$ST_SENT" -eq "$EVENTS" ] && [ "$ST_DEAD" -eq 0 ] ||
	die "after the drain bento.status shows pending=$ST_PENDING sending=$ST_SENDING sent=$ST_SENT dead=$ST_DEAD; expected sent=$EVENTS only"
read -r D_COUNT D_DELIVERED D_EVENTS <<<"$(pg -c "SELECT count(*), count(*) FILTER (WHERE outcome = 'delivered'), coalesce(sum(event_count), 0) FROM bento.deliveries" | tr '|' ' ')"
[ "$D_COUNT" -eq "$D_DELIVERED" ] && [ "$D_EVENTS" -eq "$EVENTS" ] ||
	die "bento.deliveries: $D_COUNT requests, $D_DELIVERED delivered, $D_EVENTS events; expected all delivered, $EVENTS events ($(pg -c "SELECT string_agg(DISTINCT outcome || ' ' || coalesce(http_status::text, transport_error), ', ') FROM bento.deliveries WHERE outcome <> 'delivered'"))"
read -r M_REQ M_EV M_INFLIGHT <<<"$(mock_get /_mock/stats requests events in_flight)"
[ "$M_EV" -eq "$EVENTS" ] || die "the mock received $M_EV events, expected exactly $EVENTS"
[ "$M_REQ" -eq "$D_COUNT" ] && [ "$M_INFLIGHT" -eq 0 ] ||
	die "the mock saw $M_REQ requests ($M_INFLIGHT in flight), bento.deliveries has $D_COUNT"
DISTINCT=$("$PYTHON" - "$MOCK_URL" <<'EOF'
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/_mock/events", timeout=120) as r:
    events = json.load(r)
print(len({e.get("email") for e in events}))
EOF
)
[ "$DISTINCT" -eq "$EVENTS" ] || die "the mock holds $M_EV events but only $DISTINCT distinct emails"

say "$(calc 'drain: %d events in %.2f s = %.0f events/s' "$EVENTS, $DRAIN_S, $EVENTS / $DRAIN_S") ($M_REQ requests of $(calc %.0f "$EVENTS / $M_REQ") events, $(calc %.1f "$M_REQ / $DRAIN_S") requests/s; from pg_reload_conf() to an empty queue, polled every 50 ms, $POLLS polls)"
say "verified: bento.status pending=0 sending=0 sent=$ST_SENT dead=0; $D_DELIVERED/$D_COUNT deliveries 'delivered'; mock received exactly $M_EV events ($DISTINCT distinct emails)"

# Where the time went, per request: the HTTP exchange as timed by the worker,
# and the rest of the cycle (claim, JSON, record, commits).
PROFILE=$(pg <<'EOF'
WITH d AS (
    SELECT duration_ms, started_at, finished_at,
           extract(epoch FROM finished_at - lag(finished_at) OVER (ORDER BY id)) * 1000 AS cycle_ms
    FROM bento.deliveries)
SELECT format('%s %s %s %s',
              round(avg(cycle_ms)::numeric, 1),
              round(avg(duration_ms)::numeric, 1),
              round(percentile_cont(0.5) WITHIN GROUP (ORDER BY cycle_ms)::numeric, 1),
              round(max(cycle_ms)::numeric, 1))
FROM d;
EOF
)
read -r CYCLE_MS HTTP_MS CYCLE_P50 CYCLE_MAX <<<"$PROFILE"
say "$(calc 'profile: per request %.1f ms (median %.1f, max %.1f) = HTTP round trip %.1f ms (%.0f%%) + worker/database %.1f ms' \
	"$CYCLE_MS, $CYCLE_P50, $CYCLE_MAX, $HTTP_MS, 100 * $HTTP_MS / $CYCLE_MS, $CYCLE_MS - $HTTP_MS")"
say "$(calc 'profile: CPU during the drain: bento worker %.2f s, all of PostgreSQL %.2f s, mock %.2f s (wall %.2f s)' \
	"($W1 - $W0) / $TICKS, ($P1 - $P0) / $TICKS, ($M1 - $M0) / $TICKS, $DRAIN_S")"
if [ "$PGSS" -eq 1 ]; then
	say "profile: the worker's statements by total time during the drain (pg_stat_statements, track = all):"
	printf '%s\n' "$PGSS_OUT" | sed 's/^/    /'
fi
say ""

# ---------------------------------------------------------------------------
# 2. bento_track cost against a plain INSERT
# ---------------------------------------------------------------------------
say "== 2. bento_track cost against a plain INSERT of the same row"

# The worker idles again (no credentials); autovacuum is off so that it does
# not run in the middle of a measurement; nothing is tracked by
# pg_stat_statements.
REQ_BEFORE=$(mock_get /_mock/stats requests)
{
	cat <<'EOF'
ALTER SYSTEM RESET bento.site_uuid;
ALTER SYSTEM RESET bento.publishable_key;
ALTER SYSTEM RESET bento.secret_key;
ALTER SYSTEM SET autovacuum = off;
EOF
	[ "$PGSS" -eq 1 ] && echo "ALTER SYSTEM SET pg_stat_statements.track = 'none';"
	[ "$AUTO_EXPLAIN" -eq 1 ] && echo "ALTER SYSTEM SET auto_explain.log_min_duration = -1;"
	echo "SELECT pg_reload_conf();"
} | pg >/dev/null
sleep 1

# The table an application would write itself: the outbox's columns, types,
# defaults, identity primary key and indexes, plus a unique index on
# external_id for its deduplication (bento keeps those keys in bento.dedupe).
pg >/dev/null <<'EOF'
CREATE TABLE bench.plain (LIKE bento.outbox INCLUDING ALL);
CREATE UNIQUE INDEX ON bench.plain (external_id) WHERE external_id IS NOT NULL;
EOF

BULK_COLS="'bench.event', 'user' || g || '@example.com', jsonb_build_object('plan', 'growth', 'n', g), jsonb_build_object('order', g), 'bench-' || g"
declare -A BULK
BULK[insert]="INSERT INTO bench.plain (type, email, fields, details, external_id, occurred_at) SELECT $BULK_COLS, now() FROM generate_series(1, $BULK_ROWS) g"
BULK[insert_on_conflict]="WITH i AS (INSERT INTO bench.plain (type, email, fields, details, external_id, occurred_at) SELECT $BULK_COLS, now() FROM generate_series(1, $BULK_ROWS) g ON CONFLICT (external_id) WHERE external_id IS NOT NULL DO NOTHING RETURNING id) SELECT count(*) FROM i"
BULK[bento_track]="SELECT count(bento_track($BULK_COLS)) FROM generate_series(1, $BULK_ROWS) g"
declare -A TABLE=([insert]=bench.plain [insert_on_conflict]=bench.plain [bento_track]=bento.outbox)
# What to empty before a run: bento_track also keeps each external_id in bento.dedupe.
declare -A EMPTY=([insert]=bench.plain [insert_on_conflict]=bench.plain [bento_track]="bento.outbox, bento.dedupe")
declare -A TIMES=([insert]="" [insert_on_conflict]="" [bento_track]="")

# One run: empty table, checkpoint, time the statement with clock_timestamp()
# around it (commit included), check the row count.
bulk_run() {
	local v=$1 out
	out=$(pg <<EOF
TRUNCATE ${EMPTY[$v]};
CHECKPOINT;
SELECT clock_timestamp() AS t0 \gset
${BULK[$v]} \g /dev/null
SELECT extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) || ' ' || (SELECT count(*) FROM ${TABLE[$v]});
EOF
) || die "bulk $v run failed: $out"
	read -r secs rows <<<"$out"
	[ "$rows" -eq "$BULK_ROWS" ] || die "bulk $v inserted $rows rows, expected $BULK_ROWS"
	TIMES[$v]="${TIMES[$v]} $secs"
}
for r in $(seq "$REPS"); do
	for v in insert bento_track insert_on_conflict; do bulk_run "$v"; done
done
T_INS=$(median <<<"${TIMES[insert]}")
T_OC=$(median <<<"${TIMES[insert_on_conflict]}")
T_TRK=$(median <<<"${TIMES[bento_track]}")
say "bulk, $BULK_ROWS rows in one statement, median of $REPS alternating runs (each into an emptied table, after a CHECKPOINT):"
say "$(calc '  INSERT ... SELECT                       %6.3f s = %7.0f rows/s' "$T_INS, $BULK_ROWS / $T_INS")   runs:${TIMES[insert]}"
say "$(calc '  SELECT bento_track(...)                 %6.3f s = %7.0f rows/s' "$T_TRK, $BULK_ROWS / $T_TRK")   runs:${TIMES[bento_track]}"
say "$(calc '  (for reference: INSERT ... ON CONFLICT DO NOTHING RETURNING id %.3f s = %.0f rows/s)' "$T_OC, $BULK_ROWS / $T_OC")"
say "$(calc '  bento_track / INSERT = %.2f   (%.2f us per row more than the INSERT)' "$T_TRK / $T_INS, 1e6 * ($T_TRK - $T_INS) / $BULK_ROWS")"

# Per call: one-row transactions with pgbench, one client.  external_id is
# unique per transaction: client id + the transaction's own xid.
cat >"$WORK/insert.sql" <<'EOF'
\set n random(1, 1000000000)
INSERT INTO bench.plain (type, email, fields, details, external_id, occurred_at) VALUES ('bench.event', 'user' || :n || '@example.com', jsonb_build_object('plan', 'growth', 'n', :n), jsonb_build_object('order', :n), 'pgb-' || :client_id || '-' || pg_current_xact_id(), now());
EOF
cat >"$WORK/track.sql" <<'EOF'
\set n random(1, 1000000000)
SELECT bento_track('bench.event', 'user' || :n || '@example.com', jsonb_build_object('plan', 'growth', 'n', :n), jsonb_build_object('order', :n), 'pgb-' || :client_id || '-' || pg_current_xact_id());
EOF
chown postgres: "$WORK/insert.sql" "$WORK/track.sql"
declare -A TPS=([insert]="" [bento_track]="")
declare -A SCRIPT=([insert]=insert.sql [bento_track]=track.sql)
pgbench_run() {
	local v=$1 tps rows
	pg -c "TRUNCATE ${EMPTY[$v]}; CHECKPOINT;" >/dev/null
	tps=$(pgbench_tps "$v" "$WORK/${SCRIPT[$v]}" "$PGB_TXNS")
	rows=$(pg -c "SELECT count(*) FROM ${TABLE[$v]}")
	[ "$rows" -eq "$PGB_TXNS" ] || die "pgbench $v left $rows rows, expected $PGB_TXNS"
	TPS[$v]="${TPS[$v]} $tps"
}
for r in $(seq "$REPS"); do
	for v in insert bento_track; do pgbench_run "$v"; done
done
TPS_INS=$(median <<<"${TPS[insert]}")
TPS_TRK=$(median <<<"${TPS[bento_track]}")
say "per call, pgbench -n -t $PGB_TXNS -c 1 (simple protocol), one row per transaction, median of $REPS alternating runs:"
say "$(calc '  INSERT ... VALUES        %8.0f tps (%6.1f us/txn)' "$TPS_INS, 1e6 / $TPS_INS")   runs:${TPS[insert]}"
say "$(calc '  SELECT bento_track(...)  %8.0f tps (%6.1f us/txn)' "$TPS_TRK, 1e6 / $TPS_TRK")   runs:${TPS[bento_track]}"
say "$(calc '  bento_track / INSERT = %.2f (time per transaction; %.1f us more per call)' "$TPS_INS / $TPS_TRK, 1e6 / $TPS_TRK - 1e6 / $TPS_INS")"

# The worker must have stayed idle: no request reached the mock, no row left 'pending'.
REQ_AFTER=$(mock_get /_mock/stats requests)
NOT_PENDING=$(pg -c "SELECT count(*) FROM bento.outbox WHERE status <> 'pending'")
[ "$REQ_AFTER" -eq "$REQ_BEFORE" ] && [ "$NOT_PENDING" -eq 0 ] ||
	die "the worker was not idle during part 2: the mock got $((REQ_AFTER - REQ_BEFORE)) requests, $NOT_PENDING rows left 'pending'"
say "the worker was idle during part 2 (credentials unset; the mock got no request); autovacuum off, synchronous_commit=$SYNC_COMMIT"
