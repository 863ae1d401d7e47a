/*-------------------------------------------------------------------------
 *
 * functions.c
 *	  SQL-callable entry points: bento_track().
 *
 * bento_track() checks an event the way Bento would before anything is
 * queued, so that a bad event fails the caller's statement instead of
 * dying in the outbox later.  It inserts in the caller's transaction and
 * asks for the worker to be woken when that transaction commits.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "bento.h"

PG_FUNCTION_INFO_V1(bento_track);
PG_FUNCTION_INFO_V1(bento_check_event);
PG_FUNCTION_INFO_V1(bento_wake_at_commit);

/* Lengths from RFC 5321: local part 64, whole address 254 bytes. */
#define EMAIL_MAX_LOCAL 64
#define EMAIL_MAX_LEN 254
/* RFC 1035: a domain label is at most 63 bytes. */
#define EMAIL_MAX_LABEL 63

static bool wake_at_commit = false;
static bool xact_callback_registered = false;

/*
 * Transaction callback: wake the worker once a transaction that queued
 * events has committed.
 */
static void
bento_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
			if (wake_at_commit)
				bento_wake_worker();
			wake_at_commit = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			wake_at_commit = false;
			break;
		default:
			break;
	}
}

/*
 * Wake the worker when the current transaction commits.
 */
static void
request_wake_at_commit(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(bento_xact_callback, NULL);
		xact_callback_registered = true;
	}
	wake_at_commit = true;
}

/*
 * Is this plausibly an email address?  One '@', a non-empty local part of
 * printable characters with no leading, trailing or doubled dot, a domain of
 * at least two dot-separated labels of 1 to 63 bytes that neither start nor
 * end with '-', no white space or control characters.  Deliberately not RFC 5322:
 * quoted local parts and address literals are refused.
 */
static const char *
email_problem(const char *email)
{
	const char *at = strchr(email, '@');
	size_t		len = strlen(email);
	const char *domain;
	const char *p;
	bool		label_empty = true;
	int			label_len = 0;
	int			dots = 0;

	if (len > EMAIL_MAX_LEN)
		return "The address is longer than 254 bytes.";
	for (p = email; *p; p++)
	{
		unsigned char c = (unsigned char) *p;

		if (c <= ' ' || c == 0x7f)
			return "The address contains white space or control characters.";
		if (c == '"' || c == '(' || c == ')' || c == ',' || c == ';' ||
			c == '<' || c == '>' || c == '[' || c == ']' || c == '\\')
			return "The address contains a character not allowed in an email address.";
	}
	if (at == NULL)
		return "The address has no \"@\".";
	if (strchr(at + 1, '@') != NULL)
		return "The address has more than one \"@\".";
	if (at == email)
		return "The part before \"@\" is empty.";
	if (at - email > EMAIL_MAX_LOCAL)
		return "The part before \"@\" is longer than 64 bytes.";
	if (email[0] == '.' || at[-1] == '.')
		return "The part before \"@\" starts or ends with \".\".";
	for (p = email; p < at; p++)
		if (p[0] == '.' && p[1] == '.')
			return "The part before \"@\" has two consecutive dots.";

	domain = at + 1;
	for (p = domain; *p; p++)
	{
		if (*p == '.')
		{
			if (label_empty)
				return "The domain has an empty label.";
			if (p[-1] == '-')
				return "A domain label ends with \"-\".";
			label_empty = true;
			label_len = 0;
			dots++;
		}
		else
		{
			if (label_empty && *p == '-')
				return "A domain label starts with \"-\".";
			if (++label_len > EMAIL_MAX_LABEL)
				return "A domain label is longer than 63 bytes.";
			label_empty = false;
		}
	}
	if (p > domain && p[-1] == '-')
		return "A domain label ends with \"-\".";
	if (*domain == '\0')
		return "The domain is empty.";
	if (label_empty)
		return "The domain has an empty label.";
	if (dots == 0)
		return "The domain has no \".\".";
	return NULL;
}

/*
 * What is wrong with an event: everything an ereport needs, kept so that
 * the caller can raise it (bento_track) or report it (bento.check_event,
 * used by set-based paths that skip bad rows).
 */
typedef struct EventProblem
{
	int			sqlerrcode;
	char	   *message;
	char	   *detail;			/* or NULL */
	char	   *hint;			/* or NULL */
} EventProblem;

static bool
problem(EventProblem *p, int sqlerrcode, char *message, char *detail, char *hint)
{
	p->sqlerrcode = sqlerrcode;
	p->message = message;
	p->detail = detail;
	p->hint = hint;
	return false;
}

/*
 * Name a JSON value's type for error messages.
 */
static const char *
jsonb_container_kind(Jsonb *jb)
{
	if (JB_ROOT_IS_SCALAR(jb))
		return "a scalar";
	if (JB_ROOT_IS_ARRAY(jb))
		return "an array";
	return "an object";
}

/*
 * Check that fields is a flat object: each value a scalar, or an array of
 * scalars.  Bento writes fields onto the subscriber and cannot nest them.
 */
