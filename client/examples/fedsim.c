/* fedsim.c: an in-process simulation of the demo's federation. C clients with a non-IID
 * Dirichlet split of the digits train softmax regression locally each round; their deltas are
 * combined by the real aggregation code (aggregators/: any rule, any server optimizer) and the
 * federated test accuracy is printed per round, then compared with the centralized baseline.
 * It never opens a socket: it proves the learning side of the demo on its own. */
#include <stdio.h>
#include <string.h>

#include "client/examples/lib/attack.h"
#include "client/examples/lib/cli.h"
#include "client/examples/lib/common.h"
#include "client/examples/lib/participation.h"
#include "client/examples/lib/sim.h"
#include "core/alloc.h"
#include "core/safetensors.h"

#define MAX_PARAMS 32

static void usage(FILE *f) {
    fprintf(f,
            "usage: fedsim [options]\n"
            "Simulates federated training of softmax regression on the digits, in one process,\n"
            "with the real aggregation rules and server optimizers; prints one line per round and\n"
            "'final accuracy: A (centralized baseline B)'.\n"
            "  --data PATH        digits CSV, .gz read through gzip -dc (default %s)\n"
            "  --clients C        number of clients (default %d)\n"
            "  --alpha A          Dirichlet concentration of the label split (default %g)\n"
            "  --seed S           seed of the split and of training (default %d)\n"
            "  --rounds R         federated rounds (default %d)\n"
            "  --epochs E         local epochs per round (default %d)\n"
            "  --lr LR            client SGD learning rate (default %g)\n"
            "  --batch B          client mini-batch size (default %d)\n"
            "  --mu MU            FedProx coefficient, 0 = off (default 0)\n"
            "  --rule NAME        aggregation rule (default fedavg; known: %s)\n"
            "  --param K=V        rule parameter, repeatable\n"
            "  --opt NAME         server optimizer (default sgd with lr=1; known: %s)\n"
            "  --opt-param K=V    optimizer parameter, repeatable\n"
            "  --baseline-epochs E  epochs of the centralized baseline (default %d)\n"
            "  --save PATH        write the final model as safetensors\n"
            "  --attack NAME      Byzantine simulation: none (default), signflip (-c*own delta),\n"
            "                     noise (N(0,sigma^2) instead of the delta), alie (mean - z*std of\n"
            "                     the honest deltas), ipm (-eps*mean of the honest deltas),\n"
            "                     labelflip (train on labels 9-y); alie and ipm are omniscient:\n"
            "                     they see the honest deltas of the round\n"
            "  --attackers FRAC   fraction of clients that attack, f = round(FRAC*C) (clients\n"
            "                     0..f-1; default 0.2 when --attack is given)\n"
            "  --attack-param X   c for signflip (1), sigma for noise (sqrt(200)), z for alie\n"
            "                     (Phi^-1((n-f-s)/(n-f)), s = floor(n/2+1)-f), eps for ipm (0.1)\n"
            "  --participation M  full (default: every client every round) or bernoulli: client\n"
            "                     j takes part in each round with its own probability p_j, tied\n"
            "                     to its data (p_j grows with its share of digits 5..9; see\n"
            "                     docs/experiments/fedau.md), unknown to the rule\n"
            "  --p-mean P         bernoulli: mean of the p_j (default 0.1)\n"
            "  --p-min P          bernoulli: smallest p_j (default 0.02)\n"
            "  --oracle-weights   bernoulli: aggregate with the true 1/p_j instead of the rule:\n"
            "                     D = (1/C) sum over participants of delta_j / p_j\n"
            "  --help             this text\n",
            EX_DEFAULT_DATA, EX_DEFAULT_CLIENTS, EX_DEFAULT_ALPHA, EX_DEFAULT_SEED,
            EX_DEFAULT_ROUNDS, EX_DEFAULT_LOCAL_EPOCHS, EX_DEFAULT_LR, EX_DEFAULT_BATCH,
            agg_rule_names(), agg_opt_names(), EX_DEFAULT_CENTRAL_EPOCHS);
}

static void print_round(const ex_round_stats *rs, void *user) {
    (void)user;
    printf("%5zu %7zu %10.4f %9.4f %8.1f%s\n", rs->round, rs->clients, rs->train_loss,
           rs->eval_accuracy, rs->seconds * 1e3, rs->empty ? "  (empty round)" : "");
    fflush(stdout);
}

