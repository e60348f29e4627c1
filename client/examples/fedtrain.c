/* fedtrain.c: fedtrain, the networked example trainer of the demo. One process is one federated
 * client: it loads the digits, takes its own shard of the seeded Dirichlet split (the same split
 * as fedsim and centralized), connects to fedcoord through libfedclient and runs the task loop:
 * TRAIN = local SGD epochs of softmax regression from the task's model (FedProx through
 * fc_task_prox_add when the task's mu > 0) and submit the weights; EVALUATE = loss and accuracy
 * on its local held-out test split; "done" = exit 0. With --write-initial it only writes the
 * initial model file and exits. It never retries by itself: reconnection is the SDK's job. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "client/examples/lib/cli.h"
#include "client/examples/lib/common.h"
#include "client/examples/lib/node.h"
#include "client/examples/lib/rng.h"
#include "client/examples/lib/softmax.h"
#include "core/status.h"
#include "core/tensor.h"
#include "fedcoord/client.h"

#define PROG "fedtrain"
/* How long one fc_client_next_task call waits before it is simply called again. */
#define WAIT_MS 60000u
#define MAX_EPOCHS 10000

static void usage(FILE *f) {
    fprintf(f,
            "usage: fedtrain --server HOST:PORT --ca PEM --name NAME --token-file FILE\n"
            "                --client-index I [--clients N] [--alpha A] [--seed S] [options]\n"
            "       fedtrain --write-initial PATH [--init-std SD] [--seed S]\n"
            "\n"
            "The demo's federated client: trains softmax regression on shard I of the seeded\n"
            "Dirichlet split of the digits (the split fedsim and centralized use) for the fedcoord\n"
            "coordinator, until the coordinator says the federation is done (exit 0).\n"
            "\n"
            "connection:\n"
            "  --server HOST:PORT  coordinator address\n"
            "  --ca PEM            CA bundle that issued the coordinator's certificate\n"
            "  --server-name NAME  name to verify in the certificate (default: HOST)\n"
            "  --name NAME         client name the token was issued to (fedctl client add NAME)\n"
            "  --token-file FILE   file holding the token on its first line (keep it mode 600)\n"
            "data:\n"
            "  --data PATH         digits CSV, .gz read through gzip -dc (default %s)\n"
            "  --client-index I    this client's shard, 0..N-1\n"
            "  --clients N         clients of the split (default %d)\n"
            "  --alpha A           Dirichlet concentration of the label split (default %g)\n"
            "  --seed S            seed of the split and of local training (default %d)\n"
            "local training (a task's config keys lr, local_epochs, batch_size and mu win):\n"
            "  --lr LR             SGD learning rate (default %g)\n"
            "  --epochs E          local epochs per round (default %d)\n"
            "  --batch B           mini-batch size (default %d)\n"
            "initial model:\n"
            "  --write-initial PATH  write the initial model (safetensors) and exit\n"
            "  --init-std SD       weights ~ N(0, SD^2) from --seed; 0 = all zeros (default 0)\n"
            "  --help              this text\n",
            EX_DEFAULT_DATA, EX_DEFAULT_CLIENTS, EX_DEFAULT_ALPHA, EX_DEFAULT_SEED,
            EX_DEFAULT_LR, EX_DEFAULT_LOCAL_EPOCHS, EX_DEFAULT_BATCH);
}

typedef struct options {
    const char *server, *ca, *server_name, *name, *token_file, *data, *write_initial;
    int have_index;
    size_t index;
    ex_split_config split;
    ex_train_config train;
    double init_std;
} options;

typedef struct trainer {
    const options *o;
    fc_client *c;
    ex_dataset data;
    ex_split split;
    const ex_client_split *mine;
} trainer;

/* Reads the task's model into w. */
static fc_status task_model(fc_task *t, float *w, fc_error *err) {
    size_t n = fc_task_tensor_count(t);
    ex_tensor_view v[2];
    fc_tensor_info info[2];
    for (size_t i = 0; i < n && i < 2; i++) {
        fc_status st = fc_task_tensor(t, i, &info[i]);
        if (st != FC_OK)
            return fc_error_set(err, st, "task tensor %zu: %s", i, fc_strerror(st));
        v[i] = (ex_tensor_view){info[i].name, info[i].dtype, info[i].ndim, info[i].shape,
                                info[i].nbytes, info[i].data};
    }
    return ex_sm_from_views(v, n, w, err);
}

/* A numeric task config value in [min, max], or def when the key is absent. A present but
 * malformed or out-of-range value is an error naming the key and the text. */
