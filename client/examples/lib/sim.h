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
 * Attack mode (attack != EX_ATTACK_NONE, attackers = f > 0): clients 0..f-1 are Byzantine
 * (the split is a seeded random partition, so the first f ids are as good as any f). Every
 * client first computes its delta as above; a labelflip attacker trains on labels 9 - y instead.
 * Then each attacker's delta is replaced by the crafted one (client/examples/lib/attack.h): sign
 * flip of its own delta; Gaussian noise seeded by ex_seed_derive(seed ^ EX_ATTACK_NOISE_STREAM,
 * 1 + j, t); ALIE or IPM computed from the deltas of the honest clients f..C-1 of the same round
 * (omniscient attacker). Attackers report their real n_train as weight. All C updates then
 * go to the rule in client order; evaluation is on every client's test split, as without attack.
 * Participation (participation != NULL): only the clients that take part in round t train and
 * reach the rule; fedau's N is still every client. Attacks need full participation.
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
#include "client/examples/lib/attack.h"
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
    ex_attack_kind attack; /* EX_ATTACK_NONE (zero-initialised) = no attack */
    size_t attackers;      /* f: clients 0..f-1 attack; must be < clients */
    double attack_param;   /* c, sigma, z or eps (see attack.h); unused by labelflip */
    /* Partial participation (NULL: every client every round): client j trains and reports in
     * round t only when ex_participates(seed, j, t, participation[j]) (participation.h). */
    const double *participation;
    /* With participation: the "known probability" oracle of the FedAU experiment replaces the
     * rule: D = (1/C) * sum over participants of delta_j / p_j, computed here (a server never
     * knows p_j), then the optimizer steps as usual. */
    int oracle;
} ex_sim_config;

/* Mixed into the seed of the noise attack's generator so that it never shares a stream with
 * training. */
#define EX_ATTACK_NOISE_STREAM 0x4e4f495345ull

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
 * for an unknown rule or optimizer (listing the known ones) or bad parameters, or for an attack
 * whose attackers leave too few honest clients (alie needs 2, the others 1), and any error of
 * training or aggregation, with the round and client in the message. */
fc_status ex_sim_federated(const ex_dataset *d, const ex_split *s, const ex_sim_config *cfg,
                           float *w, ex_round_cb cb, void *user, fc_error *err);

/* Trains w in place on the pooled train splits for train->epochs passes. */
fc_status ex_sim_centralized(const ex_dataset *d, const ex_split *s, const ex_train_config *train,
                             uint64_t seed, float *w, fc_error *err);

#endif
