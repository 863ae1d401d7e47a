/*-------------------------------------------------------------------------
 *
 * trigger.c
 *	  Watches: bento.watch_trigger(), the statement-level AFTER trigger that
 *	  turns the rows an INSERT, UPDATE or DELETE wrote into Bento events,
 *	  and its SQL-callable helpers.
 *
 * A watch is a trigger whose arguments are its configuration: the event
 * type, the email (a column or an SQL expression over the row) and a JSON
 * object of options.  So pg_dump keeps it, dropping the table drops it and
 * DROP EXTENSION ... CASCADE removes it; there is no table of watches to
 * keep in step.
 *
 * Each firing reads the statement's transition tables and runs two
 * statements through SPI, whatever the number of rows:
 *
 *	1. the watch's event query, built from the arguments by
 *	   bento.watch_query(), evaluates the watch's expressions over the rows
 *	   into a tuplestore of events (type, email, fields, details,
 *	   external_id, occurred_at).  It runs as the table's owner, in a
 *	   security-restricted operation, like the queries of foreign key
 *	   triggers: nothing the watch or the table's owner wrote (expressions,
 *	   functions, casts of the owner's types) ever runs with more privileges
 *	   than the table's owner has.
 *	2. the queue statement, the same for every watch, reads those events as
 *	   the relation "bento_events", checks each with bento.check_event()
 *	   (bento_track's checks), and inserts the valid ones into bento.dedupe
 *	   and bento.outbox; it runs as the extension's owner (the function is
 *	   SECURITY DEFINER) and touches only data.
 *
 * Plans: a statement of at most WATCH_SMALL_ROWS rows runs saved plans (per
 * trigger for the event query, per backend for the queue statement).  A
 * larger one is planned afresh: a plan saved for one row would pair 100,000
 * old and new rows with a nested loop, since the planner's row estimate of a
 * transition table is taken when the plan is made.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "common/keywords.h"
#include "executor/spi.h"
#include "executor/tstoreReceiver.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/parsenodes.h"
#include "parser/parse_func.h"
#include "parser/parser.h"
#include "parser/scanner.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/tuplestore.h"

#include "bento.h"

PG_FUNCTION_INFO_V1(bento_watch_trigger);
PG_FUNCTION_INFO_V1(bento_check_watch);
PG_FUNCTION_INFO_V1(bento_trigger_arguments);
PG_FUNCTION_INFO_V1(bento_check_expression);

/* Statements with at most this many rows (or events) use saved plans. */
#define WATCH_SMALL_ROWS 100

/* The relation the queue statement reads the events from. */
#define EVENTS_RELATION "bento_events"

typedef enum WatchOp
{
	WATCH_INSERT,
	WATCH_UPDATE,
	WATCH_DELETE
} WatchOp;

static const char *const watch_op_names[] = {"INSERT", "UPDATE", "DELETE"};

/*
 * What a backend keeps about one watch trigger: the arguments it was built
 * from, what bento.watch_query() made of them, and a saved plan.
 */
typedef struct WatchEntry
{
	Oid			tgoid;			/* hash key */
	bool		valid;			/* false once an invalidation may have hit it */
	bool		transient;		/* a copy for one firing, not in the cache */
	int			busy;			/* firings using it right now */
	MemoryContext cxt;			/* holds the strings below */

	/* what it was built from */
	Oid			relid;
	WatchOp		op;
	char	   *tgname;
	char	   *newtable;
	char	   *oldtable;
	int			nargs;
	char	  **args;

	/* what bento.watch_query() made of it */
	char	   *query;
	bool		raise;
	char	   *caller;
	SPIPlanPtr	plan;			/* query, saved; NULL until a small statement */
} WatchEntry;

static HTAB *watch_cache = NULL;
static uint64 watch_inval_count = 0;
static SPIPlanPtr queue_plan = NULL;
static SPIPlanPtr skip_plan = NULL;
static TupleDesc events_desc = NULL;

/*
 * The queue statement.  $1 names the trigger in messages, $2 is true when an
 * invalid event must raise bento_track's error instead of being skipped.
 *
 * A $purchase event whose details carry no unique.key gets its external_id
 * there, so that Bento's own purchase dedupe agrees with ours.  Valid events
 * get their outbox id first, in the order of the rows; then the keyed ones
 * claim their external_id in bento.dedupe (ON CONFLICT DO NOTHING: a key
 * already queued, or met earlier in this statement, is skipped, as
 * bento_track does), and the outbox rows are inserted for the unkeyed events
 * and the keys that were new.
 */
