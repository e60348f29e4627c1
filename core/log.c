/* log.c: logfmt / JSON-lines records to a file descriptor, one write() per record.
 *
 * log.c owns formatting and writing log records; it never allocates and never blocks on
 * anything but the write() of a record. A record longer than the buffer is cut at a unit
 * boundary and marked truncated=true; it still ends in a newline and stays valid JSON. */
#include "core/log.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static fc_log_level min_level = FC_LOG_INFO;
static int use_json;
static int log_fd = 2;

void fc_log_set_level(fc_log_level lvl) { min_level = lvl; }
fc_log_level fc_log_get_level(void) { return min_level; }
void fc_log_set_json(int on) { use_json = on; }
void fc_log_set_fd(int fd) { log_fd = fd; }

static const char *level_name(fc_log_level lvl) {
    switch (lvl) {
    case FC_LOG_DEBUG:
        return "debug";
    case FC_LOG_INFO:
        return "info";
    case FC_LOG_WARN:
        return "warn";
    case FC_LOG_ERROR:
        return "error";
    }
    return "info";
}

int fc_log_parse_level(const char *s, fc_log_level *out) {
    static const fc_log_level all[] = {FC_LOG_DEBUG, FC_LOG_INFO, FC_LOG_WARN, FC_LOG_ERROR};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (strcmp(s, level_name(all[i])) == 0) {
            *out = all[i];
            return 0;
        }
    return -1;
}

/* A bounded appender. Output is written in units (a character, an escape sequence, a UTF-8
 * sequence, a whole numeric field) that go in whole or not at all, below `limit`; the bytes
 * above the limit are kept for what closes a record cut short (closing quote, truncation
 * marker, '}' and '\n'), so a truncated record is still one well-formed line and, in JSON
 * mode, still valid JSON. */
typedef struct out {
    char *buf;
    size_t size, len;
    size_t limit; /* units may not end past this */
    int full;     /* a unit did not fit: everything after it is dropped */
} out;

#define TRUNC_LOGFMT " truncated=true"
#define TRUNC_JSON ",\"truncated\":true"
/* Below this buffer size only an empty line is produced. */
#define MIN_RECORD 128

