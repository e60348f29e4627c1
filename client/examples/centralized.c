/* centralized.c: the demo's baseline B. Trains softmax regression on all clients' training data
 * pooled (the same split, seed and code as the federated run) and prints the accuracy on the
 * union of the clients' held-out test splits. It never talks to a server. */
#include <stdio.h>
#include <string.h>

#include "client/examples/lib/cli.h"
#include "client/examples/lib/common.h"
#include "client/examples/lib/sim.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: centralized [options]\n"
            "Trains softmax regression on the pooled training splits of the digits clients and\n"
            "prints the test accuracy on the union of their held-out splits (baseline B).\n"
            "  --data PATH     digits CSV, .gz read through gzip -dc (default %s)\n"
            "  --clients C     clients of the split (default %d)\n"
            "  --alpha A       Dirichlet concentration of the label split (default %g)\n"
            "  --seed S        seed of the split and of training (default %d)\n"
            "  --epochs E      passes over the pooled training data (default %d)\n"
            "  --lr LR         SGD learning rate (default %g)\n"
            "  --batch B       mini-batch size (default %d)\n"
            "  --help          this text\n",
            EX_DEFAULT_DATA, EX_DEFAULT_CLIENTS, EX_DEFAULT_ALPHA, EX_DEFAULT_SEED,
            EX_DEFAULT_CENTRAL_EPOCHS, EX_DEFAULT_LR, EX_DEFAULT_BATCH);
}

int main(int argc, char **argv) {
    const char *data_path = EX_DEFAULT_DATA;
    ex_split_config sc = {EX_DEFAULT_CLIENTS, EX_DEFAULT_ALPHA, EX_DEFAULT_SEED,
                          EX_DEFAULT_TEST_FRACTION, EX_DEFAULT_MIN_EXAMPLES};
    ex_train_config tc = {EX_DEFAULT_CENTRAL_EPOCHS, EX_DEFAULT_LR, EX_DEFAULT_BATCH, 0};
    fc_error err = {0};
    fc_status st = FC_OK;
    for (int i = 1; i < argc && st == FC_OK; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc || strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "centralized: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        if (strcmp(a, "--data") == 0)
            data_path = v;
        else if (strcmp(a, "--clients") == 0)
            st = ex_cli_size(a, v, 1, EX_SPLIT_MAX_CLIENTS, &sc.clients, &err);
        else if (strcmp(a, "--alpha") == 0)
            st = ex_cli_double(a, v, 0, 1, 1e6, &sc.alpha, &err);
        else if (strcmp(a, "--seed") == 0)
            st = ex_cli_u64(a, v, &sc.seed, &err);
        else if (strcmp(a, "--epochs") == 0)
            st = ex_cli_size(a, v, 1, 100000, &tc.epochs, &err);
        else if (strcmp(a, "--lr") == 0)
            st = ex_cli_double(a, v, 0, 1, 1e3, &tc.lr, &err);
        else if (strcmp(a, "--batch") == 0)
            st = ex_cli_size(a, v, 1, 1000000, &tc.batch, &err);
        else {
            fprintf(stderr, "centralized: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (st != FC_OK) {
        fprintf(stderr, "centralized: %s\n", fc_error_text(&err));
        return 2;
    }
    ex_dataset data = EX_DATASET_INIT;
    ex_split split = EX_SPLIT_INIT;
    if ((st = ex_load_and_split(data_path, &sc, &data, &split, &err)) != FC_OK) {
        fprintf(stderr, "centralized: %s\n", fc_error_text(&err));
        return 1;
    }
    float w[EX_SM_PARAMS] = {0};
    st = ex_sim_centralized(&data, &split, &tc, sc.seed, w, &err);
    if (st == FC_OK) {
        double loss, acc;
        ex_sim_evaluate(w, &data, &split, &loss, &acc);
        printf("centralized: %zu examples, %zu clients (alpha %g, seed %llu), %zu epochs\n",
               data.n, split.clients, sc.alpha, (unsigned long long)sc.seed, tc.epochs);
        printf("test loss: %.4f\n", loss);
        printf("centralized baseline accuracy: %.4f\n", acc);
    } else {
        fprintf(stderr, "centralized: %s\n", fc_error_text(&err));
    }
    ex_split_free(&split);
    ex_dataset_free(&data);
    return st == FC_OK ? 0 : 1;
}
