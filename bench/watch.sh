#!/usr/bin/env bash
# bench/watch.sh: what a watch (bento_watch) costs the writes to its table.
#
# Run as root from the project root after "make install":
#
#     bench/watch.sh
#
# It creates a throwaway PostgreSQL 15 cluster (owned by the postgres OS user,
# unix socket only, in a mktemp directory) with bento preloaded and its worker
# idle (no credentials: nothing leaves the machine, the events stay pending),
# and two identical tables, one watched and one not.  It measures
#
#   1. bulk INSERT: INSERT ... SELECT of 100,000 rows into each table;
#   2. bulk UPDATE: an UPDATE of the same 100,000 rows, when the watch also
#      covers UPDATE (changed columns with old and new values);
#   3. per statement: one-row INSERT transactions with pgbench;
#
# and, for reference, queueing the same 100,000 events row by row with
# SELECT bento_track(...) FROM generate_series(...).
#
# The watch is a typical one: bento_watch('bench.watched', 'order.created',
# 'email', fields => '{"first_name": "name", "plan": "plan"}'): default details
# (the table, the operation and the row as JSON) and the default external_id
# (from the primary key), so each event is validated, deduplicated and queued
# exactly as bento_track would.
#
# Everything is stopped and removed on exit.  Nothing here asserts a time
# limit; the script fails only when something does not work (the server does
# not start, or the events queued are not the events expected).
# Settings (environment):
#
#   BENCH_BULK_ROWS=100000       rows per bulk statement
#   BENCH_REPS=3                 alternating repetitions of each measurement (the median is reported)
#   BENCH_PGBENCH_TXNS=2000      pgbench transactions per run (-t)
#   BENCH_SYNC_COMMIT=off        synchronous_commit of the bench cluster
#   BENCH_KEEP=1                 keep the work directory (server log) after the run
#   PG_CONFIG=...                pg_config of the PostgreSQL to use
#
# The setup it shares with bench/run.sh (preconditions, work directory and
# cleanup, cluster, psql and arithmetic helpers) is in bench/lib.sh.
set -Eeuo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BULK_ROWS=${BENCH_BULK_ROWS:-100000}
REPS=${BENCH_REPS:-3}
PGB_TXNS=${BENCH_PGBENCH_TXNS:-2000}

# ---------------------------------------------------------------------------
# Preconditions
# ---------------------------------------------------------------------------
bench_preconditions
[ "$BULK_ROWS" -ge 1 ] && [ "$REPS" -ge 1 ] && [ "$PGB_TXNS" -ge 1 ] ||
	die "BENCH_* counts must be positive integers"

# ---------------------------------------------------------------------------
# Work directory, cleanup
# ---------------------------------------------------------------------------
bench_workdir /tmp/bento-bench-watch.XXXXXX

# ---------------------------------------------------------------------------
# PostgreSQL cluster: bento preloaded, its worker idle (no credentials; the
# API URL points at a closed loopback port besides), autovacuum off so that it
# does not run in the middle of a measurement.
# ---------------------------------------------------------------------------
bench_initdb "bento watch bench"
cat >>"$DATA/postgresql.conf" <<EOF
autovacuum = off
shared_preload_libraries = 'bento'
bento.database = 'postgres'
bento.api_url = 'http://127.0.0.1:9/api/v1'
EOF
bench_start