/* Appends n bytes as one unit, leaving `keep` bytes below the limit free for closing. */
static int put_unit(out *o, const char *s, size_t n, size_t keep) {
    if (o->full || o->len + n + keep > o->limit) {
        o->full = 1;
        return 0;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = '\0';
    return 1;
}

/* Appends closing bytes whose room was kept (by `keep` or by the space above the limit). */
static void put_closing(out *o, const char *s) {
    size_t n = strlen(s);
    assert(o->len + n < o->size);
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = '\0';
}

static int logfmt_needs_quotes(const char *s) {
    if (!*s)
        return 1;
    for (; *s; s++)
        if ((unsigned char)*s <= ' ' || *s == '=' || *s == '"' || *s == '\\' ||
            (unsigned char)*s >= 0x7f)
            return 1;
    return 0;
}

/* Length of the well-formed UTF-8 sequence at s (2..4), or 0 if it is not one. */
static size_t utf8_len(const unsigned char *s) {
    unsigned char c = s[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        if (c == 0xED)
            hi = 0x9F; /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90; /* overlong */
        if (c == 0xF4)
            hi = 0x8F; /* above U+10FFFF */
    } else {
        return 0;
    }
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return n;
}

/* Writes the characters of s, escaped for a quoted logfmt value or a JSON string (the same
 * escapes suffice), each as a unit keeping `keep` bytes. In JSON, bytes that are not UTF-8
 * become U+FFFD so that the line stays valid JSON. */
static void put_escaped(out *o, int json, const char *str, size_t keep) {
    const unsigned char *s = (const unsigned char *)str;
    while (*s) {
        char tmp[8];
        const char *unit = tmp;
        size_t n = 0, advance = 1;
        switch (*s) {
        case '"':
            unit = "\\\"";
            break;
        case '\\':
            unit = "\\\\";
            break;
        case '\n':
            unit = "\\n";
            break;
        case '\r':
            unit = "\\r";
            break;
        case '\t':
            unit = "\\t";
            break;
        default:
            if (*s < 0x20 || *s == 0x7f) {
                snprintf(tmp, sizeof tmp, "\\u%04x", *s);
            } else if (*s < 0x80) {
                unit = (const char *)s;
                n = 1;
            } else if ((advance = utf8_len(s)) != 0) {
                unit = (const char *)s;
                n = advance;
            } else {
                advance = 1;
                if (json) {
                    unit = "\\ufffd";
                } else {
                    unit = (const char *)s;
                    n = 1;
                }
            }
        }
        if (n == 0)
            n = strlen(unit);
        if (!put_unit(o, unit, n, keep))
            return;
        s += advance;
    }
}

/* prefix is written with the value's opening quote as one unit, so a record is never cut
 * between a key and its value. */
static void put_string_field(out *o, int json, const char *prefix, const char *s) {
    if (!s)
        s = "";
    int quoted = json || logfmt_needs_quotes(s);
    char head[160];
    snprintf(head, sizeof head, "%s%s", prefix, quoted ? "\"" : "");
    if (!put_unit(o, head, strlen(head), quoted ? 1 : 0))
        return;
    if (quoted) {
        put_escaped(o, json, s, 1);
        put_closing(o, "\"");
    } else {
        put_escaped(o, json, s, 0);
    }
}

/* The "key=" or ,"key": that starts a field (keys are program constants). */
static void field_prefix(char *dst, size_t size, int json, const char *key) {
    if (!json) {
        snprintf(dst, size, " %s=", key);
        return;
    }
    out k = {dst, size, 0, size - 1, 0};
    dst[0] = '\0';
    put_unit(&k, ",\"", 2, 2);
    put_escaped(&k, 1, key, 2);
    k.full = 0;
    put_unit(&k, "\":", 2, 0);
}

static void put_field(out *o, int json, const fc_log_field *f) {
    char prefix[128], unit[200];
    field_prefix(prefix, sizeof prefix, json, f->key ? f->key : "field");
    switch (f->kind) {
    case FC_LOGF_STR:
        put_string_field(o, json, prefix, f->v.s);
        return;
    case FC_LOGF_INT:
        snprintf(unit, sizeof unit, "%s%lld", prefix, f->v.i);
        break;
    case FC_LOGF_UINT:
        snprintf(unit, sizeof unit, "%s%llu", prefix, f->v.u);
        break;
    case FC_LOGF_DBL:
        if (f->v.d != f->v.d || f->v.d - f->v.d != 0) /* NaN or inf: not valid JSON numbers */
            snprintf(unit, sizeof unit, json ? "%snull" : "%s%g", prefix, f->v.d);
        else
            snprintf(unit, sizeof unit, "%s%.6g", prefix, f->v.d);
        break;
    case FC_LOGF_END:
        return;
    }
    put_unit(o, unit, strlen(unit), 0);
}

size_t fc_log_format(char *buf, size_t size, int json, long long unix_ms, fc_log_level lvl,
                     const char *msg, const fc_log_field *fields) {
    if (size == 0)
        return 0;
    buf[0] = '\0';
    if (size < MIN_RECORD) {
        if (size < 2)
            return 0;
        buf[0] = '\n';
        buf[1] = '\0';
        return 1;
    }
    /* Above the limit: the truncation marker, '}' in JSON, '\n' and the NUL. */
    size_t tail = (json ? strlen(TRUNC_JSON) + 1 : strlen(TRUNC_LOGFMT)) + 2;
    out o = {buf, size, 0, size - tail, 0};
    char ts[40], head[96];
    time_t secs = (time_t)(unix_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof ts - n, ".%03dZ", (int)(unix_ms % 1000));
    if (json)
        snprintf(head, sizeof head, "{\"ts\":\"%s\",\"level\":\"%s\"", ts, level_name(lvl));
    else
        snprintf(head, sizeof head, "ts=%s level=%s", ts, level_name(lvl));
    put_unit(&o, head, strlen(head), 0); /* at most 95 bytes: always fits in MIN_RECORD */
    put_string_field(&o, json, json ? ",\"msg\":" : " msg=", msg);
    for (const fc_log_field *f = fields; f && f->kind != FC_LOGF_END; f++)
        put_field(&o, json, f);
    if (o.full)
        put_closing(&o, json ? TRUNC_JSON : TRUNC_LOGFMT);
    if (json)
        put_closing(&o, "}");
    put_closing(&o, "\n");
    return o.len;
}

void fc_log_fields(fc_log_level lvl, const char *msg, const fc_log_field *fields) {
    if (lvl < min_level)
        return;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    long long ms = (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    char buf[4096];
    size_t len = fc_log_format(buf, sizeof buf, use_json, ms, lvl, msg, fields);
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(log_fd, buf + off, len - off);
        if (w <= 0)
            break; /* nowhere to report a failing log; drop the record */
        off += (size_t)w;
    }
}

void fc_log_msg(fc_log_level lvl, const char *msg) {
    static const fc_log_field none[] = {{.kind = FC_LOGF_END}};
    fc_log_fields(lvl, msg, none);
}