static const char *const queue_sql =
"WITH ev AS MATERIALIZED ("
" SELECT x.type, x.email, x.fields, x.details, x.external_id, x.occurred_at, x.problem,"
"  CASE WHEN x.problem IS NULL THEN nextval('bento.outbox_id_seq') END AS id"
" FROM (SELECT y.*,"
"        bento.check_event(y.type, y.email, y.fields, y.details, y.external_id,"
"                          y.occurred_at, $2, $1) AS problem"
"       FROM (SELECT e.type, e.email, e.fields,"
"              CASE WHEN e.type = '$purchase' AND e.external_id IS NOT NULL"
"                    AND coalesce(jsonb_typeof(e.details), 'object') = 'object'"
"                    AND coalesce(jsonb_typeof(e.details -> 'unique'), 'object') = 'object'"
"                    AND e.details #> '{unique,key}' IS NULL"
"                   THEN coalesce(e.details, '{}') || jsonb_build_object('unique',"
"                        coalesce(e.details -> 'unique', '{}') || jsonb_build_object('key', e.external_id))"
"                   ELSE e.details END AS details,"
"              e.external_id, e.occurred_at"
"             FROM " EVENTS_RELATION " e) y) x),"
" k AS ("
" INSERT INTO bento.dedupe (external_id, outbox_id)"
" SELECT ev.external_id, ev.id FROM ev WHERE ev.id IS NOT NULL AND ev.external_id IS NOT NULL"
" ON CONFLICT (external_id) DO NOTHING"
" RETURNING outbox_id),"
" o AS ("
" INSERT INTO bento.outbox (id, type, email, fields, details, external_id, occurred_at)"
" OVERRIDING SYSTEM VALUE"
" SELECT ev.id, ev.type, ev.email, ev.fields, ev.details, ev.external_id, ev.occurred_at"
" FROM ev WHERE ev.id IS NOT NULL AND ev.external_id IS NULL"
" UNION ALL"
" SELECT ev.id, ev.type, ev.email, ev.fields, ev.details, ev.external_id, ev.occurred_at"
" FROM ev JOIN k ON k.outbox_id = ev.id"
" RETURNING 1)"
" SELECT s.skipped, s.first_problem, s.queued,"
"  CASE WHEN s.queued > 0 THEN bento.wake_at_commit() END AS wake"
" FROM (SELECT (SELECT count(*) FROM ev WHERE ev.id IS NULL) AS skipped,"
"              (SELECT ev.problem FROM ev WHERE ev.id IS NULL LIMIT 1) AS first_problem,"
"              (SELECT count(*) FROM o) AS queued"
"       OFFSET 0) s";

static const char *const build_sql =
"SELECT w.query, w.raises, w.caller FROM bento.watch_query($1, $2, $3, $4, $5, $6) w";

static const char *const skip_sql =
"INSERT INTO bento.watch_skips (trigger_oid, skipped, events, first_error)"
" VALUES ($1, $2, $3, $4)";

/*
 * Forget what was built for triggers of a relation that changed (or of
 * every relation).  The entries are rebuilt at their next use; nothing is
 * freed here, since a callback may run while a firing uses an entry.
 */
static void
watch_relcache_callback(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	WatchEntry *entry;

	watch_inval_count++;
	hash_seq_init(&status, watch_cache);
	while ((entry = (WatchEntry *) hash_seq_search(&status)) != NULL)
	{
		if (relid == InvalidOid || entry->relid == relid)
			entry->valid = false;
	}
}

/* A renamed schema changes the table names baked into the event queries. */
static void
watch_namespace_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	watch_relcache_callback(arg, InvalidOid);
}

