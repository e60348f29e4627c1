/* dash_client.c: a small real participant for the dashboard test (tests/dashboard/run).
 *
 * It speaks to a running fedcoord through the SDK (TLS, token, tasks, uploads), with a model
 * small enough to reason about by hand: one f32 tensor "w" of 8 values, proposed as zeros, and a
 * fixed target t = (1, 2, ..., 8). Training moves w halfway to t and reports
 * train_loss = mean((w_task - t)^2) of the model it was given; evaluation reports
 * loss = mean((w - t)^2) and accuracy = 1 / (1 + loss). With --bad-round N it uploads a NaN
 * update in its N-th training task (counted from 1), which the daemon must reject. --delay-ms D
 * makes each task take at least D ms, so that a browser polling every 2 s sees rounds run.
 * --html-metric adds an evaluation metric whose name is markup (HTML_METRIC), which the
 * dashboard must show as text. It exits 0
 * when the daemon says the federation is done. It owns nothing but its own process.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <fedcoord/client.h>

#define N 8
#define HTML_METRIC "<img src=/xss onerror=alert(1)>"

static int usage(void) {
    fprintf(stderr, "usage: dash_client --server HOST:PORT --ca CA.pem --name NAME "
                    "--token-file FILE [--bad-round N] [--delay-ms D] [--html-metric]\n");
    return 2;
}

static double loss_of(const float *w) {
    double s = 0;
    for (int i = 0; i < N; i++) {
        double d = (double)w[i] - (double)(i + 1);
        s += d * d;
    }
    return s / N;
}

static int read_token(const char *path, char *out, size_t size) {
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        return -1;
    }
    char *got = fgets(out, (int)size, f);
    fclose(f);
    if (!got) {
        fprintf(stderr, "%s: empty token file\n", path);
        return -1;
    }
    out[strcspn(out, "\r\n")] = '\0';
    return 0;
}

int main(int argc, char **argv) {
    const char *server = NULL, *ca = NULL, *name = NULL, *token_file = NULL;
    long bad_round = 0, delay_ms = 0;
    int html_metric = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--html-metric") == 0) {
            html_metric = 1;
            continue;
        }
        if (i + 1 >= argc) return usage();
        if (strcmp(argv[i], "--server") == 0) server = argv[++i];
        else if (strcmp(argv[i], "--ca") == 0) ca = argv[++i];
        else if (strcmp(argv[i], "--name") == 0) name = argv[++i];
        else if (strcmp(argv[i], "--token-file") == 0) token_file = argv[++i];
        else if (strcmp(argv[i], "--bad-round") == 0) bad_round = strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--delay-ms") == 0) delay_ms = strtol(argv[++i], NULL, 10);
        else return usage();
    }
    if (!server || !ca || !name || !token_file || delay_ms < 0 || delay_ms > 60000) return usage();
    const struct timespec delay = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
    char token[512];
    if (read_token(token_file, token, sizeof token) != 0) return 1;

    fc_client_config cfg = FC_CLIENT_CONFIG_INIT;
    cfg.server = server;
    cfg.ca_file = ca;
    cfg.server_name = "localhost";
    cfg.client_name = name;
    cfg.token = token;
    fc_client *c = NULL;
    if (fc_client_open(&cfg, &c) != FC_OK) {
        fprintf(stderr, "%s: open: %s\n", name, c ? fc_client_error(c) : "no memory");
        fc_client_close(c);
        return 1;
    }
    static const float zeros[N];
    const uint64_t shape[1] = {N};
    const fc_tensor_desc init = {"w", FC_DTYPE_F32, 1, shape, zeros};
    if (fc_client_set_initial_model(c, 1, &init) != FC_OK) {
        fprintf(stderr, "%s: initial model: %s\n", name, fc_client_error(c));
        fc_client_close(c);
        return 1;
    }
    long trained = 0;
    int rc = 1;
    for (;;) {
        fc_task *t = NULL;
        fc_status st = fc_client_next_task(c, 120000, &t);
        if (st != FC_OK) {
            fprintf(stderr, "%s: next task: %s\n", name, fc_client_error(c));
            break;
        }
        if (!t) { /* done */
            rc = 0;
            break;
        }
        fc_tensor_info ti;
        if (fc_task_tensor_count(t) != 1 || fc_task_tensor(t, 0, &ti) != FC_OK ||
            ti.dtype != FC_DTYPE_F32 || ti.numel != N) {
            fprintf(stderr, "%s: unexpected model in round %llu\n", name,
                    (unsigned long long)fc_task_round(t));
            fc_task_free(t);
            break;
        }
        float w[N];
        memcpy(w, ti.data, sizeof w);
        if (delay_ms) nanosleep(&delay, NULL);
        double loss = loss_of(w);
        if (fc_task_get_kind(t) == FC_TASK_TYPE_TRAIN) {
            trained++;
            for (int i = 0; i < N; i++)
                w[i] += 0.5f * ((float)(i + 1) - w[i]);
            if (trained == bad_round) w[3] = NAN;
            const void *tensors[1] = {w};
            fc_metric m = {"train_loss", loss};
            st = fc_client_submit(c, t, FC_SUBMIT_WEIGHTS, tensors, 10, &m, 1);
            if (st != FC_OK && trained != bad_round) {
                fprintf(stderr, "%s: submit: %s\n", name, fc_client_error(c));
                fc_task_free(t);
                break;
            }
            if (st == FC_OK && trained == bad_round) {
                fprintf(stderr, "%s: the NaN update was accepted\n", name);
                fc_task_free(t);
                break;
            }
        } else {
            fc_metric m[3] = {{"loss", loss}, {"accuracy", 1.0 / (1.0 + loss)}, {HTML_METRIC, 1}};
            if (fc_client_report_eval(c, t, 10, m, html_metric ? 3 : 2) != FC_OK) {
                fprintf(stderr, "%s: eval: %s\n", name, fc_client_error(c));
                fc_task_free(t);
                break;
            }
        }
        fc_task_free(t);
    }
    fc_client_close(c);
    return rc;
}
