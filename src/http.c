/*-------------------------------------------------------------------------
 *
 * http.c
 *	  The worker's HTTP client: one libcurl handle, one request at a time.
 *
 * Nothing here touches the database.  The handle lives as long as the
 * worker, so the connection to Bento is kept alive between batches.  A
 * transfer is aborted from libcurl's progress callback when the worker is
 * asked to shut down or the postmaster dies; the callbacks never ereport or
 * allocate, they only set flags that are looked at after curl returns.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "miscadmin.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/pmsignal.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "bento.h"

static CURL *bento_curl = NULL;
static char bento_curl_errbuf[CURL_ERROR_SIZE];

/* State the callbacks of the current transfer write into. */
typedef struct TransferState
{
	BentoHttpResult *result;
	char	   *buf;			/* BENTO_MAX_RESPONSE_BYTES + 1 bytes */
	size_t		len;			/* bytes kept in buf */
	size_t		received;		/* bytes of body received */
} TransferState;

/*
 * Report a failed curl_easy_setopt: that is a bug or a libcurl built
 * without something we need, not a remote failure.
 */
#define bento_setopt(handle, opt, value) \
	do { \
		CURLcode	setopt_rc = curl_easy_setopt((handle), (opt), (value)); \
		if (setopt_rc != CURLE_OK) \
			ereport(ERROR, \
					(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION), \
					 errmsg("could not set libcurl option %s: %s", \
							#opt, curl_easy_strerror(setopt_rc)))); \
	} while (0)

/*
 * before_shmem_exit callback: release the handle and libcurl's globals.
 */
static void
bento_http_cleanup(int code, Datum arg)
{
	if (bento_curl != NULL)
	{
		curl_easy_cleanup(bento_curl);
		bento_curl = NULL;
	}
	curl_global_cleanup();
}

/*
 * Set up libcurl for this process.  Called once, by the worker.
 */
void
bento_http_init(void)
{
	CURLcode	rc;

	rc = curl_global_init(CURL_GLOBAL_DEFAULT);
	if (rc != CURLE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("could not initialize libcurl: %s", curl_easy_strerror(rc))));

	bento_curl = curl_easy_init();
	if (bento_curl == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl handle")));

	before_shmem_exit(bento_http_cleanup, (Datum) 0);
}

/*
 * Decide whether the worker may post to this URL.  Returns NULL when it
 * may, or a sentence saying why not.  *plain_http tells whether the URL is
 * an allowed http:// (loopback) one.
 */
static const char *
classify_url(const char *url, bool *plain_http)
{
	CURLU	   *u;
	char	   *scheme = NULL;
	char	   *host = NULL;
	char	   *userinfo = NULL;
	const char *problem = NULL;

	*plain_http = false;

	u = curl_url();
	if (u == NULL)
		return "Out of memory while parsing the URL.";

	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK)
		problem = "The value is not a valid absolute URL.";
	else if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK)
		problem = "The URL has no scheme.";
	else if (pg_strcasecmp(scheme, "https") != 0 && pg_strcasecmp(scheme, "http") != 0)
		problem = "Only https:// URLs are supported.";
	else if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
		problem = "The URL has no host.";
	else if (curl_url_get(u, CURLUPART_USER, &userinfo, 0) == CURLUE_OK)
		problem = "The URL must not contain credentials; set bento.publishable_key and bento.secret_key instead.";
	else if (pg_strcasecmp(scheme, "https") == 0)
		problem = NULL;
	else
	{
		if (pg_strcasecmp(host, "127.0.0.1") == 0 ||
			pg_strcasecmp(host, "localhost") == 0 ||
			strcmp(host, "[::1]") == 0)
			*plain_http = true;
		else
			problem = "http:// is allowed only for a loopback host (127.0.0.1, ::1 or localhost); use https://.";
	}

	if (scheme)
		curl_free(scheme);
	if (host)
		curl_free(host);
	if (userinfo)
		curl_free(userinfo);
	curl_url_cleanup(u);

	return problem;
}

/*
 * Check a candidate value of bento.api_url; see classify_url.
 */
const char *
bento_http_url_problem(const char *url)
{
	bool		plain_http;

	return classify_url(url, &plain_http);
}

/*
 * Memory-context reset callback that frees a per-request header list.
 */
static void
free_header_list(void *arg)
{
	curl_slist_free_all((struct curl_slist *) arg);
}

/*
 * Append to a header list; out of memory is reported after, not inside,
 * libcurl.
 */
static struct curl_slist *
append_header(struct curl_slist *list, const char *header)
{
	struct curl_slist *newlist = curl_slist_append(list, header);

	if (newlist == NULL)
	{
		curl_slist_free_all(list);
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory while building request headers")));
	}
	return newlist;
}