static void
init_watch_cache(void)
{
	HASHCTL		ctl;

	if (watch_cache != NULL)
		return;
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(WatchEntry);
	ctl.hcxt = CacheMemoryContext;
	watch_cache = hash_create("bento watches", 16, &ctl,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	CacheRegisterRelcacheCallback(watch_relcache_callback, (Datum) 0);
	CacheRegisterSyscacheCallback(NAMESPACEOID, watch_namespace_callback, (Datum) 0);
}

/*
 * The row type of the events: what an event query returns and the queue
 * statement reads.
 */
static TupleDesc
get_events_desc(void)
{
	if (events_desc == NULL)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);
		TupleDesc	desc = CreateTemplateTupleDesc(6);

		TupleDescInitEntry(desc, 1, "type", TEXTOID, -1, 0);
		TupleDescInitEntry(desc, 2, "email", TEXTOID, -1, 0);
		TupleDescInitEntry(desc, 3, "fields", JSONBOID, -1, 0);
		TupleDescInitEntry(desc, 4, "details", JSONBOID, -1, 0);
		TupleDescInitEntry(desc, 5, "external_id", TEXTOID, -1, 0);
		TupleDescInitEntry(desc, 6, "occurred_at", TIMESTAMPTZOID, -1, 0);
		MemoryContextSwitchTo(oldcxt);
		events_desc = desc;
	}
	return events_desc;
}

