/* config.c: INI configuration on libinih, validated against a caller-supplied schema.
 *
 * config.c owns the parsed values of one configuration; it never knows which keys a program
 * has (the schema is passed in), never logs and never aborts on bad input.
 *
 * libinih is fed through ini_parse_stream with our own line reader. The reader knows the line
 * number of every entry the handler sees, and it closes the gaps where inih would silently
 * change the input:
 *   - a line longer than inih's buffer would be split into two "lines": it is an error;
 *   - a NUL byte would cut a line short: it is an error;
 *   - an indented line would continue the previous value: leading whitespace is removed
 *     before inih sees the line, so there are no continuation lines;
 *   - a section header is never reported to the handler, so an empty unknown section, or
 *     text after ']', would pass unseen: the reader checks headers itself.
 * A load collects values into a pending set and commits them only if the whole file is valid,
 * so a failed load leaves the configuration as it was.
 */
#include "core/config.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"

/* inih's buffer holds a line, "\r\n" and the NUL. */
_Static_assert(FC_CONFIG_MAX_LINE + 3 <= INI_MAX_LINE, "FC_CONFIG_MAX_LINE exceeds inih's buffer");

#define NAME_MAX_LEN 40 /* inih keeps 49 characters of a name; ours stay well below */
#define SHOW_MAX 80     /* bytes of a bad value quoted in a message */
#define SHOW_BUF (SHOW_MAX * 4 + 8) /* each byte may become a 4-byte \xNN escape */

typedef union value {
    int64_t i;  /* int, duration (ms) */
    uint64_t u; /* size */
    double d;   /* double */
    bool b;     /* bool */
    size_t e;   /* enum index */
} value;

/* A set value: its text as given (after trimming and unquoting), where it came from, and its
 * parsed form. text == NULL means "not set". */
typedef struct setting {
    char *text;
    char *where;
    value v;
    int line; /* file line, for duplicate detection in a load */
} setting;

typedef struct slot {
    value def;
    bool has_min, has_max;
    value min, max;
    fc_config_source source;
    setting cur;
} slot;

struct fc_config {
    const fc_config_key *schema;
    size_t n;
    slot *slots;
};

/* ---- small text helpers ---- */

static bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

/* Copies s (len bytes) into dst as a readable, escaped excerpt of at most SHOW_MAX bytes. */
static void show(char *dst, size_t size, const char *s, size_t len) {
    size_t o = 0;
    for (size_t i = 0; i < len && o + 8 < size; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i >= SHOW_MAX) {
            memcpy(dst + o, "...", 3);
            o += 3;
            break;
        }
        if (c == '"' || c == '\\') {
            dst[o++] = '\\';
            dst[o++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            o += (size_t)snprintf(dst + o, size - o, "\\x%02x", c);
        } else {
            dst[o++] = (char)c;
        }
    }
    dst[o] = '\0';
}

/* A bounded comma-separated list builder: stops with ", ..." when the next name won't fit. */
typedef struct list {
    char buf[240];
    size_t len;
    bool full;
} list;

static void list_add(list *l, const char *name) {
    if (l->full)
        return;
    size_t need = strlen(name) + (l->len ? 2 : 0);
    if (l->len + need + 6 >= sizeof l->buf) {
        memcpy(l->buf + l->len, ", ...", 6);
        l->len += 5;
        l->full = true;
        return;
    }
    l->len += (size_t)snprintf(l->buf + l->len, sizeof l->buf - l->len, "%s%s",
                               l->len ? ", " : "", name);
}

static size_t edit_distance(const char *a, size_t la, const char *b) {
    size_t lb = strlen(b);
    if (la > 64 || lb > 64)
        return 99;
    size_t row[65];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (row[j] + 1 < best)
                best = row[j] + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

static bool name_eq(const char *name, const char *s, size_t len) {
    return strlen(name) == len && memcmp(name, s, len) == 0;
}

/* ---- schema lookups ---- */

static bool section_known(const fc_config *cfg, const char *s, size_t len) {
    for (size_t i = 0; i < cfg->n; i++)
        if (name_eq(cfg->schema[i].section, s, len))
            return true;
    return false;
}

static long key_index(const fc_config_key *schema, size_t n, const char *sec, size_t seclen,
                      const char *key, size_t keylen) {
    for (size_t i = 0; i < n; i++)
        if (name_eq(schema[i].section, sec, seclen) && name_eq(schema[i].key, key, keylen))
            return (long)i;
    return -1;
}

/* "unknown section [x] (did you mean [round]?)" or "...; known sections: a, b". */
static fc_status unknown_section(const fc_config *cfg, fc_error *err, const char *origin,
                                 const char *s, size_t len) {
    char shown[SHOW_BUF];
    show(shown, sizeof shown, s, len);
    const char *best = NULL;
    size_t best_d = 3;
    list known = {.len = 0};
    for (size_t i = 0; i < cfg->n; i++) {
        const char *sec = cfg->schema[i].section;
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++)
            seen = strcmp(cfg->schema[j].section, sec) == 0;
        if (seen)
            continue;
        list_add(&known, sec);
        size_t d = edit_distance(s, len, sec);
        if (d < best_d) {
            best_d = d;
            best = sec;
        }
    }
    if (best)
        return fc_error_set(err, FC_ERR_CONFIG, "%s: unknown section [%s] (did you mean [%s]?)",
                            origin, shown, best);
    return fc_error_set(err, FC_ERR_CONFIG, "%s: unknown section [%s]; known sections: %s",
                        origin, shown, known.buf);
}