static bool
check_fields(Jsonb *fields, const char *caller, EventProblem *p)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *key = NULL;
	int			depth = 0;
	bool		in_array = false;

	if (!JB_ROOT_IS_OBJECT(fields) || JB_ROOT_IS_SCALAR(fields))
		return problem(p, ERRCODE_INVALID_PARAMETER_VALUE,
					   psprintf("argument \"fields\" of %s must be a JSON object", caller),
					   psprintf("The value is %s.", jsonb_container_kind(fields)), NULL);

	it = JsonbIteratorInit(&fields->root);
	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		switch (tok)
		{
			case WJB_BEGIN_OBJECT:
				if (depth >= 1)
					return problem(p, ERRCODE_INVALID_PARAMETER_VALUE,
								   psprintf("argument \"fields\" of %s must be a flat JSON object", caller),
								   psprintf("Field \"%s\" holds %s object; Bento fields cannot hold objects.",
											key, in_array ? "an array containing an" : "an"),
								   pstrdup("Put nested data in \"details\"."));
				depth++;
				break;
			case WJB_BEGIN_ARRAY:
				if (in_array)
					return problem(p, ERRCODE_INVALID_PARAMETER_VALUE,
								   psprintf("argument \"fields\" of %s must be a flat JSON object", caller),
								   psprintf("Field \"%s\" holds nested arrays.", key),
								   pstrdup("Put nested data in \"details\"."));
				in_array = true;
				depth++;
				break;
			case WJB_END_ARRAY:
				in_array = false;
				depth--;
				break;
			case WJB_END_OBJECT:
				depth--;
				break;
			case WJB_KEY:
				if (v.val.string.len == 0)
					return problem(p, ERRCODE_INVALID_PARAMETER_VALUE,
								   psprintf("argument \"fields\" of %s has an empty field name", caller),
								   NULL, NULL);
				key = pnstrdup(v.val.string.val, v.val.string.len);
				break;
			default:
				break;
		}
	}
	return true;
}

/*
 * Check details: an object; if it has "value", that must be an object with
 * a numeric "amount" and a non-empty string "currency" (Bento's rule).
 */
static bool
check_details(Jsonb *details, const char *caller, EventProblem *p)
{
	JsonbValue *value;
	JsonbValue *amount = NULL;
	JsonbValue *currency = NULL;

	if (!JB_ROOT_IS_OBJECT(details) || JB_ROOT_IS_SCALAR(details))
		return problem(p, ERRCODE_INVALID_PARAMETER_VALUE,
					   psprintf("argument \"details\" of %s must be a JSON object", caller),
					   psprintf("The value is %s.", jsonb_container_kind(details)), NULL);

	value = getKeyJsonValueFromContainer(&details->root, "value", 5, NULL);
	if (value == NULL)
		return true;

	if (value->type == jbvBinary && JsonContainerIsObject(value->val.binary.data))
	{
		amount = getKeyJsonValueFromContainer(value->val.binary.data,
											  "amount", 6, NULL);
		currency = getKeyJsonValueFromContainer(value->val.binary.data,
												"currency", 8, NULL);
	}
	if (amount == NULL || amount->type != jbvNumeric ||
		currency == NULL || currency->type != jbvString ||
		currency->val.string.len == 0)
		return problem(p, ERRCODE_INVALID_PARAMETER_VALUE,
					   psprintf("argument \"details\" of %s has an invalid \"value\"", caller),
					   pstrdup("\"details.value\" must be an object with a numeric \"amount\" and a string \"currency\"."),
					   pstrdup("For example: {\"value\": {\"amount\": 3000, \"currency\": \"USD\"}}."));
	return true;
}

/*
 * Check a NULL or empty required text argument.
 */
static bool
check_required_text(bool isnull, Datum value, const char *argname,
					const char *caller, EventProblem *p)
{
	if (isnull)
		return problem(p, ERRCODE_NULL_VALUE_NOT_ALLOWED,
					   psprintf("argument \"%s\" of %s must not be null", argname, caller),
					   NULL, NULL);
	if (VARSIZE_ANY_EXHDR(DatumGetPointer(value)) == 0)
		return problem(p, ERRCODE_INVALID_PARAMETER_VALUE,
					   psprintf("argument \"%s\" of %s must not be empty", argname, caller),
					   NULL, NULL);
	return true;
}

/*
 * Check an event the way Bento would, before anything is queued.  values
 * and nulls hold type, email, fields, details, external_id and occurred_at,
 * with the varlena values detoasted.  caller names the function in messages.
 */