static bool
strings_equal(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

static char *
copy_string(MemoryContext cxt, const char *s)
{
	return s ? MemoryContextStrdup(cxt, s) : NULL;
}

/*
 * Was this entry built from this trigger as it is now?
 */
static bool
entry_matches(WatchEntry *entry, Relation rel, Trigger *trigger, WatchOp op)
{
	if (entry->relid != RelationGetRelid(rel) || entry->op != op ||
		entry->nargs != trigger->tgnargs ||
		!strings_equal(entry->tgname, trigger->tgname) ||
		!strings_equal(entry->newtable, trigger->tgnewtable) ||
		!strings_equal(entry->oldtable, trigger->tgoldtable))
		return false;
	for (int i = 0; i < entry->nargs; i++)
		if (!strings_equal(entry->args[i], trigger->tgargs[i]))
			return false;
	return true;
}

/*
 * Fill an entry from the trigger: call bento.watch_query() for the event
 * query.  SPI is connected.  Strings go to entry->cxt.
 */
static void
build_entry(WatchEntry *entry, Relation rel, Trigger *trigger, WatchOp op)
{
	Oid			argtypes[6] = {OIDOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTARRAYOID};
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	Datum	   *args;
	bool		isnull;
	int			ret;
	HeapTuple	tup;
	TupleDesc	desc;
	Datum		d;

	args = palloc(sizeof(Datum) * Max(trigger->tgnargs, 1));
	for (int i = 0; i < trigger->tgnargs; i++)
		args[i] = CStringGetTextDatum(trigger->tgargs[i]);

	values[0] = ObjectIdGetDatum(RelationGetRelid(rel));
	values[1] = CStringGetTextDatum(watch_op_names[op]);
	values[2] = CStringGetTextDatum(trigger->tgname);
	if (trigger->tgnewtable)
		values[3] = CStringGetTextDatum(trigger->tgnewtable);
	else
		nulls[3] = 'n';
	if (trigger->tgoldtable)
		values[4] = CStringGetTextDatum(trigger->tgoldtable);
	else
		nulls[4] = 'n';
	values[5] = PointerGetDatum(construct_array(args, trigger->tgnargs, TEXTOID,
												-1, false, TYPALIGN_INT));

	ret = SPI_execute_with_args(build_sql, 6, argtypes, values, nulls, false, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "bento.watch_query failed: %s", SPI_result_code_string(ret));
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;

	entry->relid = RelationGetRelid(rel);
	entry->op = op;
	entry->tgname = copy_string(entry->cxt, trigger->tgname);
	entry->newtable = copy_string(entry->cxt, trigger->tgnewtable);
	entry->oldtable = copy_string(entry->cxt, trigger->tgoldtable);
	entry->nargs = trigger->tgnargs;
	entry->args = MemoryContextAlloc(entry->cxt, sizeof(char *) * Max(trigger->tgnargs, 1));
	for (int i = 0; i < trigger->tgnargs; i++)
		entry->args[i] = copy_string(entry->cxt, trigger->tgargs[i]);
	entry->query = copy_string(entry->cxt, SPI_getvalue(tup, desc, 1));
	d = SPI_getbinval(tup, desc, 2, &isnull);
	entry->raise = !isnull && DatumGetBool(d);
	entry->caller = copy_string(entry->cxt, SPI_getvalue(tup, desc, 3));
	entry->plan = NULL;
	if (entry->query == NULL || entry->caller == NULL)
		elog(ERROR, "bento.watch_query returned NULL");
}

/*
 * The entry for a trigger, built if needed.  While a firing of the same
 * trigger is running (a watch expression wrote to its own table), an
 * outdated entry cannot be rebuilt in place: the inner firing then gets a
 * transient copy, made in the current memory context, without a saved plan.
 */
static pg_noinline WatchEntry *
get_entry(Relation rel, Trigger *trigger, WatchOp op)
{
	WatchEntry *entry;
	bool		found;
	uint64		inval_count;

	init_watch_cache();
	entry = (WatchEntry *) hash_search(watch_cache, &trigger->tgoid, HASH_ENTER, &found);
	if (!found)
	{
		entry->valid = false;
		entry->transient = false;
		entry->busy = 0;
		entry->plan = NULL;
		entry->cxt = AllocSetContextCreate(CacheMemoryContext, "bento watch",
										   ALLOCSET_SMALL_SIZES);
	}
	else if (entry->valid && entry_matches(entry, rel, trigger, op))
		return entry;

	if (entry->busy > 0)
	{
		WatchEntry *copy = palloc0(sizeof(WatchEntry));

		copy->tgoid = trigger->tgoid;
		copy->transient = true;
		copy->cxt = CurrentMemoryContext;
		build_entry(copy, rel, trigger, op);
		return copy;
	}

	entry->valid = false;
	if (entry->plan)
	{
		SPI_freeplan(entry->plan);
		entry->plan = NULL;
	}
	MemoryContextReset(entry->cxt);
	inval_count = watch_inval_count;
	build_entry(entry, rel, trigger, op);
	/* An invalidation that arrived meanwhile makes the next firing rebuild. */
	entry->valid = (inval_count == watch_inval_count);
	return entry;
}

/*
 * Make a transition table visible to SPI queries under its trigger name.
 */
static void
register_transition_table(const char *name, Relation rel, Tuplestorestate *rows)
{
	EphemeralNamedRelation enr = palloc0(sizeof(EphemeralNamedRelationData));
	int			ret;

	enr->md.name = pstrdup(name);
	enr->md.reliddesc = RelationGetRelid(rel);
	enr->md.tupdesc = NULL;
	enr->md.enrtype = ENR_NAMED_TUPLESTORE;
	enr->md.enrtuples = tuplestore_tuple_count(rows);
	enr->reldata = rows;
	ret = SPI_register_relation(enr);
	if (ret != SPI_OK_REL_REGISTER)
		elog(ERROR, "could not register transition table \"%s\": %s", name,
			 SPI_result_code_string(ret));
}

/*
 * Run the watch's event query as the table's owner; return its events.
 */
static Tuplestorestate *
compute_events(WatchEntry *entry, Relation rel, int64 nrows, bool cacheable)
{
	Tuplestorestate *events = tuplestore_begin_heap(false, false, work_mem);
	DestReceiver *dest = CreateDestReceiver(DestTuplestore);
	SPIExecuteOptions options;
	Oid			save_userid;
	int			save_sec_context;
	int			ret;

	SetTuplestoreDestReceiverParams(dest, events, CurrentMemoryContext, false,
									NULL, NULL);
	memset(&options, 0, sizeof(options));
	options.read_only = false;
	options.dest = dest;

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(rel->rd_rel->relowner,
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	if (cacheable && nrows <= WATCH_SMALL_ROWS)
	{
		if (entry->plan == NULL)
			entry->plan = bento_keep_plan(entry->query, 0, NULL, CURSOR_OPT_GENERIC_PLAN);
		ret = SPI_execute_plan_extended(entry->plan, &options);
	}
	else
		ret = SPI_execute_extended(entry->query, &options);
	SetUserIdAndSecContext(save_userid, save_sec_context);

	if (ret != SPI_OK_SELECT)
		elog(ERROR, "the event query of %s failed: %s", entry->caller,
			 SPI_result_code_string(ret));
	dest->rDestroy(dest);
	return events;
}

/*
 * Queue the events: check them, skip or raise on invalid ones, insert the
 * rest.  Reports and records skipped events.
 */
static void
queue_events(WatchEntry *entry, Tuplestorestate *events, Oid tgoid)
{
	EphemeralNamedRelation enr = palloc0(sizeof(EphemeralNamedRelationData));
	Oid			argtypes[2] = {TEXTOID, BOOLOID};
	Datum		values[2];
	int64		nevents = tuplestore_tuple_count(events);
	int64		produced;
	int64		skipped;
	char	   *first_problem;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	int			ret;

	enr->md.name = EVENTS_RELATION;
	enr->md.reliddesc = InvalidOid;
	enr->md.tupdesc = get_events_desc();
	enr->md.enrtype = ENR_NAMED_TUPLESTORE;
	enr->md.enrtuples = nevents;
	enr->reldata = events;
	ret = SPI_register_relation(enr);
	if (ret != SPI_OK_REL_REGISTER)
		elog(ERROR, "could not register the events: %s", SPI_result_code_string(ret));

	values[0] = CStringGetTextDatum(entry->caller);
	values[1] = BoolGetDatum(entry->raise);
	if (nevents <= WATCH_SMALL_ROWS)
	{
		if (queue_plan == NULL)
			queue_plan = bento_keep_plan(queue_sql, 2, argtypes, CURSOR_OPT_GENERIC_PLAN);
		ret = SPI_execute_plan(queue_plan, values, NULL, false, 0);
	}
	else
		ret = SPI_execute_with_args(queue_sql, 2, argtypes, values, NULL, false, 0);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not queue the events of %s: %s", entry->caller,
			 SPI_result_code_string(ret));

	SPI_unregister_relation(EVENTS_RELATION);
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	produced = nevents;
	skipped = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	first_problem = SPI_getvalue(tup, desc, 2);

	if (skipped > 0)
	{
		Oid			skip_types[4] = {OIDOID, INT8OID, INT8OID, TEXTOID};
		Datum		skip_values[4];

		skip_values[0] = ObjectIdGetDatum(tgoid);
		skip_values[1] = Int64GetDatum(skipped);
		skip_values[2] = Int64GetDatum(produced);
		if (first_problem == NULL || first_problem[0] == '\0')
			elog(ERROR, "skipped events without a problem");
		skip_values[3] = CStringGetTextDatum(first_problem);
		if (skip_plan == NULL)
			skip_plan = bento_keep_plan(skip_sql, 4, skip_types, CURSOR_OPT_GENERIC_PLAN);
		ret = SPI_execute_plan(skip_plan, skip_values, NULL, false, 0);
		if (ret != SPI_OK_INSERT)
			elog(ERROR, "could not record skipped events: %s", SPI_result_code_string(ret));

		ereport(WARNING,
				(errmsg("bento skipped %lld of %lld events of %s",
						(long long) skipped, (long long) produced, entry->caller),
				 errdetail("bento_track would refuse them. The first: %s%s", first_problem,
						   first_problem[strlen(first_problem) - 1] == '.' ? "" : "."),
				 errhint("The rows were written without these events; bento.watched counts them. "
						 "With on_invalid set to \"raise\" they would fail the statement instead.")));
	}
}

/*
 * A table's name for messages: schema-qualified, quoted where needed.
 */
static char *
table_name(Relation rel)
{
	return quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
									  RelationGetRelationName(rel));
}