static fc_status unknown_key(const fc_config *cfg, fc_error *err, const char *origin,
                             const char *sec, size_t seclen, const char *key, size_t keylen) {
    char shown_sec[SHOW_BUF], shown_key[SHOW_BUF];
    show(shown_sec, sizeof shown_sec, sec, seclen);
    show(shown_key, sizeof shown_key, key, keylen);
    const char *best = NULL;
    size_t best_d = 3;
    list known = {.len = 0};
    for (size_t i = 0; i < cfg->n; i++) {
        if (!name_eq(cfg->schema[i].section, sec, seclen))
            continue;
        list_add(&known, cfg->schema[i].key);
        size_t d = edit_distance(key, keylen, cfg->schema[i].key);
        if (d < best_d) {
            best_d = d;
            best = cfg->schema[i].key;
        }
    }
    if (best)
        return fc_error_set(err, FC_ERR_CONFIG, "%s: unknown key \"%s\" in [%s] (did you mean %s?)",
                            origin, shown_key, shown_sec, best);
    return fc_error_set(err, FC_ERR_CONFIG, "%s: unknown key \"%s\" in [%s]; known keys: %s",
                        origin, shown_key, shown_sec, known.buf);
}

/* ---- value parsers (syntax only; ranges are checked separately) ---- */

static bool parse_bool(const char *s, bool *out) {
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

/* Reads a run of decimal digits into *out; false on no digits or overflow. */
static bool parse_digits(const char **sp, uint64_t *out) {
    const char *s = *sp;
    uint64_t v = 0;
    if (!is_digit(*s))
        return false;
    for (; is_digit(*s); s++) {
        if (__builtin_mul_overflow(v, (uint64_t)10, &v) ||
            __builtin_add_overflow(v, (uint64_t)(*s - '0'), &v))
            return false;
    }
    *sp = s;
    *out = v;
    return true;
}

static bool parse_int(const char *s, int64_t *out) {
    bool neg = false;
    if (*s == '+' || *s == '-')
        neg = *s++ == '-';
    uint64_t mag;
    if (!parse_digits(&s, &mag) || *s)
        return false;
    if (neg) {
        if (mag > (uint64_t)INT64_MAX + 1)
            return false;
        *out = mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag;
    } else {
        if (mag > (uint64_t)INT64_MAX)
            return false;
        *out = (int64_t)mag;
    }
    return true;
}

static bool parse_size(const char *s, uint64_t *out) {
    static const struct {
        const char *suffix;
        unsigned shift;
        bool any_case;
    } units[] = {
        {"", 0, false},   {"B", 0, false},    {"K", 10, true},    {"KiB", 10, false},
        {"M", 20, true},  {"MiB", 20, false}, {"G", 30, true},    {"GiB", 30, false},
        {"T", 40, true},  {"TiB", 40, false},
    };
    uint64_t n;
    if (!parse_digits(&s, &n))
        return false;
    while (*s == ' ' || *s == '\t')
        s++;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        bool match = units[i].any_case ? strcasecmp(s, units[i].suffix) == 0
                                       : strcmp(s, units[i].suffix) == 0;
        if (!match)
            continue;
        if (units[i].shift && n > (UINT64_MAX >> units[i].shift))
            return false;
        *out = n << units[i].shift;
        return true;
    }
    return false;
}

/* A plain decimal number: [+-]digits[.digits][(e|E)[+-]digits], or [+-].digits[...]. strtod
 * alone would also take "inf", "nan", hex floats and leading spaces. */
static bool parse_double(const char *s, double *out) {
    const char *p = s;
    size_t digits = 0;
    if (*p == '+' || *p == '-')
        p++;
    for (; is_digit(*p); p++)
        digits++;
    if (*p == '.')
        for (p++; is_digit(*p); p++)
            digits++;
    if (digits == 0)
        return false;
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-')
            p++;
        if (!is_digit(*p))
            return false;
        while (is_digit(*p))
            p++;
    }
    if (*p)
        return false;
    errno = 0;
    char *end;
    double d = strtod(s, &end);
    if (end != p || errno == ERANGE || !isfinite(d))
        return false;
    *out = d;
    return true;
}

/* One or more <digits><unit> in strictly decreasing unit order (d, h, m, s, ms), or "0". */
static bool parse_duration(const char *s, int64_t *out) {
    static const struct {
        const char *unit;
        int64_t ms;
    } units[] = {{"ms", 1}, {"d", 86400000}, {"h", 3600000}, {"m", 60000}, {"s", 1000}};
    static const int rank[] = {0, 4, 3, 2, 1}; /* order of units[], larger = coarser */
    if (strcmp(s, "0") == 0) {
        *out = 0;
        return true;
    }
    int64_t total = 0;
    int last_rank = 5;
    if (!*s)
        return false;
    while (*s) {
        uint64_t n;
        if (!parse_digits(&s, &n))
            return false;
        size_t u;
        for (u = 0; u < sizeof units / sizeof units[0]; u++)
            if (strncmp(s, units[u].unit, strlen(units[u].unit)) == 0)
                break;
        if (u == sizeof units / sizeof units[0] || rank[u] >= last_rank)
            return false;
        last_rank = rank[u];
        s += strlen(units[u].unit);
        int64_t part;
        if (n > (uint64_t)INT64_MAX || __builtin_mul_overflow((int64_t)n, units[u].ms, &part) ||
            __builtin_add_overflow(total, part, &total))
            return false;
    }
    *out = total;
    return true;
}

static bool has_control(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
            return true;
    return false;
}

