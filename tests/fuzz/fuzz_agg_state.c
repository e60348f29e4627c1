/* fuzz_agg_state.c: the persisted state blobs of stateful rules and optimizers. The first byte
 * picks the loader (fedau, centered_clip, sgd, adam, yogi, adagrad; vectors of 4 elements), the
 * rest is the blob. A blob must be refused with an error or loaded; a loaded blob must save back
 * to the same bytes (sgd without momentum: to its canonical header, see check_sgd_canonical), and
 * the loaded instance must run a step without tripping a sanitizer. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "aggregators/agg.h"
#include "aggregators/rules.h"

#define DIM 4

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_same(const fc_buf *b, const uint8_t *blob, size_t len) {
    if (b->len != len || memcmp(b->data, blob, len) != 0)
        abort();
}

static void fuzz_rule(const agg_rule *rule, const uint8_t *blob, size_t len) {
    agg_context ctx = {.dim = DIM, .round = 1000, .num_registered = 1u << 20};
    agg_round *r = NULL;
    if (agg_round_begin(rule, NULL, &ctx, blob, len, &r, NULL) != FC_OK)
        return;
    static const float x[DIM] = {1, -2, 3, 0.5f};
    agg_update u = {.client_id = 7, .dtype = FC_DTYPE_F32, .data = x, .weight = 1};
    double D[DIM];
    agg_report rep;
    agg_report_init(&rep);
    if (agg_round_add(r, &u, NULL) == FC_OK && agg_round_finish(r, D, &rep, NULL) == FC_OK) {
        fc_buf out = FC_BUF_INIT;
        (void)agg_round_save_state(r, &out, NULL);
        fc_buf_free(&out);
    }
    agg_report_free(&rep);
    agg_round_free(r);
    /* Round trip through a bare instance. */
    agg_state *s = NULL;
    if (rule->create(NULL, &ctx, &s, NULL) != FC_OK)
        return;
    if (rule->load_state(s, blob, len, NULL) == FC_OK) {
        fc_buf out = FC_BUF_INIT;
        if (rule->save_state(s, &out, NULL) == FC_OK)
            check_same(&out, blob, len);
        fc_buf_free(&out);
    }
    rule->destroy(s);
}

/* sgd without momentum (the default) keeps no momentum buffer: a blob saved with momentum loads
 * (the configuration may have changed) and saves back as its 17-byte header with started = 0. */
static void check_sgd_canonical(const fc_buf *b, const uint8_t *blob, size_t len) {
    if (len < 17 || b->len != 17 || memcmp(b->data, blob, 16) != 0 ||
        ((const uint8_t *)b->data)[16] != 0)
        abort();
}

static void fuzz_opt(const agg_opt *opt, const uint8_t *blob, size_t len) {
    agg_opt_state *s = NULL;
    if (opt->create(NULL, DIM, &s, NULL) != FC_OK)
        return;
    if (opt->load_state(s, blob, len, NULL) == FC_OK) {
        fc_buf out = FC_BUF_INIT;
        if (opt->save_state(s, &out, NULL) == FC_OK) {
            if (opt == &agg_opt_sgd)
                check_sgd_canonical(&out, blob, len);
            else
                check_same(&out, blob, len);
        }
        fc_buf_free(&out);
        float w[DIM] = {0, 1, 2, 3};
        static const double D[DIM] = {0.5, -0.25, 1, 0};
        (void)opt->step(s, w, D, NULL);
    }
    opt->destroy(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    const uint8_t *blob = data + 1;
    size_t len = size - 1;
    switch (data[0] % 6) {
    case 0:
        fuzz_rule(&agg_fedau, blob, len);
        break;
    case 1:
        fuzz_rule(&agg_centered_clip, blob, len);
        break;
    case 2:
        fuzz_opt(&agg_opt_sgd, blob, len);
        break;
    case 3:
        fuzz_opt(&agg_opt_adam, blob, len);
        break;
    case 4:
        fuzz_opt(&agg_opt_yogi, blob, len);
        break;
    default:
        fuzz_opt(&agg_opt_adagrad, blob, len);
        break;
    }
    return 0;
}