/*
 * Remove one line from an error's context.
 */
static void
remove_context_line(ErrorData *edata, const char *line)
{
	char	   *at;
	size_t		len = strlen(line);

	if (edata->context == NULL || (at = strstr(edata->context, line)) == NULL)
		return;
	if (at[len] == '\n')
		len++;
	else if (at > edata->context && at[-1] == '\n')
		at--, len++;
	memmove(at, at + len, strlen(at + len) + 1);
}

/*
 * Remove the context lines that start with prefix.
 */
static void
remove_context_lines_from(ErrorData *edata, const char *prefix)
{
	char	   *line = edata->context;
	size_t		plen = strlen(prefix);

	while (line != NULL && *line != '\0')
	{
		char	   *nl = strchr(line, '\n');

		if (strncmp(line, prefix, plen) == 0)
		{
			if (nl)
				memmove(line, nl + 1, strlen(nl + 1) + 1);
			else
			{
				if (line > edata->context)
					line[-1] = '\0';
				else
					line[0] = '\0';
				break;
			}
		}
		else
			line = nl ? nl + 1 : NULL;
	}
}

/*
 * Re-throw the error being handled without the SPI context lines that quote
 * our own statements in full ("SQL statement ..."): they say nothing to the
 * person whose INSERT failed, and the line naming the watch trigger stays.
 * A position in a statement, if any, is kept as the internal query.
 */
