# bench/lib.sh: what bench/run.sh and bench/watch.sh share.  Sourced, not run:
#
#     set -Eeuo pipefail
#     . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Sourcing only defines ROOT, the settings below and the functions; the scripts
# call the functions in this order:
#
#   bench_preconditions            root, the postgres OS user, runuser, pg_config,
#                                  initdb/pg_ctl/psql/pgbench, bento installed;
#                                  sets BINDIR, PKGLIBDIR, SHAREDIR
#   bench_workdir TEMPLATE         mktemp -d TEMPLATE, readable by postgres; sets
#                                  WORK, DATA, SOCK, LOG, PORT; installs the ERR,
#                                  EXIT, INT and TERM traps; cd "$WORK"
#   bench_initdb TITLE             initdb, then the cluster settings both scripts
#                                  use (socket only, synchronous_commit) under
#                                  "# --- TITLE ---"; the script appends its own
#   bench_start                    pg_ctl start (the cleanup stops it from then on)
#   bench_banner TITLE             "TITLE: PostgreSQL ..., N CPUs, bento REV, ..."
#
# and then pg, calc, median and pgbench_tps as they need them.  A script that
# has more to stop on exit (run.sh: the mock) defines bench_cleanup_extra; it
# runs after the server is stopped and before the work directory is removed.
#
# Settings read here (environment; each script documents them too):
#
#   BENCH_SYNC_COMMIT=off        synchronous_commit of the bench cluster
#   BENCH_KEEP=1                 keep the work directory (logs) after the run
#   BENCH_PORT=...               port number (names the unix socket only)
#   PG_CONFIG=...                pg_config of the PostgreSQL to use

SYNC_COMMIT=${BENCH_SYNC_COMMIT:-off}
PG_CONFIG=${PG_CONFIG:-$(command -v pg_config || echo /usr/lib/postgresql/15/bin/pg_config)}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { printf '%s\n' "$*"; }
note() { printf 'bench: %s\n' "$*" >&2; }
die() {
	printf 'bench: FAILED: %s\n' "$*" >&2
	exit 1
}

# ---------------------------------------------------------------------------
# Preconditions
# ---------------------------------------------------------------------------
bench_preconditions() {
	local b
	[ "$(id -u)" -eq 0 ] || die "run as root (the script drops to the postgres OS user itself)"
	id postgres >/dev/null 2>&1 || die "there is no postgres OS user"
	command -v runuser >/dev/null || die "runuser not found (util-linux)"
	[ -x "$PG_CONFIG" ] || die "pg_config not found; set PG_CONFIG"
	BINDIR=$("$PG_CONFIG" --bindir)
	PKGLIBDIR=$("$PG_CONFIG" --pkglibdir)
	SHAREDIR=$("$PG_CONFIG" --sharedir)
	for b in initdb pg_ctl psql pgbench; do
		[ -x "$BINDIR/$b" ] || die "$BINDIR/$b not found (pgbench is in postgresql-contrib)"
	done
	[ -f "$PKGLIBDIR/bento.so" ] && [ -f "$SHAREDIR/extension/bento.control" ] ||
		die "bento is not installed in $PKGLIBDIR; run 'make && make install' first"
}

# ---------------------------------------------------------------------------
# Work directory, cleanup
# ---------------------------------------------------------------------------
SERVER_STARTED=0
FAILED_CMD=

# The failing command, for the cleanup's note; named by its file when it is
# not the script itself (a function of this file).
on_err() {
	FAILED_CMD="line $1: $2"
	[ "${BASH_SOURCE[1]}" = "${BASH_SOURCE[-1]}" ] || FAILED_CMD="${BASH_SOURCE[1]##*/} $FAILED_CMD"
}

# What else to stop on exit; a script redefines it.
bench_cleanup_extra() { :; }

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +e
	if [ "$rc" -ne 0 ]; then
		[ -n "$FAILED_CMD" ] && note "failed command ($FAILED_CMD)"
		if [ -s "$LOG" ]; then
			note "last lines of the server log ($LOG):"
			tail -n 25 "$LOG" | sed 's/^/    /' >&2
		fi
	fi
	if [ "$SERVER_STARTED" -eq 1 ]; then
		runuser -u postgres -- "$BINDIR/pg_ctl" -D "$DATA" -m fast -w -t 30 stop >/dev/null 2>&1 ||
			runuser -u postgres -- "$BINDIR/pg_ctl" -D "$DATA" -m immediate -w -t 30 stop >/dev/null 2>&1
	fi
	bench_cleanup_extra
	if [ "${BENCH_KEEP:-0}" = 1 ]; then
		note "work directory kept: $WORK"
	else
		rm -rf "$WORK"
	fi
	exit "$rc"
}

bench_workdir() {
	WORK=$(mktemp -d "$1")
	chmod 755 "$WORK"
	mkdir "$WORK/sock"
	chown -R postgres: "$WORK"
	DATA=$WORK/data
	SOCK=$WORK/sock
	LOG=$WORK/server.log
	PORT=${BENCH_PORT:-$((20000 + RANDOM % 20000))}	# names the socket only: listen_addresses = ''

	trap 'on_err "$LINENO" "$BASH_COMMAND"' ERR
	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM

	cd "$WORK" || die "cannot enter $WORK"	# readable by postgres, whatever the caller's directory
}

# ---------------------------------------------------------------------------
# PostgreSQL cluster
# ---------------------------------------------------------------------------
bench_initdb() {
	runuser -u postgres -- "$BINDIR/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --locale=C --no-sync \
		>"$WORK/initdb.log" 2>&1 || die "initdb failed: $(tail -n 5 "$WORK/initdb.log")"
	cat >>"$DATA/postgresql.conf" <<EOF

# --- $1 ---
listen_addresses = ''
port = $PORT
unix_socket_directories = '$SOCK'
max_connections = 20
synchronous_commit = $SYNC_COMMIT
EOF
}

bench_start() {
	runuser -u postgres -- "$BINDIR/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start >/dev/null ||
		die "the server did not start"
	SERVER_STARTED=1
}

# psql as postgres on the bench cluster: tuples only, unaligned, stop on error.
pg() {
	runuser -u postgres -- "$BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 \
		-h "$SOCK" -p "$PORT" -d postgres "$@"
}

# The first line of the output: server version, CPUs, the commit (marked dirty
# when src/ or sql/ has uncommitted changes), synchronous_commit, the time.
bench_banner() {
	local pgversion rev
	pgversion=$(pg -c "SHOW server_version")
	rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
	[ -n "$(git -C "$ROOT" status --porcelain -- src sql 2>/dev/null)" ] && rev="$rev+dirty(src/sql)"
	say "$1: PostgreSQL $pgversion, $(nproc) CPUs, bento $rev, synchronous_commit=$SYNC_COMMIT, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
}

# pgbench_tps LABEL SCRIPT TXNS: one pgbench run of TXNS transactions of
# SCRIPT (a file postgres can read), one client; prints its tps.
pgbench_tps() {
	local out tps
	out=$(runuser -u postgres -- "$BINDIR/pgbench" -n -f "$2" -t "$3" -c 1 \
		-h "$SOCK" -p "$PORT" postgres 2>&1) || die "pgbench $1 failed: $out"
	tps=$(printf '%s\n' "$out" | awk '/^tps = / { print $3; exit }')
	[ -n "$tps" ] || die "no tps in the pgbench output: $out"
	printf '%s\n' "$tps"
}

# Float arithmetic and formatting.
calc() { awk "BEGIN { printf \"$1\", $2 }"; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
