/* agg_testutil.c: helpers for the aggregation unit tests (see agg_testutil.h). Test-only code;
 * it must never be linked into a program. */
#include "tests/lib/agg_testutil.h"

#include <math.h>
#include <string.h>

#include "core/alloc.h"

#define MAX_KV 16

/* Splits "k=v" strings into agg_kv pairs pointing into copies held in store. */
static size_t split_kv(const char *const *kv, agg_kv *items, char store[][128]) {
    size_t n = 0;
    for (; kv && kv[n] && n < MAX_KV; n++) {
        strncpy(store[n], kv[n], 127);
        store[n][127] = '\0';
        char *eq = strchr(store[n], '=');
        items[n].key = store[n];
        items[n].value = "";
        if (eq) {
            *eq = '\0';
            items[n].value = eq + 1;
        }
    }
    return n;
}

fc_status agg_test_round(const char *name, const char *const *kv, const agg_context *ctx,
                         const agg_update *ups, size_t n, const size_t *perm, int expect, double *D,
                         agg_report *rep, fc_buf *state, fc_error *err) {
    agg_kv items[MAX_KV];
    char store[MAX_KV][128];
    agg_params p = {items, split_kv(kv, items, store)};
    const agg_rule *rule = agg_rule_find(name);
    agg_round *r = NULL;
    fc_status st;
    if (!rule)
        return fc_error_set(err, FC_ERR_NOT_FOUND, "no rule %s", name);
    st =
        agg_round_begin(rule, &p, ctx, state ? state->data : NULL, state ? state->len : 0, &r, err);
    if (st != FC_OK)
        return st;
    if (expect) {
        uint64_t *ids = fc_mallocarray(n ? n : 1, sizeof *ids);
        if (!ids) {
            agg_round_free(r);
            return FC_ERR_NOMEM;
        }
        for (size_t i = 0; i < n; i++)
            ids[i] = ups[i].client_id;
        st = agg_round_expect(r, ids, n, err);
        fc_free(ids);
        if (st != FC_OK)
            goto done;
    }
    for (size_t i = 0; i < n; i++)
        if ((st = agg_round_add(r, &ups[perm ? perm[i] : i], err)) != FC_OK)
            goto done;
    st = agg_round_finish(r, D, rep, err);
    if (st == FC_OK && state) {
        fc_buf next = FC_BUF_INIT;
        st = agg_round_save_state(r, &next, err);
        if (st == FC_OK) {
            fc_buf_free(state);
            *state = next;
        } else {
            fc_buf_free(&next);
        }
    }
done:
    agg_round_free(r);
    return st;
}

int agg_test_same_bits(const double *a, const double *b, size_t n) {
    return memcmp(a, b, n * sizeof *a) == 0;
}

int agg_test_close(double a, double b, double tol) {
    double scale = fabs(b) > 1 ? fabs(b) : 1;
    return fabs(a - b) <= tol * scale;
}
