/* split.h: the seeded non-IID partition of a labelled dataset over federated clients.
 *
 * Rule (Hsu et al. 2019; the "label Dirichlet" split of NIID-Bench, Li et al. 2022):
 *   1. For each class k, its examples are shuffled and proportions p ~ Dirichlet(alpha, ..., alpha)
 *      over the C clients are drawn; client j gets the examples between the cumulative boundaries
 *      round(n_k * (p_0+...+p_{j-1})) and round(n_k * (p_0+...+p_j)).
 *   2. If some client holds fewer than min_examples, step 1 is redrawn from the same generator
 *      stream, up to EX_SPLIT_MAX_DRAWS times in all. Small alpha gives skewed label mixes, large
 *      alpha near-uniform ones.
 *   3. If the last draw still leaves a client short (only at tiny alpha), examples are moved one
 *      at a time to it from the client holding the most (lowest id on ties), taking that client's
 *      highest dataset index, until every client has min_examples.
 *   4. Each client's examples are shuffled and the first round(test_fraction * n) (at least 1,
 *      at most n - 1, when test_fraction > 0) become its local test split; the rest its train split.
 * Every example is assigned to exactly one client and one split. Same inputs and seed, same split.
 *
 * This module owns the index arrays. It never reads features, only labels.
 */
#ifndef EX_SPLIT_H
#define EX_SPLIT_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

#define EX_SPLIT_MAX_DRAWS 100
#define EX_SPLIT_MAX_CLIENTS 10000

typedef struct ex_split_config {
    size_t clients;       /* C >= 1 */
    double alpha;         /* Dirichlet concentration, finite, > 0 */
    uint64_t seed;
    double test_fraction; /* in [0, 0.9] */
    size_t min_examples;  /* per client, >= 2 when test_fraction > 0 (one train, one test) */
} ex_split_config;

typedef struct ex_client_split {
    const size_t *train; /* dataset indices, pointers into ex_split.index */
    size_t n_train;
    const size_t *test;
    size_t n_test;
} ex_client_split;

typedef struct ex_split {
    size_t clients;
    ex_client_split *client; /* clients entries */
    size_t *index;           /* all n indices: client 0's test then train, then client 1's, ... */
    size_t n;
    size_t draws;            /* Dirichlet draws used (1..EX_SPLIT_MAX_DRAWS) */
    size_t moved;            /* examples moved by rule 3 */
} ex_split;

#define EX_SPLIT_INIT {0, NULL, NULL, 0, 0, 0}

/* Splits n examples with labels[i] < classes. *out must be empty (EX_SPLIT_INIT) and is freed
 * with ex_split_free. Errors: FC_ERR_INVALID (bad config: which value and why, e.g. "10 clients
 * with at least 10 examples each need 100 examples, have 40"; or a label >= classes),
 * FC_ERR_NOMEM. On error *out stays empty. Does not block. */
fc_status ex_split_dirichlet(const uint8_t *labels, size_t n, size_t classes,
                             const ex_split_config *cfg, ex_split *out, fc_error *err);

void ex_split_free(ex_split *s);

#endif
