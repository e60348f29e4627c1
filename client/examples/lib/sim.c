/* sim.c: the centralized baseline and the in-process federated simulation (see sim.h). It owns
 * the per-round buffers and the rule/optimizer instances of one run; it never prints. */
#include "client/examples/lib/sim.h"

#include <string.h>
#include <time.h>

#include "client/examples/lib/participation.h"
#include "core/alloc.h"

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void ex_sim_evaluate(const float *w, const ex_dataset *d, const ex_split *s, double *mean_loss,
                     double *accuracy) {
    double loss_sum = 0;
    size_t correct = 0, total = 0;
    for (size_t j = 0; j < s->clients; j++) {
        double loss;
        size_t ok;
        ex_sm_evaluate(w, d, s->client[j].test, s->client[j].n_test, &loss, &ok);
        loss_sum += loss * (double)s->client[j].n_test;
        correct += ok;
        total += s->client[j].n_test;
    }
    if (mean_loss)
        *mean_loss = total ? loss_sum / (double)total : 0;
    if (accuracy)
        *accuracy = total ? (double)correct / (double)total : 0;
}

fc_status ex_client_round(const ex_dataset *d, const ex_client_split *c, const ex_train_config *tc,
                          uint64_t seed, uint64_t client, uint64_t round, const float *global,
                          float *delta, double *train_loss, fc_error *err) {
    memcpy(delta, global, EX_SM_PARAMS * sizeof *delta);
    ex_rng rng;
    ex_rng_seed(&rng, ex_seed_derive(seed, 1 + client, round));
    fc_status st = ex_sm_train(delta, d, c->train, c->n_train, tc, global, &rng, train_loss, err);
    if (st != FC_OK)
        return st;
    for (size_t i = 0; i < EX_SM_PARAMS; i++)
        delta[i] = delta[i] - global[i];
    return FC_OK;
}

fc_status ex_sim_centralized(const ex_dataset *d, const ex_split *s, const ex_train_config *train,
                             uint64_t seed, float *w, fc_error *err) {
    size_t n = 0;
    for (size_t j = 0; j < s->clients; j++)
        n += s->client[j].n_train;
    size_t *pool = fc_mallocarray(n ? n : 1, sizeof *pool);
    if (!pool)
        return fc_error_set(err, FC_ERR_NOMEM, "centralized: out of memory");
    size_t at = 0;
    for (size_t j = 0; j < s->clients; j++) {
        memcpy(pool + at, s->client[j].train, s->client[j].n_train * sizeof *pool);
        at += s->client[j].n_train;
    }
    ex_rng rng;
    ex_rng_seed(&rng, ex_seed_derive(seed, 0, 0));
    fc_status st = ex_sm_train(w, d, pool, n, train, NULL, &rng, NULL, err);
    if (st != FC_OK)
        fc_error_prefix(err, "centralized");
    fc_free(pool);
    return st;
}