/*
 * libcurl write callback: keep the first BENTO_MAX_RESPONSE_BYTES of the
 * body, note that there was more, and stop the transfer past
 * BENTO_MAX_READ_BYTES.
 */
static size_t
write_body(char *data, size_t size, size_t nmemb, void *userdata)
{
	TransferState *state = (TransferState *) userdata;
	size_t		n = size * nmemb;
	size_t		room = BENTO_MAX_RESPONSE_BYTES - state->len;

	/* A body this large is not an answer from Bento: stop reading. */
	state->received += n;
	if (state->received > BENTO_MAX_READ_BYTES)
	{
		state->result->body_overflow = true;
		state->result->body_truncated = true;
		return 0;
	}

	if (n > room)
	{
		state->result->body_truncated = true;
		memcpy(state->buf + state->len, data, room);
		state->len += room;
	}
	else
	{
		memcpy(state->buf + state->len, data, n);
		state->len += n;
	}
	return n;
}

/*
 * libcurl header callback: pick up Retry-After (delta-seconds or an HTTP
 * date).  Headers of an earlier response (a 100 Continue) are overwritten
 * by later ones because libcurl calls us for every header line.
 */
static size_t
read_header(char *data, size_t size, size_t nmemb, void *userdata)
{
	TransferState *state = (TransferState *) userdata;
	size_t		n = size * nmemb;
	static const char name[] = "retry-after:";
	char		value[128];
	size_t		vlen;
	char	   *p;

	if (n <= sizeof(name) - 1 || pg_strncasecmp(data, name, sizeof(name) - 1) != 0)
		return n;

	vlen = Min(n - (sizeof(name) - 1), sizeof(value) - 1);
	memcpy(value, data + sizeof(name) - 1, vlen);
	value[vlen] = '\0';
	/* trim */
	p = value;
	while (*p == ' ' || *p == '\t')
		p++;
	while (vlen > 0 && (value[vlen - 1] == '\r' || value[vlen - 1] == '\n' ||
						value[vlen - 1] == ' ' || value[vlen - 1] == '\t'))
		value[--vlen] = '\0';

	if (*p >= '0' && *p <= '9')
	{
		char	   *end;
		long		secs = strtol(p, &end, 10);

		if (*end == '\0' && secs >= 0)
			state->result->retry_after_ms = (int) Min(secs, 24L * 60 * 60) * 1000;
	}
	else if (*p != '\0')
	{
		time_t		when = curl_getdate(p, NULL);

		if (when != -1)
		{
			time_t		now = time(NULL);
			long		secs = (when > now) ? (long) (when - now) : 0;

			state->result->retry_after_ms = (int) Min(secs, 24L * 60 * 60) * 1000;
		}
	}
	return n;
}

/*
 * libcurl progress callback: abort the transfer when the worker must stop.
 * Called at least once a second while a transfer runs.
 */
static int
check_abort(void *userdata, curl_off_t dltotal, curl_off_t dlnow,
			curl_off_t ultotal, curl_off_t ulnow)
{
	TransferState *state = (TransferState *) userdata;

	if (ShutdownRequestPending || !PostmasterIsAlive())
	{
		state->result->aborted = true;
		return 1;
	}
	return 0;
}

/*
 * POST one batch body to {bento.api_url}/batch/events, authenticated with
 * bento.publishable_key and secret.  Remote failures are
 * returned in *result, never raised; errors are raised only for our own
 * problems (bad settings, out of memory).  Runs with no transaction open.
 * Allocations are made in CurrentMemoryContext, which the caller resets.
 */