static bool parse_value(const fc_config_key *k, const char *s, value *out) {
    switch (k->type) {
    case FC_CONFIG_STRING:
    case FC_CONFIG_PATH:
        return !has_control(s);
    case FC_CONFIG_BOOL:
        return parse_bool(s, &out->b);
    case FC_CONFIG_INT:
        return parse_int(s, &out->i);
    case FC_CONFIG_SIZE:
        return parse_size(s, &out->u);
    case FC_CONFIG_DOUBLE:
        return parse_double(s, &out->d);
    case FC_CONFIG_DURATION:
        return parse_duration(s, &out->i);
    case FC_CONFIG_ENUM:
        for (size_t i = 0; k->choices && k->choices[i]; i++)
            if (strcmp(s, k->choices[i]) == 0) {
                out->e = i;
                return true;
            }
        return false;
    }
    return false;
}

static int compare(fc_config_type t, value a, value b) {
    switch (t) {
    case FC_CONFIG_INT:
    case FC_CONFIG_DURATION:
        return (a.i > b.i) - (a.i < b.i);
    case FC_CONFIG_SIZE:
        return (a.u > b.u) - (a.u < b.u);
    case FC_CONFIG_DOUBLE:
        return (a.d > b.d) - (a.d < b.d);
    default:
        return 0;
    }
}

static bool in_range(const fc_config_key *k, const slot *s, value v) {
    if (s->has_min && compare(k->type, v, s->min) < 0)
        return false;
    if (s->has_max && compare(k->type, v, s->max) > 0)
        return false;
    return true;
}

const char *fc_config_type_name(fc_config_type type) {
    switch (type) {
    case FC_CONFIG_STRING:
        return "string";
    case FC_CONFIG_PATH:
        return "path";
    case FC_CONFIG_BOOL:
        return "bool";
    case FC_CONFIG_INT:
        return "integer";
    case FC_CONFIG_SIZE:
        return "size";
    case FC_CONFIG_DOUBLE:
        return "number";
    case FC_CONFIG_DURATION:
        return "duration";
    case FC_CONFIG_ENUM:
        return "enum";
    }
    return "unknown";
}

/* "1..100000", ">= 1", "<= 4GiB" or "" (bounds in the schema's own spelling). */
static void range_text(const fc_config_key *k, char *dst, size_t size) {
    if (k->min && k->max)
        snprintf(dst, size, "%s..%s", k->min, k->max);
    else if (k->min)
        snprintf(dst, size, ">= %s", k->min);
    else if (k->max)
        snprintf(dst, size, "<= %s", k->max);
    else
        dst[0] = '\0';
}

/* What a value of this entry must look like, for "expected ..." in messages. */
static void accepted_text(const fc_config_key *k, char *dst, size_t size) {
    char range[128], in[140] = "";
    range_text(k, range, sizeof range);
    if (range[0])
        snprintf(in, sizeof in, "%s%s", (k->min && k->max) ? " in " : " ", range);
    switch (k->type) {
    case FC_CONFIG_STRING:
        snprintf(dst, size, "text without control characters");
        return;
    case FC_CONFIG_PATH:
        snprintf(dst, size, "a path without control characters");
        return;
    case FC_CONFIG_BOOL:
        snprintf(dst, size, "true/false, yes/no, on/off or 1/0");
        return;
    case FC_CONFIG_INT:
        snprintf(dst, size, "an integer%s", in);
        return;
    case FC_CONFIG_SIZE:
        snprintf(dst, size,
                 "a size%s (whole bytes, or with a suffix K/KiB, M/MiB, G/GiB or T/TiB)", in);
        return;
    case FC_CONFIG_DOUBLE:
        snprintf(dst, size, "a finite decimal number%s", in);
        return;
    case FC_CONFIG_DURATION:
        snprintf(dst, size, "a duration%s (e.g. 500ms, 30s, 5m, 1h30m)", in);
        return;
    case FC_CONFIG_ENUM: {
        list l = {.len = 0};
        for (size_t i = 0; k->choices && k->choices[i]; i++)
            list_add(&l, k->choices[i]);
        snprintf(dst, size, "one of: %s", l.buf);
        return;
    }
    }
    dst[0] = '\0';
}

/* Parses and range-checks text for entry idx; on failure fills err with
 * "ORIGIN: [sec] key = "text": expected ...". */
static fc_status check_value(const fc_config *cfg, size_t idx, const char *origin,
                             const char *text, value *out, fc_error *err) {
    const fc_config_key *k = &cfg->schema[idx];
    if (parse_value(k, text, out) && in_range(k, &cfg->slots[idx], *out))
        return FC_OK;
    char shown[SHOW_BUF], accepted[400];
    show(shown, sizeof shown, text, strlen(text));
    accepted_text(k, accepted, sizeof accepted);
    return fc_error_set(err, FC_ERR_CONFIG, "%s: [%s] %s = \"%s\": expected %s", origin,
                        k->section, k->key, shown, accepted);
}

/* Removes surrounding blanks (in place, returns the new start) and one pair of double quotes.
 * A value that opens a quote must close it. */
static char *normalize(char *s, bool *ok) {
    while (is_blank(*s))
        s++;
    size_t len = strlen(s);
    while (len && is_blank(s[len - 1]))
        s[--len] = '\0';
    *ok = true;
    if (s[0] == '"') {
        if (len < 2 || s[len - 1] != '"') {
            *ok = false;
            return s;
        }
        s[len - 1] = '\0';
        s++;
    }
    return s;
}

/* ---- creation and schema validation ---- */

