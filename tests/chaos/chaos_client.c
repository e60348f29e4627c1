/* chaos_client.c: a client for tests/chaos/run-chaos: trains nothing, submits a fixed delta
 * (every element = its client index + 1, num_examples 10) for each train task, and reports a
 * fixed metric for evaluation tasks, until the server says the run is done.
 *
 * The daemon is SIGKILLed under it again and again. The SDK reconnects on its own; this client
 * only decides which errors are part of that life (the round it trained for was failed by a
 * restart: FC_ERR_STATE, FC_ERR_REQUIREMENT, FC_ERR_TIMEOUT) and which are not (anything else,
 * reconnects exhausted included): those make it exit 1, which fails the chaos test.
 *
 * Each train task "trains" for a random 0..CHAOS_TRAIN_MS ms (default 300) so that kills land
 * inside rounds as well as between them.
 *
 * usage: chaos_client HOST:PORT CA_FILE NAME TOKEN INDEX
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <fedcoord/client.h>

static int recoverable(fc_status st) {
    return st == FC_ERR_STATE || st == FC_ERR_REQUIREMENT || st == FC_ERR_TIMEOUT;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: chaos_client HOST:PORT CA_FILE NAME TOKEN INDEX\n");
        return 2;
    }
    fc_client_config cfg = FC_CLIENT_CONFIG_INIT;
    cfg.server = argv[1];
    cfg.ca_file = argv[2];
    cfg.server_name = "localhost";
    cfg.client_name = argv[3];
    cfg.token = argv[4];
    cfg.reconnect_max_attempts = 100000; /* the daemon comes back; wait for it */
    cfg.reconnect_base_ms = 20;
    cfg.reconnect_max_ms = 300;
    cfg.io_timeout_ms = 30000;
    float value = (float)(atoi(argv[5]) + 1);
    const char *tm = getenv("CHAOS_TRAIN_MS");
    long train_ms = tm ? atol(tm) : 300;
    unsigned seed = (unsigned)atoi(argv[5]) * 2654435761u + 1;
    fc_client *c = NULL;
    fc_status st = fc_client_open(&cfg, &c);
    if (st != FC_OK) {
        fprintf(stderr, "%s: open: %s\n", argv[3], c ? fc_client_error(c) : "out of memory");
        fc_client_close(c);
        return 1;
    }
    unsigned submitted = 0, refused = 0, evaluated = 0;
    int rc = 1;
    for (;;) {
        fc_task *t = NULL;
        st = fc_client_next_task(c, 120000, &t);
        if (st != FC_OK) {
            if (recoverable(st)) {
                refused++;
                continue;
            }
            fprintf(stderr, "%s: next task: %s\n", argv[3], fc_client_error(c));
            break;
        }
        if (!t) { /* the server ended the run */
            rc = 0;
            break;
        }
        if (fc_task_get_kind(t) == FC_TASK_TYPE_EVALUATE) {
            fc_metric m[1] = {{"accuracy", 0.5}};
            st = fc_client_report_eval(c, t, 10, m, 1);
            evaluated += st == FC_OK;
        } else {
            if (train_ms > 0) {
                seed = seed * 1103515245u + 12345u;
                long ms = (long)((seed >> 8) % (unsigned)(train_ms + 1));
                struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
                nanosleep(&ts, NULL);
            }
            size_t n = fc_task_tensor_count(t);
            const void **bufs = calloc(n ? n : 1, sizeof *bufs);
            st = bufs ? FC_OK : FC_ERR_NOMEM;
            for (size_t i = 0; st == FC_OK && i < n; i++) {
                fc_tensor_info info;
                float *d = NULL;
                if ((st = fc_task_tensor(t, i, &info)) == FC_OK &&
                    !(d = malloc(info.nbytes ? info.nbytes : 1)))
                    st = FC_ERR_NOMEM;
                for (size_t k = 0; d && k < info.nbytes / sizeof *d; k++)
                    d[k] = value;
                bufs[i] = d;
            }
            fc_metric m[1] = {{"train_loss", value}};
            if (st == FC_OK)
                st = fc_client_submit(c, t, FC_SUBMIT_DELTA, bufs, 10, m, 1);
            for (size_t i = 0; bufs && i < n; i++)
                free((void *)bufs[i]);
            free(bufs);
            submitted += st == FC_OK;
        }
        fc_task_free(t);
        if (st != FC_OK) {
            if (recoverable(st)) {
                refused++;
                continue;
            }
            fprintf(stderr, "%s: %s\n", argv[3], fc_client_error(c));
            break;
        }
    }
    printf("%s: submitted=%u evaluated=%u refused_after_restart=%u exit=%d\n", argv[3], submitted,
           evaluated, refused, rc);
    fc_client_close(c);
    return rc;
}