static void
rethrow_without_statements(MemoryContext cxt, const char *event_query)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	FlushErrorState();
	if (event_query)
		remove_context_line(edata, psprintf("SQL statement \"%s\"", event_query));
	remove_context_line(edata, psprintf("SQL statement \"%s\"", queue_sql));
	remove_context_line(edata, psprintf("SQL statement \"%s\"", build_sql));
	remove_context_lines_from(edata, "PL/pgSQL function bento.watch_query(");
	remove_context_lines_from(edata, "PL/pgSQL function bento.watch_value(");
	remove_context_lines_from(edata, "SQL statement \"SELECT bento.check_expression(");
	ReThrowError(edata);
}

typedef struct WatchErrorContext
{
	const char *tgname;
	const char *table;
	bool		checking;
} WatchErrorContext;

static void
watch_error_callback(void *arg)
{
	WatchErrorContext *ctx = (WatchErrorContext *) arg;

	if (ctx->checking)
		errcontext("checking bento watch trigger \"%s\" on table %s", ctx->tgname, ctx->table);
	else
		errcontext("bento watch trigger \"%s\" on table %s", ctx->tgname, ctx->table);
}

/*
 * Fire a watch: the rows are in newrows (INSERT, UPDATE) and oldrows
 * (UPDATE, DELETE).  When checking, the tables are empty and everything
 * runs all the same.
 */
static void
run_watch(Relation rel, Trigger *trigger, WatchOp op,
		  Tuplestorestate *newrows, Tuplestorestate *oldrows, bool checking)
{
	int64		nrows;
	WatchEntry *volatile entry;
	volatile bool cached;
	Tuplestorestate *events;
	ErrorContextCallback errcallback;
	WatchErrorContext ctx;
	MemoryContext callercxt;
	int			ret;

	if ((op != WATCH_DELETE && newrows == NULL) || (op != WATCH_INSERT && oldrows == NULL))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("trigger \"%s\" on table %s has no %s transition table",
						trigger->tgname, table_name(rel),
						(op != WATCH_DELETE && newrows == NULL) ? "NEW TABLE" : "OLD TABLE"),
				 errhint("bento.watch_trigger() reads the rows from transition tables: declare the trigger with %s.",
						 op == WATCH_INSERT ? "REFERENCING NEW TABLE AS bento_new" :
						 op == WATCH_UPDATE ? "REFERENCING OLD TABLE AS bento_old NEW TABLE AS bento_new" :
						 "REFERENCING OLD TABLE AS bento_old")));

	nrows = tuplestore_tuple_count(op == WATCH_DELETE ? oldrows : newrows);
	if (nrows == 0 && !checking)
		return;

	ctx.tgname = trigger->tgname;
	ctx.table = table_name(rel);
	ctx.checking = checking;
	errcallback.callback = watch_error_callback;
	errcallback.arg = &ctx;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	callercxt = CurrentMemoryContext;
	if ((ret = SPI_connect()) != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed: %s", SPI_result_code_string(ret));

	entry = NULL;
	cached = false;
	PG_TRY();
	{
		entry = get_entry(rel, trigger, op);
		cached = !entry->transient;
		if (cached)
			entry->busy++;

		if (newrows)
			register_transition_table(trigger->tgnewtable, rel, newrows);
		if (oldrows)
			register_transition_table(trigger->tgoldtable, rel, oldrows);

		events = compute_events(entry, rel, nrows, cached);
		if (newrows)
			SPI_unregister_relation(trigger->tgnewtable);
		if (oldrows)
			SPI_unregister_relation(trigger->tgoldtable);
		if (tuplestore_tuple_count(events) > 0 || checking)
			queue_events(entry, events, trigger->tgoid);
		tuplestore_end(events);
	}
	PG_CATCH();
	{
		if (cached)
			entry->busy--;
		rethrow_without_statements(callercxt, entry ? entry->query : NULL);
	}
	PG_END_TRY();
	if (cached)
		entry->busy--;

	SPI_finish();
	error_context_stack = errcallback.previous;
}

