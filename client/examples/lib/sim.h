/* sim.h: in-process training runs over a split: the centralized baseline and a FedAvg-style
 * federated simulation that uses the real aggregation code (aggregators/agg.h).
 *
 * Federated round t (0-based), for clients j = 0..C-1 in order:
 *   local = global; train cfg->train on client j's train split (FedProx anchor = global) with a
 *   generator seeded by ex_seed_derive(seed, 1 + j, t); delta_j = local - global (f32);
 *   agg_round_add(client_id j, weight n_train_j). Then D = agg_round_finish, and the server
 *   optimizer steps global with D (an empty round leaves it unchanged). The rule's cross-round
 *   state (fedau) is carried from round to round. Evaluation after each round: the new global
 *   model on every client's local test split, example-weighted (which equals the accuracy on the
 *   union of the test splits).
 * Centralized: the same model, code and train config on the union of the train splits (epochs
 * passes, generator ex_seed_derive(seed, 0, 0)), evaluated on the union of the test splits.
 *
 * This module owns the simulation loop; it never prints (a callback receives each round).
 */
#ifndef EX_SIM_H
#define EX_SIM_H

#include <stddef.h>
#include <stdint.h>

#include "aggregators/agg.h"
#include "client/examples/lib/digits.h"
#include "client/examples/lib/softmax.h"
#include "client/examples/lib/split.h"
#include "core/status.h"

typedef struct ex_sim_config {
    size_t rounds;
    ex_train_config train; /* local training per round */
    const char *rule;      /* aggregation rule name, e.g. "fedavg" */
    agg_params rule_params;
    const char *opt;       /* server optimizer name, e.g. "sgd" */
    agg_params opt_params;
    uint64_t seed;
} ex_sim_config;

typedef struct ex_round_stats {
    size_t round;         /* 1-based */
    size_t clients;       /* updates the rule used */
    double train_loss;    /* example-weighted mean over clients of the last local epoch's loss */
    double eval_loss;     /* global model on the clients' test splits, example-weighted */
    double eval_accuracy;
    double seconds;       /* wall time of the round (training, aggregation, evaluation) */
    int empty;            /* the rule's round was empty: model unchanged */
} ex_round_stats;

typedef void (*ex_round_cb)(const ex_round_stats *stats, void *user);

/* One client's local work in round t, exactly as the simulation does it (and as a real demo
 * client should): local = global, trained on c's train split with the FedProx anchor global and a
 * generator seeded by ex_seed_derive(seed, 1 + client, round); writes delta = local - global
 * (EX_SM_PARAMS f32 values) and the last local epoch's mean loss. Errors: those of ex_sm_train. */
fc_status ex_client_round(const ex_dataset *d, const ex_client_split *c, const ex_train_config *tc,
                          uint64_t seed, uint64_t client, uint64_t round, const float *global,
                          float *delta, double *train_loss, fc_error *err);

/* Accuracy and mean loss of w on the union of the clients' test splits. */
void ex_sim_evaluate(const float *w, const ex_dataset *d, const ex_split *s, double *mean_loss,
                     double *accuracy);

/* Runs the federated simulation from w (EX_SM_PARAMS values, the initial model; updated in
 * place to the final model). cb (may be NULL) is called after every round. Errors: FC_ERR_CONFIG
 * for an unknown rule or optimizer (listing the known ones) or bad parameters, and any error of
 * training or aggregation, with the round and client in the message. */
fc_status ex_sim_federated(const ex_dataset *d, const ex_split *s, const ex_sim_config *cfg,
                           float *w, ex_round_cb cb, void *user, fc_error *err);

/* Trains w in place on the pooled train splits for train->epochs passes. */
fc_status ex_sim_centralized(const ex_dataset *d, const ex_split *s, const ex_train_config *train,
                             uint64_t seed, float *w, fc_error *err);

#endif
