/* split.c: the Dirichlet label split (rules in split.h). It owns the split's index arrays and
 * nothing else; it never looks at features. */
#include "client/examples/lib/split.h"

#include <math.h>
#include <string.h>

#include "client/examples/lib/rng.h"
#include "core/alloc.h"

/* Generator stream number of the split, distinct from the trainers' streams. */
#define SPLIT_STREAM 0x53504c4954ull /* "SPLIT" */

void ex_split_free(ex_split *s) {
    if (!s)
        return;
    fc_free(s->client);
    fc_free(s->index);
    memset(s, 0, sizeof *s);
}

static fc_status check_config(const uint8_t *labels, size_t n, size_t classes,
                              const ex_split_config *cfg, fc_error *err) {
    if (!cfg || (!labels && n > 0))
        return fc_error_set(err, FC_ERR_INVALID, "split: no labels or no config");
    if (classes == 0 || classes > 256)
        return fc_error_set(err, FC_ERR_INVALID, "split: %zu classes, expected 1..256", classes);
    if (cfg->clients == 0 || cfg->clients > EX_SPLIT_MAX_CLIENTS)
        return fc_error_set(err, FC_ERR_INVALID, "split: %zu clients, expected 1..%d",
                            cfg->clients, EX_SPLIT_MAX_CLIENTS);
    if (!isfinite(cfg->alpha) || cfg->alpha <= 0 || cfg->alpha > 1e6)
        return fc_error_set(err, FC_ERR_INVALID, "split: alpha %g, expected > 0 and <= 1e6",
                            cfg->alpha);
    if (!(cfg->test_fraction >= 0 && cfg->test_fraction <= 0.9))
        return fc_error_set(err, FC_ERR_INVALID, "split: test fraction %g, expected 0..0.9",
                            cfg->test_fraction);
    size_t need_min = cfg->test_fraction > 0 ? 2 : 1;
    if (cfg->min_examples < need_min)
        return fc_error_set(err, FC_ERR_INVALID,
                            "split: at least %zu examples per client are needed (one to train%s), "
                            "got minimum %zu",
                            need_min, need_min == 2 ? ", one to test" : "", cfg->min_examples);
    if (cfg->min_examples > n / cfg->clients)
        return fc_error_set(err, FC_ERR_INVALID,
                            "split: %zu clients with at least %zu examples each need %zu "
                            "examples, have %zu",
                            cfg->clients, cfg->min_examples,
                            cfg->min_examples > SIZE_MAX / cfg->clients
                                ? SIZE_MAX
                                : cfg->min_examples * cfg->clients,
                            n);
    for (size_t i = 0; i < n; i++)
        if (labels[i] >= classes)
            return fc_error_set(err, FC_ERR_INVALID, "split: example %zu has label %u, expected < %zu",
                                i, labels[i], classes);
    return FC_OK;
}

/* One draw of rule 1: fills owner[] and counts[]. by_class holds each class's shuffled indices
 * back to back, class_start[k]..class_start[k+1]. */
static void draw(ex_rng *rng, const size_t *by_class, const size_t *class_start, size_t classes,
                 const ex_split_config *cfg, double *p, size_t *owner, size_t *counts) {
    memset(counts, 0, cfg->clients * sizeof *counts);
    for (size_t k = 0; k < classes; k++) {
        size_t nk = class_start[k + 1] - class_start[k];
        ex_rng_dirichlet(rng, cfg->alpha, cfg->clients, p);
        double cum = 0;
        size_t begin = 0;
        for (size_t j = 0; j < cfg->clients; j++) {
            cum += p[j];
            size_t end = j + 1 == cfg->clients ? nk : (size_t)llround(cum * (double)nk);
            if (end > nk)
                end = nk;
            if (end < begin)
                end = begin;
            for (size_t i = begin; i < end; i++)
                owner[by_class[class_start[k] + i]] = j;
            counts[j] += end - begin;
            begin = end;
        }
    }
}

static size_t min_count(const size_t *counts, size_t clients) {
    size_t m = SIZE_MAX;
    for (size_t j = 0; j < clients; j++)
        if (counts[j] < m)
            m = counts[j];
    return m;
}