static bool valid_name(const char *s) {
    size_t len = s ? strlen(s) : 0;
    if (len == 0 || len > NAME_MAX_LEN)
        return false;
    for (; *s; s++)
        if (!(is_digit(*s) || (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_' ||
              *s == '-'))
            return false;
    return true;
}

static fc_status check_schema_entry(const fc_config_key *schema, size_t i, slot *s,
                                    fc_error *err) {
    const fc_config_key *k = &schema[i];
    const char *sec = k->section ? k->section : "(null)", *key = k->key ? k->key : "(null)";
#define SCHEMA_FAIL(...)                                                                          \
    do {                                                                                          \
        fc_error_set(err, FC_ERR_INVALID, __VA_ARGS__);                                           \
        return fc_error_prefix(err, "schema entry %zu ([%s] %s)", i, sec, key);                   \
    } while (0)
    if (!valid_name(k->section) || !valid_name(k->key))
        SCHEMA_FAIL("section and key must be 1..%d characters of A-Z a-z 0-9 _ -", NAME_MAX_LEN);
    if (key_index(schema, i, k->section, strlen(k->section), k->key, strlen(k->key)) >= 0)
        SCHEMA_FAIL("duplicate entry");
    bool numeric = k->type == FC_CONFIG_INT || k->type == FC_CONFIG_SIZE ||
                   k->type == FC_CONFIG_DOUBLE || k->type == FC_CONFIG_DURATION;
    bool stringy = k->type == FC_CONFIG_STRING || k->type == FC_CONFIG_PATH;
    if (k->type < FC_CONFIG_STRING || k->type > FC_CONFIG_ENUM)
        SCHEMA_FAIL("unknown type %d", (int)k->type);
    if ((k->min || k->max) && !numeric)
        SCHEMA_FAIL("min/max are only for integer, size, number and duration");
    if ((k->type == FC_CONFIG_ENUM) != (k->choices != NULL))
        SCHEMA_FAIL("choices are required for enum and only for enum");
    if (k->type == FC_CONFIG_ENUM && !k->choices[0])
        SCHEMA_FAIL("enum without choices");
    if ((k->flags & ~FC_CONFIG_REQUIRED) || ((k->flags & FC_CONFIG_REQUIRED) && !stringy))
        SCHEMA_FAIL("bad flags (REQUIRED is only for string and path)");
    if ((k->flags & FC_CONFIG_REQUIRED) && k->def)
        SCHEMA_FAIL("a required key has no default");
    if (!k->def && !stringy)
        SCHEMA_FAIL("a default is required for type %s", fc_config_type_name(k->type));
    if (k->min) {
        if (!parse_value(k, k->min, &s->min))
            SCHEMA_FAIL("min \"%s\" is not a valid %s", k->min, fc_config_type_name(k->type));
        s->has_min = true;
    }
    if (k->max) {
        if (!parse_value(k, k->max, &s->max))
            SCHEMA_FAIL("max \"%s\" is not a valid %s", k->max, fc_config_type_name(k->type));
        s->has_max = true;
    }
    if (k->min && k->max && compare(k->type, s->min, s->max) > 0)
        SCHEMA_FAIL("min %s is above max %s", k->min, k->max);
    if (k->def && !(parse_value(k, k->def, &s->def) && in_range(k, s, s->def)))
        SCHEMA_FAIL("default \"%s\" is not accepted by the entry itself", k->def);
    if (k->def && strlen(k->def) > FC_CONFIG_MAX_LINE - strlen(k->key) - 8)
        SCHEMA_FAIL("default is too long to be written in a file");
#undef SCHEMA_FAIL
    return FC_OK;
}

fc_status fc_config_new(const fc_config_key *schema, size_t n, fc_config **out, fc_error *err) {
    *out = NULL;
    if (!schema || n == 0)
        return fc_error_set(err, FC_ERR_INVALID, "configuration schema is empty");
    fc_config *cfg = fc_calloc(1, sizeof *cfg);
    if (!cfg)
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory creating the configuration");
    cfg->slots = fc_calloc(n, sizeof *cfg->slots);
    if (!cfg->slots) {
        fc_free(cfg);
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory creating the configuration");
    }
    cfg->schema = schema;
    cfg->n = n;
    for (size_t i = 0; i < n; i++) {
        fc_status st = check_schema_entry(schema, i, &cfg->slots[i], err);
        if (st != FC_OK) {
            fc_config_free(cfg);
            return st;
        }
    }
    *out = cfg;
    return FC_OK;
}

static void setting_clear(setting *s) {
    fc_free(s->text);
    fc_free(s->where);
    memset(s, 0, sizeof *s);
}

void fc_config_free(fc_config *cfg) {
    if (!cfg)
        return;
    for (size_t i = 0; i < cfg->n; i++)
        setting_clear(&cfg->slots[i].cur);
    fc_free(cfg->slots);
    fc_free(cfg);
}

/* A value is written back by fc_config_dump as key=value, quoted when needed; that line must
 * fit the line limit, so every accepted value can be written to a file and read again. */
static bool needs_quotes(const char *t) {
    size_t len = strlen(t);
    return len == 0 || is_blank(t[0]) || is_blank(t[len - 1]) || t[0] == '"' || t[0] == ';';
}

static size_t dump_value_len(const char *text) {
    return strlen(text) + (needs_quotes(text) ? 2 : 0);
}

static bool fits_in_line(const fc_config_key *k, const char *text) {
    return strlen(k->key) + 1 + dump_value_len(text) <= FC_CONFIG_MAX_LINE;
}

/* ---- loading a file through inih ---- */

typedef struct load {
    fc_config *cfg;
    const char *name;
    const char *text;
    size_t len, pos;
    int lineno;
    setting *pending; /* one per schema entry */
    fc_status st;     /* first problem (FC_OK while none) */
    int err_line;
    fc_error first;
} load;

static void load_fail(load *ld, fc_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void load_fail(load *ld, fc_status st, const char *fmt, ...) {
    if (ld->st != FC_OK)
        return;
    char msg[FC_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ld->st = st;
    ld->err_line = ld->lineno;
    fc_error_set(&ld->first, st, "%s", msg);
}

/* Checks a "[name]" header line (s is the line after leading blanks, len excludes the line
 * terminator). Reports problems through ld. */
static void check_header(load *ld, const char *s, size_t len) {
    char origin[FC_ERROR_MSG_MAX / 2];
    snprintf(origin, sizeof origin, "%s:%d", ld->name, ld->lineno);
    const char *close = memchr(s, ']', len);
    if (!close) {
        char shown[SHOW_BUF];
        show(shown, sizeof shown, s, len);
        load_fail(ld, FC_ERR_CONFIG, "%s: section header \"%s\" has no closing ']'", origin,
                  shown);
        return;
    }
    const char *name = s + 1;
    size_t name_len = (size_t)(close - name);
    const char *rest = close + 1, *end = s + len;
    while (rest < end && is_blank(*rest))
        rest++;
    if (rest < end && *rest != ';' && *rest != '#') {
        char shown[SHOW_BUF];
        show(shown, sizeof shown, rest, (size_t)(end - rest));
        load_fail(ld, FC_ERR_CONFIG, "%s: unexpected text \"%s\" after the section header",
                  origin, shown);
        return;
    }
    if (name_len == 0) {
        load_fail(ld, FC_ERR_CONFIG, "%s: empty section name \"[]\"", origin);
        return;
    }
    if (!section_known(ld->cfg, name, name_len) && ld->st == FC_OK) {
        fc_error e = {0};
        unknown_section(ld->cfg, &e, origin, name, name_len);
        load_fail(ld, FC_ERR_CONFIG, "%s", e.msg);
    }
}

/* inih's line source: one line per call, so inih's line count and ours agree. A line inih
 * must not see (over-long, NUL, bad header) is reported here and replaced by an empty one. */
static char *read_line(char *str, int num, void *stream) {
    load *ld = stream;
    if (ld->pos >= ld->len || num < 4)
        return NULL;
    const char *start = ld->text + ld->pos;
    size_t avail = ld->len - ld->pos;
    const char *nl = memchr(start, '\n', avail);
    size_t raw = nl ? (size_t)(nl - start) + 1 : avail; /* bytes including the '\n' */
    ld->pos += raw;
    ld->lineno++;
    size_t content = nl ? raw - 1 : raw;
    if (content && start[content - 1] == '\r')
        content--;
    size_t limit = (size_t)num - 3 < FC_CONFIG_MAX_LINE ? (size_t)num - 3 : FC_CONFIG_MAX_LINE;
    str[0] = '\0';
    if (content > limit) {
        load_fail(ld, FC_ERR_CONFIG, "%s:%d: line is %zu characters long; the limit is %zu",
                  ld->name, ld->lineno, content, limit);
        return str;
    }
    if (memchr(start, '\0', content)) {
        load_fail(ld, FC_ERR_CONFIG, "%s:%d: line contains a NUL byte", ld->name, ld->lineno);
        return str;
    }
    size_t skip = 0;
    if (ld->lineno == 1 && content >= 3 && memcmp(start, "\xEF\xBB\xBF", 3) == 0)
        skip = 3; /* UTF-8 byte order mark */
    while (skip < content && is_blank(start[skip]))
        skip++;
    if (skip < content && start[skip] == '[') {
        check_header(ld, start + skip, content - skip);
        if (ld->st != FC_OK && ld->err_line == ld->lineno)
            return str;
    }
    memcpy(str, start + skip, raw - skip);
    str[raw - skip] = '\0';
    return str;
}

static int on_entry(void *user, const char *section, const char *name, const char *raw_value) {
    load *ld = user;
    if (ld->st != FC_OK)
        return 1; /* only the first problem is reported */
    fc_config *cfg = ld->cfg;
    char origin[FC_ERROR_MSG_MAX / 2];
    snprintf(origin, sizeof origin, "%s:%d", ld->name, ld->lineno);
    if (!*name) {
        load_fail(ld, FC_ERR_CONFIG, "%s: missing key name before '='", origin);
        return 1;
    }
    if (!*section) {
        char shown[SHOW_BUF];
        show(shown, sizeof shown, name, strlen(name));
        load_fail(ld, FC_ERR_CONFIG, "%s: key \"%s\" appears before any [section]", origin,
                  shown);
        return 1;
    }
    fc_error e = {0};
    if (!section_known(cfg, section, strlen(section))) {
        load_fail(ld, unknown_section(cfg, &e, origin, section, strlen(section)), "%s", e.msg);
        return 1;
    }
    long idx = key_index(cfg->schema, cfg->n, section, strlen(section), name, strlen(name));
    if (idx < 0) {
        load_fail(ld, unknown_key(cfg, &e, origin, section, strlen(section), name, strlen(name)),
                  "%s", e.msg);
        return 1;
    }
    const fc_config_key *k = &cfg->schema[idx];
    setting *p = &ld->pending[idx];
    if (p->line) {
        load_fail(ld, FC_ERR_CONFIG, "%s: [%s] %s: duplicate key (first set on line %d)", origin,
                  k->section, k->key, p->line);
        return 1;
    }
    char buf[FC_CONFIG_MAX_LINE + 3];
    snprintf(buf, sizeof buf, "%s", raw_value);
    bool quotes_ok;
    char *text = normalize(buf, &quotes_ok);
    if (!quotes_ok) {
        char shown[SHOW_BUF];
        show(shown, sizeof shown, text, strlen(text));
        load_fail(ld, FC_ERR_CONFIG,
                  "%s: [%s] %s = \"%s\": unbalanced double quote (a quoted value must end with "
                  "'\"'; note that ';' after a space starts a comment)",
                  origin, k->section, k->key, shown);
        return 1;
    }
    value v;
    if (check_value(cfg, (size_t)idx, origin, text, &v, &e) != FC_OK) {
        load_fail(ld, e.code, "%s", e.msg);
        return 1;
    }
    if (!fits_in_line(k, text)) {
        load_fail(ld, FC_ERR_CONFIG, "%s: [%s] %s: value is too long to be written back (%s)",
                  origin, k->section, k->key, "\"key=value\" must fit in one line");
        return 1;
    }
    p->text = fc_strdup(text);
    p->where = fc_strdup(origin);
    p->line = ld->lineno;
    p->v = v;
    if (!p->text || !p->where)
        load_fail(ld, FC_ERR_NOMEM, "%s: out of memory", origin);
    return 1;
}

/* The text of line `line` (1-based), for inih's own syntax errors. */
static void line_text(const load *ld, int line, const char **s, size_t *len) {
    const char *p = ld->text, *end = ld->text + ld->len;
    for (int i = 1; i < line && p < end; i++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        p = nl ? nl + 1 : end;
    }
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
    while (n && (p[n - 1] == '\r' || is_blank(p[n - 1])))
        n--;
    while (n && is_blank(*p)) {
        p++;
        n--;
    }
    *s = p;
    *len = n;
}

fc_status fc_config_load_string(fc_config *cfg, const char *name, const char *text, size_t len,
                                fc_error *err) {
    load ld = {.cfg = cfg, .name = name, .text = text, .len = len};
    if (len > FC_CONFIG_MAX_FILE)
        return fc_error_set(err, FC_ERR_CONFIG, "%s: file is larger than %d bytes", name,
                            FC_CONFIG_MAX_FILE);
    ld.pending = fc_calloc(cfg->n, sizeof *ld.pending);
    if (!ld.pending)
        return fc_error_set(err, FC_ERR_NOMEM, "%s: out of memory", name);
    int rc = ini_parse_stream(read_line, &ld, on_entry, &ld);
    if (rc != 0 && (ld.st == FC_OK || (rc > 0 && rc < ld.err_line))) {
        ld.st = FC_OK;
        if (rc > 0) {
            const char *s;
            size_t n;
            char shown[SHOW_BUF];
            line_text(&ld, rc, &s, &n);
            show(shown, sizeof shown, s, n);
            ld.lineno = rc;
            load_fail(&ld, FC_ERR_CONFIG,
                      "%s:%d: cannot parse \"%s\": expected \"[section]\", \"key = value\" or a "
                      "comment",
                      name, rc, shown);
        } else {
            load_fail(&ld, rc == -2 ? FC_ERR_NOMEM : FC_ERR_CONFIG, "%s: INI parser failed (%d)",
                      name, rc);
        }
    }
    if (ld.st == FC_OK) {
        for (size_t i = 0; i < cfg->n; i++) {
            if (!ld.pending[i].text)
                continue;
            slot *s = &cfg->slots[i];
            if (s->source == FC_CONFIG_FROM_OVERRIDE) {
                setting_clear(&ld.pending[i]); /* --set wins over any file */
                continue;
            }
            setting_clear(&s->cur);
            s->cur = ld.pending[i];
            s->source = FC_CONFIG_FROM_FILE;
        }
    } else {
        for (size_t i = 0; i < cfg->n; i++)
            setting_clear(&ld.pending[i]);
        if (err)
            *err = ld.first;
    }
    fc_free(ld.pending);
    return ld.st;
}

fc_status fc_config_load_file(fc_config *cfg, const char *path, fc_error *err) {
    /* O_NONBLOCK so that a FIFO is refused below instead of blocking the open. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return fc_error_set(err, FC_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    fc_status st;
    char *text = NULL;
    if (fstat(fd, &sb) != 0) {
        st = fc_error_set(err, FC_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
        goto done;
    }
    if (!S_ISREG(sb.st_mode)) {
        st = fc_error_set(err, FC_ERR_IO, "%s: not a regular file", path);
        goto done;
    }
    if (sb.st_size > FC_CONFIG_MAX_FILE) {
        st = fc_error_set(err, FC_ERR_CONFIG, "%s: file is larger than %d bytes", path,
                          FC_CONFIG_MAX_FILE);
        goto done;
    }
    size_t size = (size_t)sb.st_size, got = 0;
    text = fc_malloc(size + 1);
    if (!text) {
        st = fc_error_set(err, FC_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    while (got < size) {
        ssize_t r = read(fd, text + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            st = fc_error_set(err, FC_ERR_IO, "%s: read failed: %s", path, strerror(errno));
            goto done;
        }
        if (r == 0)
            break; /* the file shrank; take what is there */
        got += (size_t)r;
    }
    st = fc_config_load_string(cfg, path, text, got, err);
done:
    fc_free(text);
    close(fd);
    return st;
}

/* ---- overrides ---- */

static void trim(const char **s, size_t *len) {
    while (*len && is_blank(**s)) {
        (*s)++;
        (*len)--;
    }
    while (*len && is_blank((*s)[*len - 1]))
        (*len)--;
}

/* True if s has ';' right after a blank: in a file that starts a comment, so such a value
 * could not be written back (fc_config_dump) and is refused from --set too. */
static bool has_inline_comment(const char *s) {
    for (size_t i = 1; s[0] && s[i]; i++)
        if (s[i] == ';' && is_blank(s[i - 1]))
            return true;
    return false;
}

fc_status fc_config_set(fc_config *cfg, const char *assignment, const char *source,
                        fc_error *err) {
    if (!source)
        source = "--set";
    char shown[SHOW_BUF];
    show(shown, sizeof shown, assignment, strlen(assignment));
    const char *eq = strchr(assignment, '=');
    const char *lhs = assignment;
    size_t lhs_len = eq ? (size_t)(eq - assignment) : 0;
    trim(&lhs, &lhs_len);
    const char *dot = eq ? memchr(lhs, '.', lhs_len) : NULL;
    if (!eq || !dot)
        return fc_error_set(err, FC_ERR_CONFIG, "%s: \"%s\": expected section.key=value", source,
                            shown);
    const char *sec = lhs, *key = dot + 1;
    size_t sec_len = (size_t)(dot - lhs), key_len = lhs_len - sec_len - 1;
    if (!section_known(cfg, sec, sec_len))
        return unknown_section(cfg, err, source, sec, sec_len);
    long idx = key_index(cfg->schema, cfg->n, sec, sec_len, key, key_len);
    if (idx < 0)
        return unknown_key(cfg, err, source, sec, sec_len, key, key_len);
    const fc_config_key *k = &cfg->schema[idx];
    char *buf = fc_strdup(eq + 1);
    if (!buf)
        return fc_error_set(err, FC_ERR_NOMEM, "%s: out of memory", source);
    fc_status st;
    setting next = {0};
    bool quotes_ok;
    char *text = normalize(buf, &quotes_ok);
    show(shown, sizeof shown, text, strlen(text));
    if (!quotes_ok) {
        st = fc_error_set(err, FC_ERR_CONFIG,
                          "%s: [%s] %s = \"%s\": unbalanced double quote (a quoted value must end "
                          "with '\"')",
                          source, k->section, k->key, shown);
        goto done;
    }
    if ((st = check_value(cfg, (size_t)idx, source, text, &next.v, err)) != FC_OK)
        goto done;
    if (has_inline_comment(text)) {
        st = fc_error_set(err, FC_ERR_CONFIG,
                          "%s: [%s] %s = \"%s\": a value cannot contain ';' after a space (in a "
                          "file that starts a comment)",
                          source, k->section, k->key, shown);
        goto done;
    }
    if (!fits_in_line(k, text)) {
        st = fc_error_set(err, FC_ERR_CONFIG,
                          "%s: [%s] %s: value is %zu characters long; \"key=value\" must fit "
                          "in a %d-character line",
                          source, k->section, k->key, strlen(text), FC_CONFIG_MAX_LINE);
        goto done;
    }
    next.text = fc_strdup(text);
    next.where = fc_strdup(source);
    if (!next.text || !next.where) {
        setting_clear(&next);
        st = fc_error_set(err, FC_ERR_NOMEM, "%s: out of memory", source);
        goto done;
    }
    slot *s = &cfg->slots[idx];
    setting_clear(&s->cur);
    s->cur = next;
    s->source = FC_CONFIG_FROM_OVERRIDE;
    st = FC_OK;
done:
    fc_free(buf);
    return st;
}

fc_status fc_config_check_required(const fc_config *cfg, fc_error *err) {
    for (size_t i = 0; i < cfg->n; i++) {
        const fc_config_key *k = &cfg->schema[i];
        if ((k->flags & FC_CONFIG_REQUIRED) && !(cfg->slots[i].cur.text && *cfg->slots[i].cur.text))
            return fc_error_set(err, FC_ERR_CONFIG,
                                "[%s] %s is required: set it in the file or with --set %s.%s=...",
                                k->section, k->key, k->section, k->key);
    }
    return FC_OK;
}

/* ---- getters ---- */

static const slot *find_slot(const fc_config *cfg, const char *section, const char *key,
                             fc_config_type want, const fc_config_key **kp) {
    long idx = key_index(cfg->schema, cfg->n, section, strlen(section), key, strlen(key));
    if (idx < 0) {
        fprintf(stderr, "fc_config: no key [%s] %s in the schema (programming error)\n", section,
                key);
        abort();
    }
    const fc_config_key *k = &cfg->schema[idx];
    if (want && k->type != want) {
        fprintf(stderr, "fc_config: [%s] %s is a %s, not a %s (programming error)\n", section,
                key, fc_config_type_name(k->type), fc_config_type_name(want));
        abort();
    }
    if (kp)
        *kp = k;
    return &cfg->slots[idx];
}

static value effective(const slot *s) { return s->cur.text ? s->cur.v : s->def; }

static const char *effective_text(const fc_config_key *k, const slot *s) {
    if (s->cur.text)
        return s->cur.text;
    return k->def ? k->def : "";
}

const char *fc_config_get_string(const fc_config *cfg, const char *section, const char *key) {
    const fc_config_key *k;
    const slot *s = find_slot(cfg, section, key, FC_CONFIG_STRING, &k);
    return effective_text(k, s);
}

const char *fc_config_get_path(const fc_config *cfg, const char *section, const char *key) {
    const fc_config_key *k;
    const slot *s = find_slot(cfg, section, key, FC_CONFIG_PATH, &k);
    return effective_text(k, s);
}

bool fc_config_get_bool(const fc_config *cfg, const char *section, const char *key) {
    return effective(find_slot(cfg, section, key, FC_CONFIG_BOOL, NULL)).b;
}

int64_t fc_config_get_int(const fc_config *cfg, const char *section, const char *key) {
    return effective(find_slot(cfg, section, key, FC_CONFIG_INT, NULL)).i;
}

uint64_t fc_config_get_size(const fc_config *cfg, const char *section, const char *key) {
    return effective(find_slot(cfg, section, key, FC_CONFIG_SIZE, NULL)).u;
}

double fc_config_get_double(const fc_config *cfg, const char *section, const char *key) {
    return effective(find_slot(cfg, section, key, FC_CONFIG_DOUBLE, NULL)).d;
}

int64_t fc_config_get_duration_ms(const fc_config *cfg, const char *section, const char *key) {
    return effective(find_slot(cfg, section, key, FC_CONFIG_DURATION, NULL)).i;
}

const char *fc_config_get_enum(const fc_config *cfg, const char *section, const char *key) {
    const fc_config_key *k;
    const slot *s = find_slot(cfg, section, key, FC_CONFIG_ENUM, &k);
    return k->choices[effective(s).e];
}

size_t fc_config_get_enum_index(const fc_config *cfg, const char *section, const char *key) {
    return effective(find_slot(cfg, section, key, FC_CONFIG_ENUM, NULL)).e;
}

fc_config_source fc_config_source_of(const fc_config *cfg, const char *section, const char *key,
                                     const char **where) {
    const slot *s = find_slot(cfg, section, key, 0, NULL);
    if (where)
        *where = s->cur.where ? s->cur.where : "default";
    return s->source;
}

/* ---- dump and documentation ---- */

static fc_status append_str(fc_buf *out, const char *s) { return fc_buf_append(out, s, strlen(s)); }

fc_status fc_config_dump(const fc_config *cfg, fc_buf *out) {
    fc_status st = FC_OK;
    for (size_t i = 0; i < cfg->n && st == FC_OK; i++) {
        const char *sec = cfg->schema[i].section;
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++)
            seen = strcmp(cfg->schema[j].section, sec) == 0;
        if (seen)
            continue;
        char head[NAME_MAX_LEN + 8];
        snprintf(head, sizeof head, "%s[%s]\n", i ? "\n" : "", sec);
        st = append_str(out, head);
        for (size_t j = i; j < cfg->n && st == FC_OK; j++) {
            const fc_config_key *k = &cfg->schema[j];
            if (strcmp(k->section, sec) != 0)
                continue;
            const slot *s = &cfg->slots[j];
            const char *text = effective_text(k, s);
            const char *where = s->cur.where ? s->cur.where : "default";
            bool q = needs_quotes(text);
            char line[FC_CONFIG_MAX_LINE + 1];
            const char *sep = strlen(k->key) + 3 + dump_value_len(text) <= FC_CONFIG_MAX_LINE
                                  ? " = "
                                  : "=";
            int n = snprintf(line, sizeof line, "%s%s%s%s%s", k->key, sep, q ? "\"" : "", text,
                             q ? "\"" : "");
            assert(n >= 0 && (size_t)n <= FC_CONFIG_MAX_LINE); /* checked when set */
            size_t used = (size_t)n;
            if (used + 4 + strlen(where) <= FC_CONFIG_MAX_LINE) {
                st = append_str(out, line);
                if (st == FC_OK)
                    st = append_str(out, " ; ");
                if (st == FC_OK)
                    st = append_str(out, where);
            } else {
                /* Too long for one line: the comment goes above, cut to the line limit. */
                char comment[FC_CONFIG_MAX_LINE + 1];
                snprintf(comment, sizeof comment, "; %s", where);
                st = append_str(out, comment);
                if (st == FC_OK)
                    st = append_str(out, "\n");
                if (st == FC_OK)
                    st = append_str(out, line);
            }
            if (st == FC_OK)
                st = append_str(out, "\n");
        }
    }
    return st;
}

/* Appends s to a Markdown table cell, escaping '|' and keeping it on one line. */
static fc_status append_cell(fc_buf *out, const char *s) {
    fc_status st = FC_OK;
    for (; *s && st == FC_OK; s++) {
        if (*s == '|')
            st = fc_buf_append(out, "\\|", 2);
        else if (*s == '\n' || *s == '\r')
            st = fc_buf_append(out, " ", 1);
        else
            st = fc_buf_append(out, s, 1);
    }
    return st;
}

fc_status fc_config_schema_markdown(const fc_config_key *schema, size_t n, fc_buf *out) {
    fc_status st = append_str(out, "| Section | Key | Type | Default | Range | Description |\n"
                                   "|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < n && st == FC_OK; i++) {
        const fc_config_key *k = &schema[i];
        char cell[512];
        snprintf(cell, sizeof cell, "| `[%s]` | `%s` | %s | ", k->section, k->key,
                 fc_config_type_name(k->type));
        st = append_str(out, cell);
        if (st != FC_OK)
            break;
        if (k->flags & FC_CONFIG_REQUIRED)
            snprintf(cell, sizeof cell, "(required)");
        else if (!k->def || !*k->def)
            snprintf(cell, sizeof cell, "(unset)");
        else
            snprintf(cell, sizeof cell, "`%s`", k->def);
        st = append_cell(out, cell);
        if (st == FC_OK)
            st = append_str(out, " | ");
        if (k->type == FC_CONFIG_ENUM) {
            for (size_t c = 0; k->choices[c] && st == FC_OK; c++) {
                snprintf(cell, sizeof cell, "%s`%s`", c ? ", " : "", k->choices[c]);
                st = append_cell(out, cell);
            }
        } else {
            range_text(k, cell, sizeof cell);
            if (k->type == FC_CONFIG_BOOL)
                snprintf(cell, sizeof cell, "true/false");
            if (st == FC_OK)
                st = append_cell(out, cell);
        }
        if (st == FC_OK)
            st = append_str(out, " | ");
        if (st == FC_OK)
            st = append_cell(out, k->help ? k->help : "");
        if (st == FC_OK)
            st = append_str(out, " |\n");
    }
    return st;
}