static fc_status cfg_double(fc_task *t, const char *key, double def, double min, int min_open,
                            double max, double *out, fc_error *err) {
    fc_status st = fc_task_config_double(t, key, def, out);
    if (st == FC_ERR_NOT_FOUND) {
        *out = def;
        return FC_OK;
    }
    const char *raw = fc_task_config(t, key);
    if (st != FC_OK || *out < min || (min_open && *out == min) || *out > max)
        return fc_error_set(err, FC_ERR_CONFIG,
                            "task config %s = '%s': expected a number in %s%g..%g", key,
                            raw ? raw : "", min_open ? "(>) " : "", min, max);
    return FC_OK;
}

static fc_status cfg_size(fc_task *t, const char *key, size_t def, size_t max, size_t *out,
                          fc_error *err) {
    int64_t v;
    fc_status st = fc_task_config_int64(t, key, (int64_t)def, &v);
    if (st == FC_ERR_NOT_FOUND) {
        *out = def;
        return FC_OK;
    }
    const char *raw = fc_task_config(t, key);
    if (st != FC_OK || v < 1 || (uint64_t)v > max)
        return fc_error_set(err, FC_ERR_CONFIG,
                            "task config %s = '%s': expected an integer in 1..%zu", key,
                            raw ? raw : "", max);
    *out = (size_t)v;
    return FC_OK;
}

/* Puts "round N" in front of err's message and returns st. */
static fc_status prefix_round(fc_error *err, const fc_task *t, fc_status st) {
    fc_error_prefix(err, "round %" PRIu64, fc_task_round(t));
    return st;
}

typedef struct prox_ctx {
    fc_task *t;
    double mu;
} prox_ctx;

/* FedProx through the SDK: grad += mu * (w - w_t) on both tensors of the task's model. */
static fc_status sdk_prox(void *user, float *g32, const float *w, fc_error *err) {
    prox_ctx *p = user;
    fc_status st = fc_task_prox_add(p->t, 0, g32, w, p->mu);
    if (st == FC_OK)
        st = fc_task_prox_add(p->t, 1, g32 + EX_SM_WEIGHTS, w + EX_SM_WEIGHTS, p->mu);
    if (st != FC_OK)
        return fc_error_set(err, st, "FedProx term (fc_task_prox_add): %s", fc_strerror(st));
    return FC_OK;
}

/* A TRAIN task: returns FC_OK when the update was submitted or refused by the server for this
 * round only (the loop goes on); another status ends the client. */
static fc_status do_train(trainer *tr, fc_task *t, fc_error *err) {
    static float global[EX_SM_PARAMS], w[EX_SM_PARAMS];
    ex_train_config tc = tr->o->train;
    fc_status st;
    if ((st = task_model(t, global, err)) != FC_OK ||
        (st = cfg_double(t, "lr", tc.lr, 0, 1, 1e3, &tc.lr, err)) != FC_OK ||
        (st = cfg_size(t, "local_epochs", tc.epochs, MAX_EPOCHS, &tc.epochs, err)) != FC_OK ||
        (st = cfg_size(t, "batch_size", tc.batch, 1000000, &tc.batch, err)) != FC_OK ||
        (st = cfg_double(t, "mu", 0, 0, 0, 1e6, &tc.mu, err)) != FC_OK)
        return prefix_round(err, t, st);
    memcpy(w, global, sizeof w);
    ex_rng rng;
    ex_rng_seed(&rng, ex_seed_derive(tr->o->split.seed, 1 + tr->o->index, fc_task_round(t)));
    prox_ctx pc = {t, tc.mu};
    double loss = 0;
    st = ex_sm_train_hooked(w, &tr->data, tr->mine->train, tr->mine->n_train, &tc,
                            tc.mu > 0 ? sdk_prox : NULL, &pc, &rng, &loss, err);
    if (st != FC_OK)
        return prefix_round(err, t, st);
    size_t correct = 0;
    ex_sm_evaluate(w, &tr->data, tr->mine->train, tr->mine->n_train, NULL, &correct);
    double acc = (double)correct / (double)tr->mine->n_train;
    const void *tensors[2] = {w, w + EX_SM_WEIGHTS};
    fc_metric m[2] = {{"train_loss", loss}, {"train_accuracy", acc}};
    st = fc_client_submit(tr->c, t, FC_SUBMIT_WEIGHTS, tensors, tr->mine->n_train, m, 2);
    if (st == FC_OK) {
        printf("%s %s: round %" PRIu64 " train: %zu examples, %zu epochs, lr %g, mu %g, "
               "loss %.4f, accuracy %.4f\n",
               PROG, tr->o->name, fc_task_round(t), tr->mine->n_train, tc.epochs, tc.lr, tc.mu,
               loss, acc);
        return FC_OK;
    }
    if (st == FC_ERR_STATE || st == FC_ERR_REQUIREMENT) {
        /* The round closed before the update arrived, or the server rejected this update:
         * this round is lost for us, the federation goes on. */
        printf("%s %s: round %" PRIu64 " update not taken: %s\n", PROG, tr->o->name,
               fc_task_round(t), fc_client_error(tr->c));
        return FC_OK;
    }
    return fc_error_set(err, st, "round %" PRIu64 ": submit failed: %s", fc_task_round(t),
                        fc_client_error(tr->c));
}