/*
 * Which operation a trigger type stands for, or error out when the trigger
 * is not an AFTER ... FOR EACH STATEMENT trigger on one operation.
 */
static WatchOp
trigger_operation(Relation rel, Trigger *trigger)
{
	int16		type = trigger->tgtype;

	if (TRIGGER_FOR_ROW(type) || !TRIGGER_FOR_AFTER(type))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("trigger \"%s\" on table %s must be AFTER ... FOR EACH STATEMENT to call bento.watch_trigger()",
						trigger->tgname, table_name(rel))));
	if (TRIGGER_FOR_TRUNCATE(type))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("trigger \"%s\" on table %s cannot call bento.watch_trigger() on TRUNCATE",
						trigger->tgname, table_name(rel))));
	if (TRIGGER_FOR_INSERT(type))
		return WATCH_INSERT;
	if (TRIGGER_FOR_UPDATE(type))
		return WATCH_UPDATE;
	return WATCH_DELETE;
}

/*
 * bento.watch_trigger(): AFTER INSERT, UPDATE or DELETE ... FOR EACH
 * STATEMENT, with the statement's transition tables.
 */
Datum
bento_watch_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	WatchOp		op;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("bento.watch_trigger() must be called as a trigger")));

	/* trigger_operation() names what is wrong with a misdeclared trigger. */
	if (TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) || !TRIGGER_FIRED_AFTER(trigdata->tg_event))
		(void) trigger_operation(trigdata->tg_relation, trigdata->tg_trigger);
	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		op = WATCH_INSERT;
	else if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		op = WATCH_UPDATE;
	else if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		op = WATCH_DELETE;
	else
	{
		(void) trigger_operation(trigdata->tg_relation, trigdata->tg_trigger);
		elog(ERROR, "unexpected trigger event %u", trigdata->tg_event);
	}

	run_watch(trigdata->tg_relation, trigdata->tg_trigger, op,
			  trigdata->tg_newtable, trigdata->tg_oldtable, false);

	return PointerGetDatum(NULL);
}

/*
 * bento.check_watch(trigger_oid oid) returns void
 *
 * Run a watch trigger on empty transition tables, so that whatever is wrong
 * with it (arguments, expressions, privileges of the table's owner) raises
 * its error now rather than at the first write.
 */
Datum
bento_check_watch(PG_FUNCTION_ARGS)
{
	Oid			tgoid = PG_GETARG_OID(0);
	Relation	tgrel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tup;
	Oid			relid;
	Oid			tgfoid;
	char	   *tgname;
	Oid			watch_fn;
	Relation	rel;
	Trigger    *trigger = NULL;
	WatchOp		op;
	Tuplestorestate *newrows = NULL;
	Tuplestorestate *oldrows = NULL;

	tgrel = table_open(TriggerRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_trigger_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(tgoid));
	scan = systable_beginscan(tgrel, TriggerOidIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("trigger with OID %u does not exist", tgoid)));
	relid = ((Form_pg_trigger) GETSTRUCT(tup))->tgrelid;
	tgfoid = ((Form_pg_trigger) GETSTRUCT(tup))->tgfoid;
	tgname = pstrdup(NameStr(((Form_pg_trigger) GETSTRUCT(tup))->tgname));
	systable_endscan(scan);
	table_close(tgrel, AccessShareLock);

	watch_fn = LookupFuncName(list_make2(makeString("bento"), makeString("watch_trigger")),
							  0, NULL, false);
	rel = table_open(relid, AccessShareLock);
	if (tgfoid != watch_fn)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("trigger \"%s\" on table %s does not call bento.watch_trigger()",
						tgname, table_name(rel))));
	for (int i = 0; rel->trigdesc && i < rel->trigdesc->numtriggers; i++)
		if (rel->trigdesc->triggers[i].tgoid == tgoid)
			trigger = &rel->trigdesc->triggers[i];
	if (trigger == NULL)
		elog(ERROR, "trigger %u not found on relation %u", tgoid, relid);

	op = trigger_operation(rel, trigger);
	if (trigger->tgnewtable)
		newrows = tuplestore_begin_heap(false, false, work_mem);
	if (trigger->tgoldtable)
		oldrows = tuplestore_begin_heap(false, false, work_mem);
	run_watch(rel, trigger, op, newrows, oldrows, true);
	if (newrows)
		tuplestore_end(newrows);
	if (oldrows)
		tuplestore_end(oldrows);

	table_close(rel, AccessShareLock);
	PG_RETURN_VOID();
}