void
bento_http_post_batch(const char *body, size_t body_len,
					  const char *secret, BentoHttpResult *result)
{
	TransferState state;
	struct curl_slist *headers = NULL;
	MemoryContextCallback *cb;
	char	   *site;
	char	   *url;
	size_t		baselen;
	bool		plain_http;
	const char *problem;
	CURLcode	rc;
	long		request_size = 0;
	TimestampTz start;

	Assert(bento_curl != NULL);

	memset(result, 0, sizeof(*result));
	result->retry_after_ms = -1;

	problem = classify_url(bento_api_url, &plain_http);
	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for parameter \"bento.api_url\""),
				 errdetail("%s", problem)));

	site = curl_easy_escape(bento_curl, bento_site_uuid, 0);
	if (site == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory while building the request URL")));
	baselen = strlen(bento_api_url);
	while (baselen > 0 && bento_api_url[baselen - 1] == '/')
		baselen--;
	url = psprintf("%.*s/batch/events?site_uuid=%s", (int) baselen,
				   bento_api_url, site);
	curl_free(site);

	headers = append_header(headers, "Content-Type: application/json");
	headers = append_header(headers, "Accept: application/json");
	/* Never wait for "100 Continue" before sending a large batch. */
	headers = append_header(headers, "Expect:");
	cb = palloc(sizeof(MemoryContextCallback));
	cb->func = free_header_list;
	cb->arg = headers;
	MemoryContextRegisterResetCallback(CurrentMemoryContext, cb);

	state.result = result;
	state.buf = palloc(BENTO_MAX_RESPONSE_BYTES + 1);
	state.len = 0;
	state.received = 0;
	bento_curl_errbuf[0] = '\0';

	curl_easy_reset(bento_curl);
	bento_setopt(bento_curl, CURLOPT_URL, url);
#if LIBCURL_VERSION_NUM >= 0x075500
	bento_setopt(bento_curl, CURLOPT_PROTOCOLS_STR, plain_http ? "http,https" : "https");
#else
	bento_setopt(bento_curl, CURLOPT_PROTOCOLS,
				 plain_http ? (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS) : (long) CURLPROTO_HTTPS);
#endif
	bento_setopt(bento_curl, CURLOPT_FOLLOWLOCATION, 0L);
	bento_setopt(bento_curl, CURLOPT_SSL_VERIFYPEER, 1L);
	bento_setopt(bento_curl, CURLOPT_SSL_VERIFYHOST, 2L);
	bento_setopt(bento_curl, CURLOPT_NOSIGNAL, 1L);
	bento_setopt(bento_curl, CURLOPT_TIMEOUT_MS, (long) bento_request_timeout);
	bento_setopt(bento_curl, CURLOPT_CONNECTTIMEOUT_MS,
				 (long) Min(bento_request_timeout, 10 * 1000));
	bento_setopt(bento_curl, CURLOPT_USERAGENT, BENTO_USER_AGENT);
	bento_setopt(bento_curl, CURLOPT_HTTPAUTH, (long) CURLAUTH_BASIC);
	bento_setopt(bento_curl, CURLOPT_USERNAME, bento_publishable_key);
	bento_setopt(bento_curl, CURLOPT_PASSWORD, secret);
	bento_setopt(bento_curl, CURLOPT_HTTPHEADER, headers);
	bento_setopt(bento_curl, CURLOPT_POST, 1L);
	bento_setopt(bento_curl, CURLOPT_POSTFIELDS, body);
	bento_setopt(bento_curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) body_len);
	bento_setopt(bento_curl, CURLOPT_WRITEFUNCTION, write_body);
	bento_setopt(bento_curl, CURLOPT_WRITEDATA, &state);
	bento_setopt(bento_curl, CURLOPT_HEADERFUNCTION, read_header);
	bento_setopt(bento_curl, CURLOPT_HEADERDATA, &state);
	bento_setopt(bento_curl, CURLOPT_NOPROGRESS, 0L);
	bento_setopt(bento_curl, CURLOPT_XFERINFOFUNCTION, check_abort);
	bento_setopt(bento_curl, CURLOPT_XFERINFODATA, &state);
	bento_setopt(bento_curl, CURLOPT_ERRORBUFFER, bento_curl_errbuf);

	start = GetCurrentTimestamp();
	rc = curl_easy_perform(bento_curl);
	result->duration_ms =
		(double) (GetCurrentTimestamp() - start) / 1000.0;

	result->curl_code = (int) rc;
	if (curl_easy_getinfo(bento_curl, CURLINFO_RESPONSE_CODE,
						  &result->http_status) != CURLE_OK)
		result->http_status = 0;
	if (curl_easy_getinfo(bento_curl, CURLINFO_REQUEST_SIZE,
						  &request_size) == CURLE_OK && request_size > 0)
		result->request_sent = true;

	if (rc != CURLE_OK)
	{
		const char *text = bento_curl_errbuf[0] ? bento_curl_errbuf : curl_easy_strerror(rc);

		if (result->aborted)
			text = "request aborted because the worker is shutting down";
		else if (result->body_overflow)
			text = "response body larger than 64 kB; reading stopped";
		strlcpy(result->error, text, sizeof(result->error));
	}

	state.buf[state.len] = '\0';
	result->body = state.buf;
	result->body_len = state.len;

	/* The header list dies with the memory context; don't leave it behind. */
	bento_setopt(bento_curl, CURLOPT_HTTPHEADER, NULL);
	bento_setopt(bento_curl, CURLOPT_POSTFIELDS, NULL);
}