static fc_status do_evaluate(trainer *tr, fc_task *t, fc_error *err) {
    static float w[EX_SM_PARAMS];
    fc_status st = task_model(t, w, err);
    if (st != FC_OK)
        return prefix_round(err, t, st);
    double loss = 0;
    size_t correct = 0;
    ex_sm_evaluate(w, &tr->data, tr->mine->test, tr->mine->n_test, &loss, &correct);
    double acc = (double)correct / (double)tr->mine->n_test;
    fc_metric m[2] = {{"loss", loss}, {"accuracy", acc}};
    st = fc_client_report_eval(tr->c, t, tr->mine->n_test, m, 2);
    if (st == FC_OK) {
        printf("%s %s: round %" PRIu64 " evaluate model %" PRIu64 ": %zu examples, loss %.4f, "
               "accuracy %.4f\n",
               PROG, tr->o->name, fc_task_round(t), fc_task_model_version(t), tr->mine->n_test,
               loss, acc);
        return FC_OK;
    }
    if (st == FC_ERR_STATE || st == FC_ERR_REQUIREMENT) {
        printf("%s %s: round %" PRIu64 " evaluation not taken: %s\n", PROG, tr->o->name,
               fc_task_round(t), fc_client_error(tr->c));
        return FC_OK;
    }
    return fc_error_set(err, st, "round %" PRIu64 ": evaluation report failed: %s",
                        fc_task_round(t), fc_client_error(tr->c));
}

static int run_client(const options *o) {
    trainer tr = {.o = o, .data = EX_DATASET_INIT, .split = EX_SPLIT_INIT};
    fc_error err = {0};
    char token[EX_SECRET_MAX + 1];
    int rc = 1;
    fc_status st = ex_read_secret_file(o->token_file, token, sizeof token, &err);
    if (st != FC_OK) {
        fprintf(stderr, "%s: --token-file %s\n", PROG, fc_error_text(&err));
        return 2;
    }
    if ((st = ex_load_and_split(o->data, &o->split, &tr.data, &tr.split, &err)) != FC_OK) {
        fprintf(stderr, "%s: %s\n", PROG, fc_error_text(&err));
        memset(token, 0, sizeof token);
        return st == FC_ERR_INVALID ? 2 : 1;
    }
    tr.mine = &tr.split.client[o->index];
    fc_client_config cfg = FC_CLIENT_CONFIG_INIT;
    cfg.server = o->server;
    cfg.ca_file = o->ca;
    cfg.server_name = o->server_name;
    cfg.client_name = o->name;
    cfg.token = token;
    st = fc_client_open(&cfg, &tr.c);
    memset(token, 0, sizeof token);
    if (st != FC_OK) {
        fprintf(stderr, "%s %s: cannot join %s: %s\n", PROG, o->name, o->server,
                tr.c ? fc_client_error(tr.c) : fc_strerror(st));
        goto out;
    }
    printf("%s %s: joined %s as client %zu of %zu (%zu train, %zu test examples)\n", PROG,
           o->name, o->server, o->index, o->split.clients, tr.mine->n_train, tr.mine->n_test);
    fflush(stdout);
    for (;;) {
        fc_task *t = NULL;
        st = fc_client_next_task(tr.c, WAIT_MS, &t);
        if (st == FC_ERR_TIMEOUT)
            continue;
        if (st != FC_OK) {
            fprintf(stderr, "%s %s: waiting for a task: %s\n", PROG, o->name,
                    fc_client_error(tr.c));
            goto out;
        }
        if (!t) {
            printf("%s %s: done: %s\n", PROG, o->name, fc_client_error(tr.c));
            rc = 0;
            goto out;
        }
        if (fc_task_get_kind(t) == FC_TASK_TYPE_TRAIN)
            st = do_train(&tr, t, &err);
        else if (fc_task_get_kind(t) == FC_TASK_TYPE_EVALUATE)
            st = do_evaluate(&tr, t, &err);
        else
            st = fc_error_set(&err, FC_ERR_PROTOCOL, "round %" PRIu64 ": unknown task kind %d",
                              fc_task_round(t), (int)fc_task_get_kind(t));
        fc_task_free(t);
        fflush(stdout);
        if (st != FC_OK) {
            fprintf(stderr, "%s %s: %s\n", PROG, o->name, fc_error_text(&err));
            goto out;
        }
    }
out:
    fc_client_close(tr.c);
    ex_split_free(&tr.split);
    ex_dataset_free(&tr.data);
    return rc;
}