pg >/dev/null <<'EOF'
CREATE EXTENSION bento;
CREATE SCHEMA bench;
CREATE TABLE bench.plain (
    id          bigint PRIMARY KEY,
    email       text NOT NULL,
    name        text,
    plan        text,
    total       numeric(10,2) NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE bench.watched (LIKE bench.plain INCLUDING ALL);
SELECT bento_watch('bench.watched', 'order.created', 'email',
                   operations => '{insert,update}',
                   fields => '{"first_name": "name", "plan": "plan"}');
EOF

bench_banner "bento watch bench"
say "watch: $(pg -c "SELECT description FROM bento.watched WHERE operation = 'INSERT'")"
say ""

ROWS="g, 'user' || g || '@example.com', 'Name ' || g, CASE WHEN g % 3 = 0 THEN 'growth' ELSE 'starter' END, g % 1000 + 0.99"
declare -A SQL
SQL[plain]="INSERT INTO bench.plain (id, email, name, plan, total) SELECT $ROWS FROM generate_series(1, $BULK_ROWS) g"
SQL[watched]="INSERT INTO bench.watched (id, email, name, plan, total) SELECT $ROWS FROM generate_series(1, $BULK_ROWS) g"
# The same events, queued one bento_track call per row, for reference.
SQL[bento_track]="SELECT count(bento_track('order.created', 'user' || g || '@example.com',
    jsonb_build_object('first_name', 'Name ' || g, 'plan', CASE WHEN g % 3 = 0 THEN 'growth' ELSE 'starter' END),
    jsonb_build_object('table', 'bench.watched', 'operation', 'INSERT',
                       'row', jsonb_build_object('id', g, 'email', 'user' || g || '@example.com', 'name', 'Name ' || g,
                                                 'plan', CASE WHEN g % 3 = 0 THEN 'growth' ELSE 'starter' END,
                                                 'total', g % 1000 + 0.99, 'created_at', now())),
    'order.created:bench.watched:insert:' || g)) FROM generate_series(1, $BULK_ROWS) g"
SQL[plain_update]="UPDATE bench.plain SET total = total + 1"
SQL[watched_update]="UPDATE bench.watched SET total = total + 1"
declare -A EMPTY=([plain]="bench.plain" [watched]="bench.watched, bento.outbox, bento.dedupe"
	[bento_track]="bento.outbox, bento.dedupe")
declare -A TIMES=([plain]="" [watched]="" [bento_track]="" [plain_update]="" [watched_update]="")

# Time one statement with clock_timestamp() around it (commit included).
timed() {
	local sql=$1 out
	out=$(pg <<EOF
SELECT clock_timestamp() AS t0 \gset
$sql \g /dev/null
SELECT extract(epoch FROM clock_timestamp() - :'t0'::timestamptz);
EOF
) || die "statement failed: $out"
	printf '%s' "$out"
}

# Check what a run queued: the number of events, all pending, each key once.
check_outbox() {
	local want=$1 what=$2 got
	got=$(pg -c "SELECT count(*) || ' ' || count(*) FILTER (WHERE status = 'pending') || ' ' || count(DISTINCT external_id) FROM bento.outbox")
	[ "$got" = "$want $want $want" ] ||
		die "$what: bento.outbox holds (rows, pending, distinct external_ids) = ($got), expected $want of each"
}

# ---------------------------------------------------------------------------
# 1. and 2. bulk INSERT, then UPDATE, alternating plain and watched
# ---------------------------------------------------------------------------
for r in $(seq "$REPS"); do
	for v in plain watched bento_track; do
		pg -c "TRUNCATE ${EMPTY[$v]}; CHECKPOINT;" >/dev/null
		TIMES[$v]="${TIMES[$v]} $(timed "${SQL[$v]}")"
		case $v in
			watched) check_outbox "$BULK_ROWS" "bulk INSERT into the watched table" ;;
			bento_track) check_outbox "$BULK_ROWS" "bento_track over the same rows" ;;
		esac
	done
	# Both tables still hold their rows (the bento_track run emptied only the
	# outbox): update every row of each.
	pg -c "TRUNCATE bento.outbox, bento.dedupe" >/dev/null
	for v in plain_update watched_update; do
		pg -c "CHECKPOINT" >/dev/null
		TIMES[$v]="${TIMES[$v]} $(timed "${SQL[$v]}")"
	done
	check_outbox "$BULK_ROWS" "bulk UPDATE of the watched table"
done

