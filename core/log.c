/* log.c: logfmt / JSON-lines records to a file descriptor, one write() per record. */
#include "core/log.h"

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

/* A bounded appender: once full, further output is dropped and the record is cut short. */
typedef struct out {
    char *buf;
    size_t size, len;
} out;

static void put(out *o, const char *s, size_t n) {
    if (o->len >= o->size)
        return;
    size_t room = o->size - o->len - 1;
    if (n > room)
        n = room;
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = '\0';
}

static void puts_(out *o, const char *s) { put(o, s, strlen(s)); }

static void putc_(out *o, char c) { put(o, &c, 1); }

static int logfmt_needs_quotes(const char *s) {
    if (!*s)
        return 1;
    for (; *s; s++)
        if ((unsigned char)*s <= ' ' || *s == '=' || *s == '"' || *s == '\\' ||
            (unsigned char)*s >= 0x7f)
            return 1;
    return 0;
}

/* Escapes for both logfmt quoted values and JSON strings (the same escapes suffice). */
static void put_escaped(out *o, const char *s) {
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char tmp[8];
        switch (c) {
        case '"':
            puts_(o, "\\\"");
            break;
        case '\\':
            puts_(o, "\\\\");
            break;
        case '\n':
            puts_(o, "\\n");
            break;
        case '\r':
            puts_(o, "\\r");
            break;
        case '\t':
            puts_(o, "\\t");
            break;
        default:
            if (c < 0x20 || c == 0x7f) {
                snprintf(tmp, sizeof tmp, "\\u%04x", c);
                puts_(o, tmp);
            } else {
                putc_(o, (char)c);
            }
        }
    }
}

static void put_string_value(out *o, int json, const char *s) {
    if (!s)
        s = "";
    if (json || logfmt_needs_quotes(s)) {
        putc_(o, '"');
        put_escaped(o, s);
        putc_(o, '"');
    } else {
        puts_(o, s);
    }
}

static void put_field(out *o, int json, const char *key, const fc_log_field *f) {
    char num[64];
    if (json) {
        puts_(o, ",\"");
        put_escaped(o, key);
        puts_(o, "\":");
    } else {
        putc_(o, ' ');
        puts_(o, key);
        putc_(o, '=');
    }
    switch (f->kind) {
    case FC_LOGF_STR:
        put_string_value(o, json, f->v.s);
        return;
    case FC_LOGF_INT:
        snprintf(num, sizeof num, "%lld", f->v.i);
        break;
    case FC_LOGF_UINT:
        snprintf(num, sizeof num, "%llu", f->v.u);
        break;
    case FC_LOGF_DBL:
        if (f->v.d != f->v.d || f->v.d - f->v.d != 0) /* NaN or inf: not valid JSON numbers */
            snprintf(num, sizeof num, json ? "null" : "%g", f->v.d);
        else
            snprintf(num, sizeof num, "%.6g", f->v.d);
        break;
    case FC_LOGF_END:
        return;
    }
    puts_(o, num);
}

size_t fc_log_format(char *buf, size_t size, int json, long long unix_ms, fc_log_level lvl,
                     const char *msg, const fc_log_field *fields) {
    out o = {buf, size, 0};
    if (size == 0)
        return 0;
    buf[0] = '\0';
    char ts[40];
    time_t secs = (time_t)(unix_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof ts - n, ".%03dZ", (int)(unix_ms % 1000));
    if (json) {
        puts_(&o, "{\"ts\":\"");
        puts_(&o, ts);
        puts_(&o, "\",\"level\":\"");
        puts_(&o, level_name(lvl));
        puts_(&o, "\",\"msg\":");
        put_string_value(&o, 1, msg);
    } else {
        puts_(&o, "ts=");
        puts_(&o, ts);
        puts_(&o, " level=");
        puts_(&o, level_name(lvl));
        puts_(&o, " msg=");
        put_string_value(&o, 0, msg);
    }
    for (const fc_log_field *f = fields; f && f->kind != FC_LOGF_END; f++)
        put_field(&o, json, f->key ? f->key : "field", f);
    if (json)
        putc_(&o, '}');
    /* Always end with a newline, even if the record was cut short. */
    if (o.len + 1 < o.size) {
        putc_(&o, '\n');
    } else {
        buf[o.size - 2] = '\n';
        buf[o.size - 1] = '\0';
        o.len = o.size - 1;
    }
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
