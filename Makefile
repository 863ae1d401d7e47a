# Makefile for the bento extension (PGXS)

EXTENSION = bento
EXTVERSION = $(shell grep default_version $(EXTENSION).control | sed -e "s/default_version[[:space:]]*=[[:space:]]*'\([^']*\)'/\1/")

MODULE_big = bento
OBJS = \
	src/bento.o \
	src/guc.o \
	src/worker.o \
	src/outbox.o \
	src/http.o \
	src/payload.o \
	src/retry.o \
	src/functions.o \
	src/trigger.o

DATA = $(wildcard sql/$(EXTENSION)--*.sql)

REGRESS = track validation dedupe guc status retry watch
REGRESS_OPTS = --inputdir=. --temp-instance=tmp_check_regress --temp-config=t/regress.conf
ISOLATION = dedupe_race claim_race
ISOLATION_OPTS = --inputdir=. --temp-instance=tmp_check_iso --temp-config=t/isolation.conf
TAP_TESTS = 1

PG_CPPFLAGS = -DBENTO_VERSION=\"$(EXTVERSION)\"
SHLIB_LINK = -lcurl -lcjson

# "make BENTO_WERROR=1" builds with every warning we care about turned into an error (CI does this).
ifdef BENTO_WERROR
PG_CFLAGS += -Wall -Wextra -Wno-unused-parameter -Wno-sign-compare -Wno-missing-field-initializers -Werror
endif

EXTRA_CLEAN = tmp_check_regress tmp_check_iso output_iso

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)