fc_status ex_sim_federated(const ex_dataset *d, const ex_split *s, const ex_sim_config *cfg,
                           float *w, ex_round_cb cb, void *user, fc_error *err) {
    const agg_rule *rule = agg_rule_find(cfg->rule);
    if (!rule)
        return fc_error_set(err, FC_ERR_CONFIG, "unknown rule '%s'; known: %s",
                            cfg->rule ? cfg->rule : "(none)", agg_rule_names());
    const agg_opt *opt = agg_opt_find(cfg->opt);
    if (!opt)
        return fc_error_set(err, FC_ERR_CONFIG, "unknown optimizer '%s'; known: %s",
                            cfg->opt ? cfg->opt : "(none)", agg_opt_names());
    const size_t C = s->clients, P = EX_SM_PARAMS;
    const size_t f = cfg->attack == EX_ATTACK_NONE ? 0 : cfg->attackers;
    if (cfg->attack != EX_ATTACK_NONE && cfg->participation)
        return fc_error_set(err, FC_ERR_CONFIG, "attacks need every client in every round");
    if (cfg->oracle && !cfg->participation)
        return fc_error_set(err, FC_ERR_CONFIG, "the oracle weights by 1/p: it needs participation");
    if (cfg->attack != EX_ATTACK_NONE &&
        (f == 0 || f >= C || (cfg->attack == EX_ATTACK_ALIE && C - f < 2)))
        return fc_error_set(err, FC_ERR_CONFIG,
                            "attack %s with %zu attackers of %zu clients: need at least 1 "
                            "attacker and %d honest clients", ex_attack_name(cfg->attack), f, C,
                            cfg->attack == EX_ATTACK_ALIE ? 2 : 1);
    fc_status st;
    agg_opt_state *opt_state = NULL;
    agg_round *round = NULL;
    fc_buf rule_blob = FC_BUF_INIT, next_blob = FC_BUF_INIT;
    float *deltas = fc_mallocarray(C, P * sizeof(float));
    double *agg = fc_mallocarray(P, sizeof *agg);
    float *crafted = fc_mallocarray(P, sizeof *crafted);
    uint8_t *in = fc_calloc(C, 1);
    uint8_t *flipped = NULL;
    if (cfg->attack == EX_ATTACK_LABELFLIP && (flipped = fc_malloc(d->n ? d->n : 1)) != NULL)
        for (size_t i = 0; i < d->n; i++)
            flipped[i] = (uint8_t)ex_attack_flip_label(d->y[i]);
    if (!deltas || !agg || !crafted || !in || (cfg->attack == EX_ATTACK_LABELFLIP && !flipped)) {
        st = fc_error_set(err, FC_ERR_NOMEM, "simulation: out of memory for %zu clients", C);
        goto done;
    }
    /* The attackers' view of the data: same features, labels 9 - y. */
    const ex_dataset poisoned = {d->n, d->x, flipped};
    if ((st = opt->create(&cfg->opt_params, P, &opt_state, err)) != FC_OK)
        goto done;
    for (size_t t = 0; t < cfg->rounds; t++) {
        double t0 = now_seconds();
        agg_context ctx = {.dim = P, .round = t, .num_registered = C};
        if ((st = agg_round_begin(rule, &cfg->rule_params, &ctx, rule_blob.data, rule_blob.len,
                                  &round, err)) != FC_OK) {
            fc_error_prefix(err, "round %zu", t + 1);
            goto done;
        }
        double loss_sum = 0, weight_sum = 0;
        size_t n_in = 0;
        for (size_t j = 0; j < C; j++) {
            const ex_client_split *c = &s->client[j];
            in[j] = !cfg->participation ||
                    ex_participates(cfg->seed, j, t, cfg->participation[j]);
            if (!in[j])
                continue;
            n_in++;
            const ex_dataset *data = j < f && flipped ? &poisoned : d;
            double loss = 0;
            st = ex_client_round(data, c, &cfg->train, cfg->seed, j, t, w, deltas + j * P, &loss,
                                 err);
            if (st != FC_OK) {
                fc_error_prefix(err, "round %zu, client %zu", t + 1, j);
                goto done;
            }
            loss_sum += loss * (double)c->n_train;
            weight_sum += (double)c->n_train;
        }
        /* Omniscient attacks see the honest rows f..C-1 of this round. */
        if (cfg->attack == EX_ATTACK_ALIE)
            st = ex_attack_alie(deltas + f * P, C - f, P, cfg->attack_param, crafted, err);
        else if (cfg->attack == EX_ATTACK_IPM)
            st = ex_attack_ipm(deltas + f * P, C - f, P, cfg->attack_param, crafted, err);
        if (st != FC_OK) {
            fc_error_prefix(err, "round %zu", t + 1);
            goto done;
        }
        for (size_t j = 0; j < f; j++) {
            float *delta = deltas + j * P;
            if (cfg->attack == EX_ATTACK_SIGNFLIP)
                ex_attack_signflip(delta, P, cfg->attack_param, delta);
            else if (cfg->attack == EX_ATTACK_NOISE)
                ex_attack_noise(ex_seed_derive(cfg->seed ^ EX_ATTACK_NOISE_STREAM, 1 + j, t), P,
                                cfg->attack_param, delta);
            else if (cfg->attack == EX_ATTACK_ALIE || cfg->attack == EX_ATTACK_IPM)
                memcpy(delta, crafted, P * sizeof *delta);
        }
        for (size_t j = 0; j < C && !cfg->oracle; j++) {
            agg_update u = {.client_id = j, .dtype = FC_DTYPE_F32, .data = deltas + j * P,
                            .data_stable = 1, .weight = (double)s->client[j].n_train};
            if (in[j] && (st = agg_round_add(round, &u, err)) != FC_OK) {
                fc_error_prefix(err, "round %zu, client %zu", t + 1, j);
                goto done;
            }
        }
        size_t used = n_in;
        int empty = n_in == 0;
        if (cfg->oracle) {
            ex_oracle_aggregate(deltas, in, cfg->participation, C, P, agg);
        } else {
            agg_report rep;
            agg_report_init(&rep);
            st = agg_round_finish(round, agg, &rep, err);
            used = rep.n_used;
            empty = rep.empty;
            agg_report_free(&rep);
        }
        if (st != FC_OK) {
            fc_error_prefix(err, "round %zu", t + 1);
            goto done;
        }
        if (!empty) {
            fc_buf_reset(&next_blob);
            if ((!cfg->oracle && (st = agg_round_save_state(round, &next_blob, err)) != FC_OK) ||
                (st = opt->step(opt_state, w, agg, err)) != FC_OK) {
                fc_error_prefix(err, "round %zu", t + 1);
                goto done;
            }
            fc_buf tmp = rule_blob;
            rule_blob = next_blob;
            next_blob = tmp;
        }
        agg_round_free(round);
        round = NULL;
        ex_round_stats rs = {.round = t + 1, .clients = used, .empty = empty,
                             .train_loss = weight_sum > 0 ? loss_sum / weight_sum : 0};
        ex_sim_evaluate(w, d, s, &rs.eval_loss, &rs.eval_accuracy);
        rs.seconds = now_seconds() - t0;
        if (cb)
            cb(&rs, user);
    }
    st = FC_OK;
done:
    agg_round_free(round);
    if (opt_state)
        opt->destroy(opt_state);
    fc_buf_free(&rule_blob);
    fc_buf_free(&next_blob);
    fc_free(deltas);
    fc_free(agg);
    fc_free(crafted);
    fc_free(in);
    fc_free(flipped);
    return st;
}
