/* params.c: validation of a rule's or optimizer's key=value parameters against its spec table.
 * It owns parsing and the error text that lists what is accepted; it never interprets values.
 */
#include "aggregators/agg.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *type_name(const agg_param_spec *s) {
    switch (s->type) {
    case AGG_PARAM_DOUBLE:
        return "number";
    case AGG_PARAM_UINT:
        return "integer";
    case AGG_PARAM_BOOL:
        return "true|false";
    case AGG_PARAM_ENUM:
        return s->choices ? s->choices : "?";
    }
    return "?";
}

/* "accepted: f (integer, default 1), m (integer, default n-f)" or "accepted: none". */
static void describe_accepted(const agg_param_spec *specs, char *out, size_t size) {
    size_t len = 0;
    int w = snprintf(out, size, "accepted:");
    if (w < 0 || (size_t)w >= size)
        return;
    len = (size_t)w;
    if (!specs || !specs[0].key) {
        snprintf(out + len, size - len, " none");
        return;
    }
    for (const agg_param_spec *s = specs; s->key; s++) {
        const char *dflt = s->default_value;
        if (dflt == NULL)
            w = snprintf(out + len, size - len, "%s %s (%s, required)", s == specs ? "" : ",",
                         s->key, type_name(s));
        else if (dflt[0] == '\0')
            w = snprintf(out + len, size - len, "%s %s (%s, unset by default)",
                         s == specs ? "" : ",", s->key, type_name(s));
        else
            w = snprintf(out + len, size - len, "%s %s (%s, default %s)", s == specs ? "" : ",",
                         s->key, type_name(s), dflt);
        if (w < 0 || (size_t)w >= size - len)
            return;
        len += (size_t)w;
    }
}

static int parse_bool(const char *v, uint64_t *out) {
    static const char *const t[] = {"true", "1", "yes", "on"};
    static const char *const f[] = {"false", "0", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcmp(v, t[i]) == 0) {
            *out = 1;
            return 1;
        }
        if (strcmp(v, f[i]) == 0) {
            *out = 0;
            return 1;
        }
    }
    return 0;
}

static int parse_enum(const char *choices, const char *v, uint64_t *out) {
    size_t vlen = strlen(v);
    uint64_t idx = 0;
    const char *p = choices;
    if (!p || vlen == 0)
        return 0;
    for (;;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == vlen && strncmp(p, v, len) == 0) {
            *out = idx;
            return 1;
        }
        if (!bar)
            return 0;
        p = bar + 1;
        idx++;
    }
}

/* Parses text into *val per spec; fills why[] on failure. */
static int parse_value(const agg_param_spec *s, const char *text, agg_value *val, char *why,
                       size_t whysize) {
    char *end = NULL;
    int ranged = s->min < s->max;
    memset(val, 0, sizeof *val);
    switch (s->type) {
    case AGG_PARAM_DOUBLE: {
        errno = 0;
        double d = strtod(text, &end);
        if (text[0] == '\0' || *end != '\0' || errno == ERANGE || !isfinite(d)) {
            snprintf(why, whysize, "'%s' is not a finite number", text);
            return 0;
        }
        if (ranged && (d < s->min || d > s->max)) {
            snprintf(why, whysize, "%s is out of range [%g, %g]", text, s->min, s->max);
            return 0;
        }
        val->d = d;
        break;
    }
    case AGG_PARAM_UINT: {
        if (text[0] < '0' || text[0] > '9') {
            snprintf(why, whysize, "'%s' is not a non-negative integer", text);
            return 0;
        }
        errno = 0;
        unsigned long long u = strtoull(text, &end, 10);
        if (*end != '\0' || errno == ERANGE) {
            snprintf(why, whysize, "'%s' is not a non-negative integer", text);
            return 0;
        }
        if (ranged && ((double)u < s->min || (double)u > s->max)) {
            snprintf(why, whysize, "%s is out of range [%.0f, %.0f]", text, s->min, s->max);
            return 0;
        }
        val->u = u;
        val->d = (double)u;
        break;
    }
    case AGG_PARAM_BOOL:
        if (!parse_bool(text, &val->u)) {
            snprintf(why, whysize, "'%s' is not true or false", text);
            return 0;
        }
        val->d = (double)val->u;
        break;
    case AGG_PARAM_ENUM:
        if (!parse_enum(s->choices, text, &val->u)) {
            snprintf(why, whysize, "'%s' is not one of %s", text, s->choices ? s->choices : "");
            return 0;
        }
        val->d = (double)val->u;
        break;
    default:
        snprintf(why, whysize, "internal: unknown parameter type %d", (int)s->type);
        return 0;
    }
    val->set = 1;
    return 1;
}

fc_status agg_params_parse(const char *what, const agg_param_spec *specs, const agg_params *p,
                           agg_value *values, fc_error *err) {
    char accepted[384];
    char why[160];
    size_t nspecs = 0;
    describe_accepted(specs, accepted, sizeof accepted);
    if (specs)
        while (specs[nspecs].key)
            nspecs++;
    if (p && p->count > 0 && !p->items)
        return fc_error_set(err, FC_ERR_INVALID, "%s: parameter list is NULL", what);
    /* Defaults first, so a later check sees every slot filled. */
    for (size_t i = 0; i < nspecs; i++) {
        const char *d = specs[i].default_value;
        memset(&values[i], 0, sizeof values[i]);
        if (d && d[0] != '\0' && !parse_value(&specs[i], d, &values[i], why, sizeof why))
            return fc_error_set(err, FC_ERR_CONFIG, "%s: internal: default of '%s': %s", what,
                                specs[i].key, why);
    }
    size_t count = p ? p->count : 0;
    for (size_t k = 0; k < count; k++) {
        const char *key = p->items[k].key, *val = p->items[k].value;
        size_t i;
        if (!key || !val)
            return fc_error_set(err, FC_ERR_CONFIG, "%s: parameter %zu has no key or value; %s",
                                what, k, accepted);
        for (size_t j = 0; j < k; j++)
            if (p->items[j].key && strcmp(p->items[j].key, key) == 0)
                return fc_error_set(err, FC_ERR_CONFIG, "%s: parameter '%s' given twice; %s", what,
                                    key, accepted);
        for (i = 0; i < nspecs; i++)
            if (strcmp(specs[i].key, key) == 0)
                break;
        if (i == nspecs)
            return fc_error_set(err, FC_ERR_CONFIG, "%s: unknown parameter '%s'; %s", what, key,
                                accepted);
        if (!parse_value(&specs[i], val, &values[i], why, sizeof why))
            return fc_error_set(err, FC_ERR_CONFIG, "%s: bad value for '%s': %s; %s", what, key,
                                why, accepted);
    }
    for (size_t i = 0; i < nspecs; i++)
        if (specs[i].default_value == NULL && !values[i].set)
            return fc_error_set(err, FC_ERR_CONFIG, "%s: missing required parameter '%s'; %s", what,
                                specs[i].key, accepted);
    return FC_OK;
}
