/*-------------------------------------------------------------------------
 *
 * compat.h
 *	  Shims for the PostgreSQL versions bento builds against (15, 16, 17).
 *
 *-------------------------------------------------------------------------
 */
#ifndef BENTO_COMPAT_H
#define BENTO_COMPAT_H

#if PG_VERSION_NUM < 150000
#error "bento requires PostgreSQL 15 or later"
#endif

/*
 * PostgreSQL 17 moved the backend-status functions used by the worker to
 * their own header; 15 and 16 get them from pgstat.h.
 */
#if PG_VERSION_NUM >= 170000
#include "utils/backend_status.h"
#endif

#endif							/* BENTO_COMPAT_H */