static bool
check_event(Datum *values, bool *nulls, const char *caller, EventProblem *p)
{
	size_t		size = 0;
	char	   *email;
	const char *email_msg;
	size_t		idlen;

	if (!check_required_text(nulls[0], values[0], "type", caller, p) ||
		!check_required_text(nulls[1], values[1], "email", caller, p))
		return false;

	email = TextDatumGetCString(values[1]);
	email_msg = email_problem(email);
	if (email_msg != NULL)
		return problem(p, ERRCODE_INVALID_PARAMETER_VALUE,
					   psprintf("argument \"email\" of %s is not a valid email address: \"%s\"",
								caller, email),
					   pstrdup(email_msg), NULL);

	if (!nulls[2] && !check_fields(DatumGetJsonbP(values[2]), caller, p))
		return false;
	if (!nulls[3] && !check_details(DatumGetJsonbP(values[3]), caller, p))
		return false;

	if (!nulls[4])
	{
		idlen = VARSIZE_ANY_EXHDR(DatumGetPointer(values[4]));
		if (idlen == 0)
			return problem(p, ERRCODE_INVALID_PARAMETER_VALUE,
						   psprintf("argument \"external_id\" of %s must not be empty", caller),
						   NULL,
						   pstrdup("Pass NULL for an event that needs no deduplication."));
		if (idlen > BENTO_MAX_EXTERNAL_ID_BYTES)
			return problem(p, ERRCODE_PROGRAM_LIMIT_EXCEEDED,
						   psprintf("argument \"external_id\" of %s is too long", caller),
						   psprintf("It takes %zu bytes; the limit is %d bytes.",
									idlen, BENTO_MAX_EXTERNAL_ID_BYTES),
						   NULL);
	}

	if (nulls[5])
		return problem(p, ERRCODE_NULL_VALUE_NOT_ALLOWED,
					   psprintf("argument \"occurred_at\" of %s must not be null", caller),
					   NULL,
					   pstrdup("Omit the argument to use the current time."));
	if (TIMESTAMP_NOT_FINITE(DatumGetTimestampTz(values[5])))
		return problem(p, ERRCODE_INVALID_PARAMETER_VALUE,
					   psprintf("argument \"occurred_at\" of %s must be a finite timestamp", caller),
					   NULL, NULL);

	for (int i = 0; i < 5; i++)
		if (!nulls[i])
			size += VARSIZE_ANY_EXHDR(DatumGetPointer(values[i]));
	if (size > BENTO_MAX_EVENT_BYTES)
		return problem(p, ERRCODE_PROGRAM_LIMIT_EXCEEDED,
					   psprintf("event for %s is too large", caller),
					   psprintf("The event's type, email, fields, details and external_id take %zu bytes; the limit is %d bytes.",
								size, BENTO_MAX_EVENT_BYTES),
					   NULL);
	return true;
}

/*
 * Raise an event's problem as an error.
 */
static void
raise_problem(EventProblem *p)
{
	ereport(ERROR,
			(errcode(p->sqlerrcode),
			 errmsg_internal("%s", p->message),
			 p->detail ? errdetail_internal("%s", p->detail) : 0,
			 p->hint ? errhint("%s", p->hint) : 0));
}

/*
 * Read the six event arguments of a function, detoasting the varlenas once
 * so that their sizes are true.
 */
static void
event_arguments(FunctionCallInfo fcinfo, Datum *values, bool *nulls)
{
	for (int i = 0; i < 6; i++)
	{
		nulls[i] = PG_ARGISNULL(i);
		values[i] = nulls[i] ? (Datum) 0 : PG_GETARG_DATUM(i);
		if (!nulls[i] && i < 5)
			values[i] = PointerGetDatum(PG_DETOAST_DATUM_PACKED(values[i]));
	}
}

/*
 * bento_track(type text, email text, fields jsonb, details jsonb,
 *			   external_id text, occurred_at timestamptz) returns bigint
 */
Datum
bento_track(PG_FUNCTION_ARGS)
{
	Datum		values[6];
	bool		nulls[6];
	EventProblem p;
	int64		id;

	event_arguments(fcinfo, values, nulls);
	if (!check_event(values, nulls, "bento_track", &p))
		raise_problem(&p);

	id = bento_enqueue(values, nulls);
	request_wake_at_commit();

	PG_RETURN_INT64(id);
}

/*
 * bento.check_event(type, email, fields, details, external_id, occurred_at,
 *					 raise boolean, caller text) returns text
 *
 * Apply bento_track's checks without queueing anything: NULL when the event
 * is valid; otherwise raise bento_track's error (raise = true) or return it
 * as "message: detail".  For set-based producers such as table triggers.
 */
Datum
bento_check_event(PG_FUNCTION_ARGS)
{
	Datum		values[6];
	bool		nulls[6];
	EventProblem p;
	bool		raise = !PG_ARGISNULL(6) && PG_GETARG_BOOL(6);
	char	   *caller = PG_ARGISNULL(7) ? "bento_track" : text_to_cstring(PG_GETARG_TEXT_PP(7));

	event_arguments(fcinfo, values, nulls);
	if (check_event(values, nulls, caller, &p))
		PG_RETURN_NULL();
	if (raise)
		raise_problem(&p);
	if (p.detail)
		PG_RETURN_TEXT_P(cstring_to_text(psprintf("%s: %s", p.message, p.detail)));
	PG_RETURN_TEXT_P(cstring_to_text(p.message));
}

/*
 * Ask for the worker to be woken when the current transaction commits.
 * For set-based producers that insert into the outbox themselves.
 */
Datum
bento_wake_at_commit(PG_FUNCTION_ARGS)
{
	request_wake_at_commit();
	PG_RETURN_VOID();
}
