/*-------------------------------------------------------------------------
 *
 * payload.c
 *	  JSON in and out of the worker: request bodies and Bento's answers.
 *
 * This is the only file that uses cJSON.  cJSON allocates with malloc; each
 * tree is tied to the current memory context with a reset callback, so it is
 * freed when the worker resets its per-batch context, error or not.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include <cjson/cJSON.h>

#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/memutils.h"

#include "bento.h"

/*
 * Memory-context reset callback that frees a cJSON tree.
 */
static void
free_cjson(void *arg)
{
	cJSON_Delete((cJSON *) arg);
}

/*
 * Make a cJSON tree die with CurrentMemoryContext.
 */
static void
tie_to_context(cJSON *tree)
{
	MemoryContextCallback *cb = palloc(sizeof(MemoryContextCallback));

	cb->func = free_cjson;
	cb->arg = tree;
	MemoryContextRegisterResetCallback(CurrentMemoryContext, cb);
}

/*
 * cJSON returns NULL when malloc fails.
 */
static void *
check_cjson(void *ptr)
{
	if (ptr == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory while building a Bento request")));
	return ptr;
}

/*
 * Build {"events": [...]} for a batch.  fields and details are already
 * JSON text (jsonb output), so they are inserted as they are: no parsing,
 * and numbers keep every digit.  Returns a palloc'd string.
 */
char *
bento_build_batch_body(BentoBatchEvent *events, int nevents, size_t *len)
{
	cJSON	   *root;
	cJSON	   *array;
	char	   *printed;
	char	   *result;

	root = check_cjson(cJSON_CreateObject());
	tie_to_context(root);
	array = check_cjson(cJSON_AddArrayToObject(root, "events"));

	for (int i = 0; i < nevents; i++)
	{
		BentoBatchEvent *ev = &events[i];
		cJSON	   *item = check_cjson(cJSON_CreateObject());

		/* attach first, so that the tree owns it if a later step fails */
		cJSON_AddItemToArray(array, item);
		check_cjson(cJSON_AddStringToObject(item, "type", ev->type));
		check_cjson(cJSON_AddStringToObject(item, "email", ev->email));
		if (ev->fields != NULL)
			check_cjson(cJSON_AddRawToObject(item, "fields", ev->fields));
		if (ev->details != NULL)
			check_cjson(cJSON_AddRawToObject(item, "details", ev->details));
		check_cjson(cJSON_AddStringToObject(item, "date", ev->date));
	}

	printed = check_cjson(cJSON_PrintUnformatted(root));
	*len = strlen(printed);
	result = palloc(*len + 1);
	memcpy(result, printed, *len + 1);
	cJSON_free(printed);

	return result;
}

/*
 * Read Bento's answer: {"results": N, "failed": M, "errors": [{"index": i,
 * "error": "..."}]} or {"error": "..."}.  Anything else leaves
 * response->parsed false.
 */
void
bento_parse_response(const char *body, BentoResponse *response)
{
	cJSON	   *root;
	cJSON	   *item;
	cJSON	   *errors;

	memset(response, 0, sizeof(*response));
	response->results = -1;
	response->failed = -1;

	if (body == NULL || body[0] == '\0')
		return;

	root = cJSON_Parse(body);
	if (root == NULL)
		return;
	tie_to_context(root);
	if (!cJSON_IsObject(root))
		return;
	response->parsed = true;

	item = cJSON_GetObjectItemCaseSensitive(root, "results");
	if (cJSON_IsNumber(item) && item->valuedouble >= 0 && item->valuedouble <= INT_MAX)
		response->results = (int) item->valuedouble;
	item = cJSON_GetObjectItemCaseSensitive(root, "failed");
	if (cJSON_IsNumber(item) && item->valuedouble >= 0 && item->valuedouble <= INT_MAX)
		response->failed = (int) item->valuedouble;
	item = cJSON_GetObjectItemCaseSensitive(root, "error");
	if (cJSON_IsString(item))
		response->error = bento_sanitize_excerpt(item->valuestring,
												 strlen(item->valuestring),
												 1000, true);

	errors = cJSON_GetObjectItemCaseSensitive(root, "errors");
	if (cJSON_IsArray(errors))
	{
		int			n = cJSON_GetArraySize(errors);

		response->error_index = palloc(sizeof(int) * Max(n, 1));
		response->error_text = palloc(sizeof(char *) * Max(n, 1));
		cJSON_ArrayForEach(item, errors)
		{
			cJSON	   *index = cJSON_GetObjectItemCaseSensitive(item, "index");
			cJSON	   *text = cJSON_GetObjectItemCaseSensitive(item, "error");
			const char *msg;

			if (!cJSON_IsNumber(index) || index->valuedouble < 0 ||
				index->valuedouble > INT_MAX)
				continue;
			if (cJSON_IsString(text))
				msg = text->valuestring;
			else
				msg = "rejected by Bento (no reason given)";
			response->error_index[response->nerrors] = (int) index->valuedouble;
			response->error_text[response->nerrors] =
				bento_sanitize_excerpt(msg, strlen(msg), 1000, true);
			response->nerrors++;
		}
	}
}

/*
 * Make text from a remote answer safe to store and to read: valid in the
 * database encoding, no control characters (with single_line, no line
 * breaks either and runs of white space folded), at most max bytes,
 * "..." appended when cut.  Returns a palloc'd string.
 */
char *
bento_sanitize_excerpt(const char *body, size_t len, size_t max,
					   bool single_line)
{
	StringInfoData out;
	int			encoding = GetDatabaseEncoding();
	const char *p = body;
	const char *end = body + len;
	bool		cut = false;
	bool		last_space = true;	/* trims leading white space */

	initStringInfo(&out);
	while (p < end)
	{
		unsigned char c = (unsigned char) *p;
		int			clen;

		if (out.len >= (int) max)
		{
			cut = true;
			break;
		}
		if (c < 0x80)
		{
			bool		space = (c == ' ' || c == '\t' || c == '\r' || c == '\n');

			if (single_line && space)
			{
				if (!last_space)
					appendStringInfoChar(&out, ' ');
				last_space = true;
			}
			else if (c < 0x20 && !(c == '\n' || c == '\t'))
				appendStringInfoChar(&out, ' ');
			else if (c == 0x7f)
				appendStringInfoChar(&out, ' ');
			else
			{
				appendStringInfoChar(&out, (char) c);
				last_space = false;
			}
			p++;
			continue;
		}

		clen = pg_encoding_verifymbchar(encoding, p, end - p);
		if (clen <= 0)
		{
			appendStringInfoChar(&out, '?');
			p++;
		}
		else
		{
			if (out.len + clen > (int) max)
			{
				cut = true;
				break;
			}
			appendBinaryStringInfo(&out, p, clen);
			p += clen;
		}
		last_space = false;
	}

	if (single_line)
		while (out.len > 0 && out.data[out.len - 1] == ' ')
			out.data[--out.len] = '\0';
	if (cut)
		appendStringInfoString(&out, "...");

	return out.data;
}