/*
 * bento.trigger_arguments(args bytea, nargs smallint) returns text[]
 *
 * pg_trigger.tgargs holds the arguments one after the other, each ended by
 * a zero byte.
 */
Datum
bento_trigger_arguments(PG_FUNCTION_ARGS)
{
	bytea	   *args = PG_GETARG_BYTEA_PP(0);
	int			nargs = PG_GETARG_INT16(1);
	const char *p = VARDATA_ANY(args);
	const char *end = p + VARSIZE_ANY_EXHDR(args);
	Datum	   *items;
	int			n = 0;

	items = palloc(sizeof(Datum) * Max(nargs, 1));
	while (n < nargs && p < end)
	{
		const char *nul = memchr(p, '\0', end - p);
		size_t		len = nul ? (size_t) (nul - p) : (size_t) (end - p);

		items[n++] = PointerGetDatum(cstring_to_text_with_len(p, len));
		p += len + 1;
	}
	PG_RETURN_ARRAYTYPE_P(construct_array(items, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * bento.check_expression(expression text, what text) returns void
 *
 * Error out unless the text is one SQL expression: scanned alone, it never
 * closes a parenthesis it did not open, and "SELECT (<text>)" parses as one
 * target with no other clause.  The trigger's event query places the text
 * exactly so, between parentheses on lines of their own, so it cannot reach
 * out of its place there.
 */
Datum
bento_check_expression(PG_FUNCTION_ARGS)
{
	char	   *expr = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *what = text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *sql = psprintf("SELECT (\n%s\n)", expr);
	MemoryContext oldcxt = CurrentMemoryContext;
	List	   *parsed = NIL;
	bool		balanced = true;
	bool		single = false;

	if (strspn(expr, " \t\r\n\f\v") == strlen(expr))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is empty", what)));

	PG_TRY();
	{
		core_yy_extra_type yyextra;
		core_yyscan_t scanner;
		core_YYSTYPE yylval;
		YYLTYPE		yylloc;
		int			depth = 0;
		int			tok;

		scanner = scanner_init(expr, &yyextra, &ScanKeywords, ScanKeywordTokens);
		while ((tok = core_yylex(&yylval, &yylloc, scanner)) != 0)
		{
			if (tok == '(')
				depth++;
			else if (tok == ')' && --depth < 0)
				break;
			else if (tok == ';')
				depth = -1;
			if (depth < 0)
				break;
		}
		scanner_finish(scanner);
		balanced = (depth == 0);
		if (balanced)
			parsed = raw_parser(sql, RAW_PARSE_DEFAULT);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		ereport(ERROR,
				(errcode(edata->sqlerrcode),
				 errmsg("%s is not a valid SQL expression", what),
				 errdetail("%s", edata->message)));
	}
	PG_END_TRY();

	if (balanced && list_length(parsed) == 1)
	{
		RawStmt    *raw = linitial_node(RawStmt, parsed);

		if (IsA(raw->stmt, SelectStmt))
		{
			SelectStmt *s = (SelectStmt *) raw->stmt;

			single = (s->op == SETOP_NONE && list_length(s->targetList) == 1 &&
					  s->distinctClause == NIL && s->intoClause == NULL &&
					  s->fromClause == NIL && s->whereClause == NULL &&
					  s->groupClause == NIL && s->havingClause == NULL &&
					  s->windowClause == NIL && s->valuesLists == NIL &&
					  s->sortClause == NIL && s->limitOffset == NULL &&
					  s->limitCount == NULL && s->lockingClause == NIL &&
					  s->withClause == NULL &&
					  ((ResTarget *) linitial(s->targetList))->name == NULL);
		}
	}
	if (!single)
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("%s must be a single SQL expression", what),
				 errdetail("It is: %s", expr)));
	PG_RETURN_VOID();
}
