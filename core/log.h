/* log.h: structured logging in logfmt (default) or JSON lines, to stderr.
 *
 *   FC_LOG(FC_LOG_INFO, "round committed", FC_LI("round", 12), FC_LS("rule", "krum"));
 *   -> ts=2026-11-28T12:00:00.123Z level=info msg="round committed" round=12 rule=krum
 *
 * Values are quoted and escaped as logfmt requires. Each record is written with one write() so
 * lines from different threads never interleave. Secrets (tokens, keys) must never be passed to
 * the logger; there is no field kind for them on purpose.
 */
#ifndef FC_LOG_H
#define FC_LOG_H

#include <stdio.h>

typedef enum fc_log_level {
    FC_LOG_DEBUG = 0,
    FC_LOG_INFO = 1,
    FC_LOG_WARN = 2,
    FC_LOG_ERROR = 3,
} fc_log_level;

typedef enum fc_log_kind { FC_LOGF_END = 0, FC_LOGF_STR, FC_LOGF_INT, FC_LOGF_UINT, FC_LOGF_DBL } fc_log_kind;

typedef struct fc_log_field {
    fc_log_kind kind;
    const char *key;
    union {
        const char *s;
        long long i;
        unsigned long long u;
        double d;
    } v;
} fc_log_field;

#define FC_LS(k, val) ((fc_log_field){.kind = FC_LOGF_STR, .key = (k), .v.s = (val)})
#define FC_LI(k, val) ((fc_log_field){.kind = FC_LOGF_INT, .key = (k), .v.i = (long long)(val)})
#define FC_LU(k, val)                                                                             \
    ((fc_log_field){.kind = FC_LOGF_UINT, .key = (k), .v.u = (unsigned long long)(val)})
#define FC_LD(k, val) ((fc_log_field){.kind = FC_LOGF_DBL, .key = (k), .v.d = (double)(val)})
#define FC_LOG_END_FIELD ((fc_log_field){.kind = FC_LOGF_END})

/* Logs msg with the given fields (at least one; use fc_log_msg for none). */
#define FC_LOG(lvl, msg, ...)                                                                     \
    fc_log_fields((lvl), (msg), (const fc_log_field[]){__VA_ARGS__, FC_LOG_END_FIELD})

void fc_log_fields(fc_log_level lvl, const char *msg, const fc_log_field *fields);
void fc_log_msg(fc_log_level lvl, const char *msg);

/* Configuration; call before threads start. Default: info, logfmt, fd 2. */
void fc_log_set_level(fc_log_level lvl);
fc_log_level fc_log_get_level(void);
void fc_log_set_json(int on);
void fc_log_set_fd(int fd);
/* Parses "debug", "info", "warn", "error". Returns 0 on success, -1 if unknown. */
int fc_log_parse_level(const char *s, fc_log_level *out);

/* Formats one record into buf, NUL-terminated and ending in '\n' (if size >= 2); returns the
 * length written. A record that does not fit is cut at a character boundary and marked
 * truncated=true, and stays valid JSON in JSON mode; below 128 bytes only "\n" is written.
 * Exposed for tests. */
size_t fc_log_format(char *buf, size_t size, int json, long long unix_ms, fc_log_level lvl,
                     const char *msg, const fc_log_field *fields);

#endif
