/* report.c: the round report (what a rule decided) and its JSON form. It owns the report's
 * memory; it never decides anything about a round.
 */
#include "aggregators/agg.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

void agg_report_init(agg_report *r) { memset(r, 0, sizeof *r); }

void agg_report_free(agg_report *r) {
    if (!r)
        return;
    fc_free(r->client_ids);
    fc_free(r->selected);
    fc_free(r->scores);
    fc_free(r->weights_used);
    for (size_t i = 0; i < r->n_dropped; i++) {
        fc_free(r->dropped[i].client_name);
        fc_free(r->dropped[i].reason);
    }
    fc_free(r->dropped);
    agg_report_init(r);
}

fc_status agg_report_add_dropped(agg_report *r, uint64_t client_id, const char *client_name,
                                 const char *reason) {
    agg_dropped *grown;
    char *name = NULL, *why;
    if (!reason)
        return FC_ERR_INVALID;
    if (r->n_dropped == SIZE_MAX / sizeof *grown)
        return FC_ERR_OVERFLOW;
    grown = fc_realloc(r->dropped, (r->n_dropped + 1) * sizeof *grown);
    if (!grown)
        return FC_ERR_NOMEM;
    r->dropped = grown;
    if (client_name && !(name = fc_strdup(client_name)))
        return FC_ERR_NOMEM;
    if (!(why = fc_strdup(reason))) {
        fc_free(name);
        return FC_ERR_NOMEM;
    }
    r->dropped[r->n_dropped].client_id = client_id;
    r->dropped[r->n_dropped].client_name = name;
    r->dropped[r->n_dropped].reason = why;
    r->n_dropped++;
    return FC_OK;
}

/* ---- JSON ---- */

/* jansson refuses NaN and Inf; a report shows them as null. */
static json_t *real_or_null(double v) { return isfinite(v) ? json_real(v) : json_null(); }

/* json_int_t is signed 64-bit; an id above INT64_MAX is written as a decimal string. */
static json_t *u64_json(uint64_t v) {
    if (v <= (uint64_t)INT64_MAX)
        return json_integer((json_int_t)v);
    char text[24];
    snprintf(text, sizeof text, "%llu", (unsigned long long)v);
    return json_string(text);
}

/* jansson accepts only UTF-8; a client name that is not valid UTF-8 is shown with every byte
 * >= 0x80 replaced by '?', rather than failing the whole report. */
static json_t *text_json(const char *s) {
    json_t *v = json_string(s);
    if (v)
        return v;
    char *copy = fc_strdup(s);
    if (!copy)
        return NULL;
    for (char *p = copy; *p; p++)
        if ((unsigned char)*p >= 0x80)
            *p = '?';
    v = json_string(copy);
    fc_free(copy);
    return v;
}

/* json_object_set_new / json_array_append_new steal the value even on failure. */
static int put(json_t *obj, const char *key, json_t *v) {
    return v != NULL && json_object_set_new(obj, key, v) == 0;
}

static int push(json_t *arr, json_t *v) { return v != NULL && json_array_append_new(arr, v) == 0; }

static json_t *u64_array(const uint64_t *a, size_t n) {
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++)
        if (!push(arr, u64_json(a[i]))) {
            json_decref(arr);
            return NULL;
        }
    return arr;
}

static json_t *size_array(const size_t *a, size_t n) {
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++)
        if (!push(arr, u64_json((uint64_t)a[i]))) {
            json_decref(arr);
            return NULL;
        }
    return arr;
}

static json_t *real_array(const double *a, size_t n) {
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++)
        if (!push(arr, real_or_null(a[i]))) {
            json_decref(arr);
            return NULL;
        }
    return arr;
}

static json_t *dropped_array(const agg_report *r) {
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < r->n_dropped; i++) {
        const agg_dropped *d = &r->dropped[i];
        json_t *o = json_object();
        int ok = o && put(o, "client_id", u64_json(d->client_id)) &&
                 put(o, "client_name", d->client_name ? text_json(d->client_name) : json_null()) &&
                 put(o, "reason", text_json(d->reason ? d->reason : ""));
        if (!ok || !push(arr, o)) {
            if (!ok)
                json_decref(o);
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

fc_status agg_report_to_json(const agg_report *r, fc_buf *out) {
    json_t *o = json_object();
    char rule[sizeof r->rule + 1], note[sizeof r->note + 1];
    fc_status st = FC_ERR_NOMEM;
    if (!o)
        return FC_ERR_NOMEM;
    /* The fixed-size text fields may lack a terminator if a caller filled them badly. */
    memcpy(rule, r->rule, sizeof r->rule);
    rule[sizeof r->rule] = '\0';
    memcpy(note, r->note, sizeof r->note);
    note[sizeof r->note] = '\0';
    int ok = put(o, "rule", text_json(rule)) && put(o, "n_in", u64_json(r->n_in)) &&
             put(o, "n_used", u64_json(r->n_used)) &&
             put(o, "total_weight", real_or_null(r->total_weight)) &&
             put(o, "empty", json_boolean(r->empty)) &&
             put(o, "client_ids", u64_array(r->client_ids, r->client_ids ? r->n_used : 0)) &&
             put(o, "selected", size_array(r->selected, r->n_selected)) &&
             put(o, "scores", real_array(r->scores, r->n_scores)) &&
             put(o, "weights_used", real_array(r->weights_used, r->n_weights_used)) &&
             put(o, "trimmed_low", u64_json(r->trimmed_low)) &&
             put(o, "trimmed_high", u64_json(r->trimmed_high)) &&
             put(o, "iterations", u64_json(r->iterations)) &&
             put(o, "clipped", u64_json(r->clipped)) && put(o, "dropped", dropped_array(r)) &&
             put(o, "note", text_json(note));
    if (!ok)
        goto done;
    char *text = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(17) | JSON_PRESERVE_ORDER);
    if (!text)
        goto done;
    st = fc_buf_append(out, text, strlen(text));
    free(text);
done:
    json_decref(o);
    return st;
}