static int write_initial(const options *o) {
    static float w[EX_SM_PARAMS];
    fc_error err = {0};
    fc_status st = ex_sm_init(w, o->split.seed, o->init_std, &err);
    if (st == FC_OK)
        st = ex_write_initial_model(o->write_initial, w, &err);
    if (st != FC_OK) {
        fprintf(stderr, "%s: --write-initial: %s\n", PROG, fc_error_text(&err));
        return 1;
    }
    printf("%s: initial model (%s) written to %s\n", PROG,
           o->init_std > 0 ? "seeded normal weights" : "zeros", o->write_initial);
    return 0;
}

int main(int argc, char **argv) {
    options o = {
        .data = EX_DEFAULT_DATA,
        .split = {EX_DEFAULT_CLIENTS, EX_DEFAULT_ALPHA, EX_DEFAULT_SEED, EX_DEFAULT_TEST_FRACTION,
                  EX_DEFAULT_MIN_EXAMPLES},
        .train = {EX_DEFAULT_LOCAL_EPOCHS, EX_DEFAULT_LR, EX_DEFAULT_BATCH, 0},
    };
    fc_error err = {0};
    fc_status st = FC_OK;
    for (int i = 1; i < argc && st == FC_OK; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc || strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "%s: unknown or incomplete option '%s' (see --help)\n", PROG, a);
            return 2;
        }
        const char *v = argv[++i];
        if (strcmp(a, "--server") == 0)
            o.server = v;
        else if (strcmp(a, "--ca") == 0)
            o.ca = v;
        else if (strcmp(a, "--server-name") == 0)
            o.server_name = v;
        else if (strcmp(a, "--name") == 0)
            o.name = v;
        else if (strcmp(a, "--token-file") == 0)
            o.token_file = v;
        else if (strcmp(a, "--data") == 0)
            o.data = v;
        else if (strcmp(a, "--write-initial") == 0)
            o.write_initial = v;
        else if (strcmp(a, "--client-index") == 0) {
            st = ex_cli_size(a, v, 0, EX_SPLIT_MAX_CLIENTS - 1, &o.index, &err);
            o.have_index = 1;
        } else if (strcmp(a, "--clients") == 0)
            st = ex_cli_size(a, v, 1, EX_SPLIT_MAX_CLIENTS, &o.split.clients, &err);
        else if (strcmp(a, "--alpha") == 0)
            st = ex_cli_double(a, v, 0, 1, 1e6, &o.split.alpha, &err);
        else if (strcmp(a, "--seed") == 0)
            st = ex_cli_u64(a, v, &o.split.seed, &err);
        else if (strcmp(a, "--lr") == 0)
            st = ex_cli_double(a, v, 0, 1, 1e3, &o.train.lr, &err);
        else if (strcmp(a, "--epochs") == 0)
            st = ex_cli_size(a, v, 1, MAX_EPOCHS, &o.train.epochs, &err);
        else if (strcmp(a, "--batch") == 0)
            st = ex_cli_size(a, v, 1, 1000000, &o.train.batch, &err);
        else if (strcmp(a, "--init-std") == 0)
            st = ex_cli_double(a, v, 0, 0, 10, &o.init_std, &err);
        else {
            fprintf(stderr, "%s: unknown option '%s' (see --help)\n", PROG, a);
            return 2;
        }
    }
    if (st != FC_OK) {
        fprintf(stderr, "%s: %s\n", PROG, fc_error_text(&err));
        return 2;
    }
    if (o.write_initial)
        return write_initial(&o);
    const char *missing = !o.server       ? "--server"
                          : !o.ca         ? "--ca"
                          : !o.name       ? "--name"
                          : !o.token_file ? "--token-file"
                          : !o.have_index ? "--client-index"
                                          : NULL;
    if (missing) {
        fprintf(stderr, "%s: %s is required (see --help)\n", PROG, missing);
        return 2;
    }
    if (o.index >= o.split.clients) {
        fprintf(stderr, "%s: --client-index %zu is out of range 0..%zu (--clients %zu)\n", PROG,
                o.index, o.split.clients - 1, o.split.clients);
        return 2;
    }
    return run_client(&o);
}