fc_status ex_split_dirichlet(const uint8_t *labels, size_t n, size_t classes,
                             const ex_split_config *cfg, ex_split *out, fc_error *err) {
    fc_status st = check_config(labels, n, classes, cfg, err);
    if (st != FC_OK)
        return st;
    const size_t C = cfg->clients;
    ex_split s = EX_SPLIT_INIT;
    size_t *by_class = fc_mallocarray(n, sizeof *by_class);
    size_t *class_start = fc_calloc(classes + 1, sizeof *class_start);
    size_t *next_slot = fc_calloc(classes, sizeof *next_slot);
    size_t *owner = fc_mallocarray(n, sizeof *owner);
    size_t *counts = fc_calloc(C, sizeof *counts);
    size_t *fill = fc_calloc(C, sizeof *fill);
    double *p = fc_mallocarray(C, sizeof *p);
    s.client = fc_calloc(C, sizeof *s.client);
    s.index = fc_mallocarray(n, sizeof *s.index);
    if (!by_class || !class_start || !next_slot || !owner || !counts || !fill || !p || !s.client || !s.index) {
        st = fc_error_set(err, FC_ERR_NOMEM, "split: out of memory for %zu examples", n);
        goto done;
    }
    ex_rng rng;
    ex_rng_seed(&rng, ex_seed_derive(cfg->seed, SPLIT_STREAM, 0));

    /* Group indices by class (counting sort keeps dataset order), then shuffle each class. */
    for (size_t i = 0; i < n; i++)
        class_start[labels[i] + 1]++;
    for (size_t k = 0; k < classes; k++)
        class_start[k + 1] += class_start[k];
    memcpy(next_slot, class_start, classes * sizeof *next_slot);
    for (size_t i = 0; i < n; i++)
        by_class[next_slot[labels[i]]++] = i;
    for (size_t k = 0; k < classes; k++)
        ex_rng_shuffle(&rng, by_class + class_start[k], class_start[k + 1] - class_start[k]);

    s.draws = 0;
    do {
        draw(&rng, by_class, class_start, classes, cfg, p, owner, counts);
        s.draws++;
    } while (min_count(counts, C) < cfg->min_examples && s.draws < EX_SPLIT_MAX_DRAWS);

    /* Rule 3: top up short clients from the largest one. Terminates because n >= C * min. */
    for (;;) {
        size_t short_client = C, donor = 0;
        for (size_t j = 0; j < C; j++) {
            if (short_client == C && counts[j] < cfg->min_examples)
                short_client = j;
            if (counts[j] > counts[donor])
                donor = j;
        }
        if (short_client == C)
            break;
        size_t i = n;
        while (i > 0 && owner[i - 1] != donor)
            i--;
        owner[i - 1] = short_client;
        counts[donor]--;
        counts[short_client]++;
        s.moved++;
    }

    /* Lay out each client's examples contiguously (ascending index), then shuffle and cut. */
    size_t offset = 0;
    for (size_t j = 0; j < C; j++) {
        fill[j] = offset;
        offset += counts[j];
    }
    for (size_t i = 0; i < n; i++)
        s.index[fill[owner[i]]++] = i;
    offset = 0;
    for (size_t j = 0; j < C; j++) {
        size_t *mine = s.index + offset;
        ex_rng_shuffle(&rng, mine, counts[j]);
        size_t n_test = 0;
        if (cfg->test_fraction > 0) {
            n_test = (size_t)llround(cfg->test_fraction * (double)counts[j]);
            if (n_test < 1)
                n_test = 1;
            if (n_test > counts[j] - 1)
                n_test = counts[j] - 1;
        }
        s.client[j].test = mine;
        s.client[j].n_test = n_test;
        s.client[j].train = mine + n_test;
        s.client[j].n_train = counts[j] - n_test;
        offset += counts[j];
    }
    s.clients = C;
    s.n = n;
    *out = s;
    s.client = NULL;
    s.index = NULL;
    st = FC_OK;
done:
    fc_free(by_class);
    fc_free(class_start);
    fc_free(next_slot);
    fc_free(owner);
    fc_free(counts);
    fc_free(fill);
    fc_free(p);
    fc_free(s.client);
    fc_free(s.index);
    return st;
}