int main(int argc, char **argv) {
    const char *data_path = EX_DEFAULT_DATA, *save_path = NULL;
    ex_split_config sc = {EX_DEFAULT_CLIENTS, EX_DEFAULT_ALPHA, EX_DEFAULT_SEED,
                          EX_DEFAULT_TEST_FRACTION, EX_DEFAULT_MIN_EXAMPLES};
    agg_kv rule_kv[MAX_PARAMS], opt_kv[MAX_PARAMS];
    ex_sim_config cfg = {
        .rounds = EX_DEFAULT_ROUNDS,
        .train = {EX_DEFAULT_LOCAL_EPOCHS, EX_DEFAULT_LR, EX_DEFAULT_BATCH, 0},
        .rule = "fedavg",
        .rule_params = {rule_kv, 0},
        .opt = "sgd",
        .opt_params = {opt_kv, 0},
    };
    size_t baseline_epochs = EX_DEFAULT_CENTRAL_EPOCHS;
    double attackers = 0.2, attack_param = 0, p_mean = 0.1, p_min = 0.02;
    int attack_param_set = 0, bernoulli = 0;
    fc_error err = {0};
    fc_status st = FC_OK;
    for (int i = 1; i < argc && st == FC_OK; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(a, "--oracle-weights") == 0) {
            cfg.oracle = 1;
            continue;
        }
        if (i + 1 >= argc || strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "fedsim: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        }
        char *v = argv[++i];
        if (strcmp(a, "--data") == 0)
            data_path = v;
        else if (strcmp(a, "--save") == 0)
            save_path = v;
        else if (strcmp(a, "--clients") == 0)
            st = ex_cli_size(a, v, 1, EX_SPLIT_MAX_CLIENTS, &sc.clients, &err);
        else if (strcmp(a, "--alpha") == 0)
            st = ex_cli_double(a, v, 0, 1, 1e6, &sc.alpha, &err);
        else if (strcmp(a, "--seed") == 0)
            st = ex_cli_u64(a, v, &sc.seed, &err);
        else if (strcmp(a, "--rounds") == 0)
            st = ex_cli_size(a, v, 1, 100000, &cfg.rounds, &err);
        else if (strcmp(a, "--epochs") == 0)
            st = ex_cli_size(a, v, 1, 100000, &cfg.train.epochs, &err);
        else if (strcmp(a, "--baseline-epochs") == 0)
            st = ex_cli_size(a, v, 1, 100000, &baseline_epochs, &err);
        else if (strcmp(a, "--lr") == 0)
            st = ex_cli_double(a, v, 0, 1, 1e3, &cfg.train.lr, &err);
        else if (strcmp(a, "--batch") == 0)
            st = ex_cli_size(a, v, 1, 1000000, &cfg.train.batch, &err);
        else if (strcmp(a, "--mu") == 0)
            st = ex_cli_double(a, v, 0, 0, 1e6, &cfg.train.mu, &err);
        else if (strcmp(a, "--attack") == 0)
            st = ex_attack_parse(v, &cfg.attack, &err);
        else if (strcmp(a, "--participation") == 0) {
            if (strcmp(v, "bernoulli") == 0 || strcmp(v, "full") == 0)
                bernoulli = v[0] == 'b';
            else
                st = fc_error_set(&err, FC_ERR_CONFIG,
                                  "--participation '%s': expected full or bernoulli", v);
        } else if (strcmp(a, "--p-mean") == 0)
            st = ex_cli_double(a, v, 0, 1, 1, &p_mean, &err);
        else if (strcmp(a, "--p-min") == 0)
            st = ex_cli_double(a, v, 0, 1, 1, &p_min, &err);
        else if (strcmp(a, "--attackers") == 0)
            st = ex_cli_double(a, v, 0, 1, 0.99, &attackers, &err);
        else if (strcmp(a, "--attack-param") == 0) {
            st = ex_cli_double(a, v, -1e6, 0, 1e6, &attack_param, &err);
            attack_param_set = 1;
        } else if (strcmp(a, "--rule") == 0)
            cfg.rule = v;
        else if (strcmp(a, "--opt") == 0)
            cfg.opt = v;
        else if (strcmp(a, "--param") == 0 || strcmp(a, "--opt-param") == 0) {
            agg_params *p = a[2] == 'p' ? &cfg.rule_params : &cfg.opt_params;
            agg_kv *kv = (agg_kv *)p->items;
            if (p->count == MAX_PARAMS) {
                fprintf(stderr, "fedsim: %s: at most %d parameters\n", a, MAX_PARAMS);
                return 2;
            }
            st = ex_cli_kv(a, v, &kv[p->count].key, &kv[p->count].value, &err);
            if (st == FC_OK)
                p->count++;
        } else {
            fprintf(stderr, "fedsim: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (st == FC_OK && cfg.oracle && !bernoulli)
        st = fc_error_set(&err, FC_ERR_CONFIG, "--oracle-weights needs --participation bernoulli");
    if (st == FC_OK && bernoulli && cfg.attack != EX_ATTACK_NONE)
        st = fc_error_set(&err, FC_ERR_CONFIG, "--attack needs --participation full");
    if (st != FC_OK) {
        fprintf(stderr, "fedsim: %s\n", fc_error_text(&err));
        return 2;
    }
    cfg.seed = sc.seed;
    if (cfg.attack != EX_ATTACK_NONE) {
        cfg.attackers = (size_t)(attackers * (double)sc.clients + 0.5);
        cfg.attack_param = attack_param;
        if (cfg.attackers == 0 || cfg.attackers >= sc.clients) {
            fprintf(stderr, "fedsim: --attackers %g of %zu clients gives %zu attackers; need 1 "
                    "to %zu\n", attackers, sc.clients, cfg.attackers, sc.clients - 1);
            return 2;
        }
        if (!attack_param_set &&
            ex_attack_default_param(cfg.attack, sc.clients, cfg.attackers, &cfg.attack_param,
                                    &err) != FC_OK) {
            fprintf(stderr, "fedsim: %s\n", fc_error_text(&err));
            return 2;
        }
    }

    ex_dataset data = EX_DATASET_INIT;
    ex_split split = EX_SPLIT_INIT;
    double *p = NULL;
    if ((st = ex_load_and_split(data_path, &sc, &data, &split, &err)) != FC_OK) {
        fprintf(stderr, "fedsim: %s\n", fc_error_text(&err));
        return 1;
    }
    if (bernoulli) {
        if (!(p = fc_mallocarray(split.clients, sizeof *p)))
            st = fc_error_set(&err, FC_ERR_NOMEM, "participation: out of memory");
        else
            st = ex_participation_probs(&data, &split, p_mean, p_min, p, &err);
        if (st != FC_OK) {
            fprintf(stderr, "fedsim: %s\n", fc_error_text(&err));
            fc_free(p);
            ex_split_free(&split);
            ex_dataset_free(&data);
            return 2;
        }
        double lo = 1, hi = 0, sum = 0;
        for (size_t j = 0; j < split.clients; j++) {
            lo = p[j] < lo ? p[j] : lo;
            hi = p[j] > hi ? p[j] : hi;
            sum += p[j];
        }
        printf("participation: bernoulli, p mean %.4f (min %.4f, max %.4f), tied to the share of "
               "digits 5..9; aggregation %s\n",
               sum / (double)split.clients, lo, hi, cfg.oracle ? "oracle 1/p" : cfg.rule);
        cfg.participation = p;
    }
    printf("fedsim: %zu examples, %zu clients, alpha %g, seed %llu, rule %s, optimizer %s, "
           "%zu rounds x %zu local epochs, lr %g, batch %zu, mu %g\n",
           data.n, split.clients, sc.alpha, (unsigned long long)sc.seed, cfg.rule, cfg.opt,
           cfg.rounds, cfg.train.epochs, cfg.train.lr, cfg.train.batch, cfg.train.mu);
    if (cfg.attack != EX_ATTACK_NONE)
        printf("attack: %s, %zu of %zu clients (ids 0..%zu), param %g%s\n",
               ex_attack_name(cfg.attack), cfg.attackers, split.clients, cfg.attackers - 1,
               cfg.attack_param,
               cfg.attack == EX_ATTACK_ALIE || cfg.attack == EX_ATTACK_IPM
                   ? ", omniscient (sees the honest deltas of each round)" : "");
    printf("round clients train_loss  eval_acc  time_ms\n");
    float w[EX_SM_PARAMS] = {0}, base[EX_SM_PARAMS] = {0};
    ex_train_config btc = cfg.train;
    btc.epochs = baseline_epochs;
    btc.mu = 0;
    double acc = 0, base_acc = 0;
    fc_model m = FC_MODEL_INIT;
    if ((st = ex_sim_federated(&data, &split, &cfg, w, print_round, NULL, &err)) != FC_OK ||
        (st = ex_sim_centralized(&data, &split, &btc, sc.seed, base, &err)) != FC_OK)
        goto out;
    ex_sim_evaluate(w, &data, &split, NULL, &acc);
    ex_sim_evaluate(base, &data, &split, NULL, &base_acc);
    printf("final accuracy: %.4f (centralized baseline %.4f)\n", acc, base_acc);
    if (save_path) {
        if ((st = ex_sm_to_model(w, &m, &err)) != FC_OK ||
            (st = fc_st_write_model(save_path, &m, NULL, 0, &err)) != FC_OK)
            goto out;
        printf("model: %s\n", save_path);
    }
out:
    if (st != FC_OK)
        fprintf(stderr, "fedsim: %s\n", fc_error_text(&err));
    fc_model_free(&m);
    fc_free(p);
    ex_split_free(&split);
    ex_dataset_free(&data);
    return st == FC_OK ? 0 : 1;
}