T_PLAIN=$(median <<<"${TIMES[plain]}")
T_WATCHED=$(median <<<"${TIMES[watched]}")
T_TRACK=$(median <<<"${TIMES[bento_track]}")
T_UPLAIN=$(median <<<"${TIMES[plain_update]}")
T_UWATCHED=$(median <<<"${TIMES[watched_update]}")
say "== 1. bulk INSERT ... SELECT of $BULK_ROWS rows, median of $REPS alternating runs (emptied tables, after a CHECKPOINT):"
say "$(calc '  unwatched table            %6.3f s = %7.0f rows/s' "$T_PLAIN, $BULK_ROWS / $T_PLAIN")   runs:${TIMES[plain]}"
say "$(calc '  watched table              %6.3f s = %7.0f rows/s' "$T_WATCHED, $BULK_ROWS / $T_WATCHED")   runs:${TIMES[watched]}"
say "$(calc '  watched / unwatched = %.2f   (%.2f us per row for the event: build, validate, dedupe, queue)' "$T_WATCHED / $T_PLAIN, 1e6 * ($T_WATCHED - $T_PLAIN) / $BULK_ROWS")"
say "$(calc '  (for reference: the same events by SELECT bento_track(...) per row: %.3f s, without writing the rows)' "$T_TRACK")"
say "== 2. bulk UPDATE of the same $BULK_ROWS rows (the watch covers UPDATE too: details carry the changed columns):"
say "$(calc '  unwatched table            %6.3f s' "$T_UPLAIN")   runs:${TIMES[plain_update]}"
say "$(calc '  watched table              %6.3f s' "$T_UWATCHED")   runs:${TIMES[watched_update]}"
say "$(calc '  watched / unwatched = %.2f   (%.2f us per row)' "$T_UWATCHED / $T_UPLAIN, 1e6 * ($T_UWATCHED - $T_UPLAIN) / $BULK_ROWS")"

# ---------------------------------------------------------------------------
# 3. per statement: one-row INSERT transactions
# ---------------------------------------------------------------------------
pg -c "CREATE SEQUENCE bench.ids START 10000000" >/dev/null
for t in plain watched; do
	cat >"$WORK/$t.sql" <<EOF
INSERT INTO bench.$t (id, email, name, plan, total) SELECT n, 'user' || n || '@example.com', 'Name ' || n, 'starter', 9.99 FROM nextval('bench.ids') n;
EOF
done
chown postgres: "$WORK/plain.sql" "$WORK/watched.sql"
declare -A TPS=([plain]="" [watched]="")
for r in $(seq "$REPS"); do
	for t in plain watched; do
		pg -c "CHECKPOINT" >/dev/null
		tps=$(pgbench_tps "$t" "$WORK/$t.sql" "$PGB_TXNS")
		TPS[$t]="${TPS[$t]} $tps"
	done
done
TPS_PLAIN=$(median <<<"${TPS[plain]}")
TPS_WATCHED=$(median <<<"${TPS[watched]}")
QUEUED=$(pg -c "SELECT count(*) FROM bento.outbox WHERE external_id LIKE '%:insert:%' AND status = 'pending'")
[ "$QUEUED" -eq $((REPS * PGB_TXNS)) ] || die "the one-row inserts queued $QUEUED events, expected $((REPS * PGB_TXNS))"
say "== 3. per statement: pgbench -n -t $PGB_TXNS -c 1, one one-row INSERT per transaction, median of $REPS alternating runs:"
say "$(calc '  unwatched table     %8.0f tps (%6.1f us/txn)' "$TPS_PLAIN, 1e6 / $TPS_PLAIN")   runs:${TPS[plain]}"
say "$(calc '  watched table       %8.0f tps (%6.1f us/txn)' "$TPS_WATCHED, 1e6 / $TPS_WATCHED")   runs:${TPS[watched]}"
say "$(calc '  watched / unwatched = %.2f (time per transaction; %.1f us more per statement)' "$TPS_PLAIN / $TPS_WATCHED, 1e6 / $TPS_WATCHED - 1e6 / $TPS_PLAIN")"
say "verified: every watched write queued one pending event per row, each external_id once; the worker had no credentials"
