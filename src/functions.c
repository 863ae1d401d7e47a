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
static void
check_fields(Jsonb *fields)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			depth = 0;
	char	   *key = NULL;
	bool		in_array = false;

	if (!JB_ROOT_IS_OBJECT(fields) || JB_ROOT_IS_SCALAR(fields))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("argument \"fields\" of bento_track must be a JSON object"),
				 errdetail("The value is %s.", jsonb_container_kind(fields))));

	it = JsonbIteratorInit(&fields->root);
	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		switch (tok)
		{
			case WJB_BEGIN_OBJECT:
				if (depth >= 1)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("argument \"fields\" of bento_track must be a flat JSON object"),
							 errdetail("Field \"%s\" holds %s object; Bento fields cannot hold objects.",
									   key, in_array ? "an array containing an" : "an"),
							 errhint("Put nested data in \"details\".")));
				depth++;
				break;
			case WJB_BEGIN_ARRAY:
				if (in_array)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("argument \"fields\" of bento_track must be a flat JSON object"),
							 errdetail("Field \"%s\" holds nested arrays.", key),
							 errhint("Put nested data in \"details\".")));
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
				key = pnstrdup(v.val.string.val, v.val.string.len);
				if (v.val.string.len == 0)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("argument \"fields\" of bento_track has an empty field name")));
				break;
			default:
				break;
		}
	}
}

/*
 * Check details: an object; if it has "value", that must be an object with
 * a numeric "amount" and a non-empty string "currency" (Bento's rule).
 */
static void
check_details(Jsonb *details)
{
	JsonbValue *value;
	JsonbValue *amount = NULL;
	JsonbValue *currency = NULL;

	if (!JB_ROOT_IS_OBJECT(details) || JB_ROOT_IS_SCALAR(details))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("argument \"details\" of bento_track must be a JSON object"),
				 errdetail("The value is %s.", jsonb_container_kind(details))));

	value = getKeyJsonValueFromContainer(&details->root, "value", 5, NULL);
	if (value == NULL)
		return;

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
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("argument \"details\" of bento_track has an invalid \"value\""),
				 errdetail("\"details.value\" must be an object with a numeric \"amount\" and a string \"currency\"."),
				 errhint("For example: {\"value\": {\"amount\": 3000, \"currency\": \"USD\"}}.")));
}

/*
 * Raise the error for a NULL or empty required text argument.
 */
static void
require_text(bool isnull, text *value, const char *argname)
{
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("argument \"%s\" of bento_track must not be null", argname)));
	if (VARSIZE_ANY_EXHDR(value) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("argument \"%s\" of bento_track must not be empty", argname)));
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
	size_t		size = 0;
	char	   *email;
	const char *problem;
	int64		id;

	for (int i = 0; i < 6; i++)
	{
		nulls[i] = PG_ARGISNULL(i);
		values[i] = nulls[i] ? (Datum) 0 : PG_GETARG_DATUM(i);
		/* detoast the varlena arguments once, so their sizes are true */
		if (!nulls[i] && i < 5)
			values[i] = PointerGetDatum(PG_DETOAST_DATUM_PACKED(values[i]));
	}

	require_text(nulls[0], (text *) DatumGetPointer(values[0]), "type");
	require_text(nulls[1], (text *) DatumGetPointer(values[1]), "email");

	email = TextDatumGetCString(values[1]);
	problem = email_problem(email);
	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("argument \"email\" of bento_track is not a valid email address: \"%s\"",
						email),
				 errdetail("%s", problem)));

	if (!nulls[2])
		check_fields(DatumGetJsonbP(values[2]));
	if (!nulls[3])
		check_details(DatumGetJsonbP(values[3]));
	if (!nulls[4] && VARSIZE_ANY_EXHDR(DatumGetPointer(values[4])) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("argument \"external_id\" of bento_track must not be empty"),
				 errhint("Pass NULL for an event that needs no deduplication.")));
	if (!nulls[4] && VARSIZE_ANY_EXHDR(DatumGetPointer(values[4])) > BENTO_MAX_EXTERNAL_ID_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("argument \"external_id\" of bento_track is too long"),
				 errdetail("It takes %zu bytes; the limit is %d bytes.",
						   (size_t) VARSIZE_ANY_EXHDR(DatumGetPointer(values[4])),
						   BENTO_MAX_EXTERNAL_ID_BYTES)));
	if (nulls[5])
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("argument \"occurred_at\" of bento_track must not be null"),
				 errhint("Omit the argument to use the current time.")));
	if (TIMESTAMP_NOT_FINITE(PG_GETARG_TIMESTAMPTZ(5)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("argument \"occurred_at\" of bento_track must be a finite timestamp")));

	for (int i = 0; i < 5; i++)
		if (!nulls[i])
			size += VARSIZE_ANY_EXHDR(DatumGetPointer(values[i]));
	if (size > BENTO_MAX_EVENT_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("event for bento_track is too large"),
				 errdetail("The event's type, email, fields, details and external_id take %zu bytes; the limit is %d bytes.",
						   size, BENTO_MAX_EVENT_BYTES)));

	id = bento_enqueue(values, nulls);

	if (!xact_callback_registered)
	{
		RegisterXactCallback(bento_xact_callback, NULL);
		xact_callback_registered = true;
	}
	wake_at_commit = true;

	PG_RETURN_INT64(id);
}
