/* hostile.c: see hostile.h. */
#include "tests/integration/hostile/hostile.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/alloc.h"

void hx_start(it_env *e, const char *name, const char *sections, const char *const *sets) {
    if (it_env_init(e, name) != 0)
        fail_msg("%s", e->why);
    float w0[HX_NUMEL];
    for (size_t k = 0; k < HX_NUMEL; k++)
        w0[k] = (float)(k + 1);
    const char *names[1] = {"w"};
    const uint32_t ndim[1] = {2};
    const uint64_t shapes[1][FC_MAX_DIMS] = {{2, 3}};
    const float *data[1] = {w0};
    char init[IT_PATH_MAX], all[4096];
    fc_error err = {0};
    snprintf(init, sizeof init, "%.500s/init.safetensors", e->dir);
    if (it_write_model_f32(init, 1, names, ndim, shapes, data, &err) != 0)
        fail_msg("initial model: %s", err.msg);
    snprintf(all, sizeof all, "[round]\ninitial_model = %s\n%s", init, sections);
    if (it_daemon_start(e, all, sets, 30) != 0)
        fail_msg("%s", e->why);
}

void hx_add(it_env *e, const char *name, char token[64]) {
    if (it_client_add(e, name, token) != 0)
        fail_msg("%s", e->why);
}

static it_action plan_value(it_worker *w, const fc_task *t, const float *model, float *delta,
                            size_t numel, uint64_t *num_examples) {
    (void)t, (void)model;
    const hx_plan *p = w->ud;
    it_sleep_ms(p->delay_ms);
    for (uint64_t end = it_now_ms() + 20000; p->gate && atomic_load(p->gate) && it_now_ms() < end;)
        it_sleep_ms(5);
    for (size_t k = 0; k < numel; k++)
        delta[k] = p->value;
    *num_examples = 1;
    return IT_SUBMIT;
}

void hx_honest(it_worker *w, it_env *e, const char *name, const char *token, hx_plan *plan) {
    memset(w, 0, sizeof *w);
    w->env = e;
    w->name = name;
    w->token = token;
    w->plan = plan_value;
    w->ud = plan;
    w->retry = 1;
    w->wait_ms = 60000;
}

void hx_start_honest(it_env *e, it_worker w[2], hx_plan plans[2], unsigned delay_ms) {
    static char tokens[2][64]; /* the workers read them while they run */
    const char *names[2] = {"good1", "good2"};
    plans[0] = (hx_plan){1, delay_ms, NULL};
    plans[1] = (hx_plan){3, delay_ms, NULL};
    for (int i = 0; i < 2; i++) {
        hx_add(e, names[i], tokens[i]);
        hx_honest(&w[i], e, names[i], tokens[i], &plans[i]);
        assert_int_equal(it_worker_start(&w[i]), 0);
    }
    if (it_wait_round_exists(e, 1, 20) != 0)
        fail_msg("no round started: %s", e->why);
}

void hx_join_honest(it_worker *w, size_t n) {
    for (size_t i = 0; i < n; i++)
        it_worker_join(&w[i]);
    for (size_t i = 0; i < n; i++) {
        if (w[i].open_st != FC_OK)
            fail_msg("%s: %s", w[i].name, w[i].open_err);
        if (w[i].fail[0])
            fail_msg("%s", w[i].fail);
        for (int k = 0; k < w[i].tasks; k++)
            if (w[i].submit_st[k] != FC_OK)
                fail_msg("honest %s, task %d (round %llu): %s", w[i].name, k,
                         (unsigned long long)w[i].round[k], w[i].submit_err[k]);
        if (!w[i].done)
            fail_msg("honest %s did not finish: %s", w[i].name, w[i].end_err);
    }
}

void hx_check_versions(it_env *e, int64_t first, int64_t last, const float *step) {
    store *s = NULL;
    fc_error err = {0};
    if (it_store_open(e, &s, &err) != FC_OK)
        fail_msg("store: %s", err.msg);
    for (int64_t id = first; id <= last; id++) {
        store_round r;
        memset(&r, 0, sizeof r);
        if (store_round_get(s, id, &r, &err) != FC_OK || r.state != STORE_ROUND_COMMITTED)
            fail_msg("round %lld is not committed (%s)", (long long)id,
                     r.failure_reason ? r.failure_reason : err.msg);
        float *a = NULL, *b = NULL;
        size_t n = 0;
        assert_int_equal(it_model_read_f32(s, r.base_version, &a, &n, &err), FC_OK);
        assert_int_equal(it_model_read_f32(s, r.model_version, &b, &n, &err), FC_OK);
        for (size_t k = 0; k < n; k++)
            if (b[k] != a[k] + step[id - first])
                fail_msg("round %lld element %zu: %.9g, expected %.9g + %.9g", (long long)id, k,
                         (double)b[k], (double)a[k], (double)step[id - first]);
        fc_free(a);
        fc_free(b);
        store_round_clear(&r);
    }
    assert_int_equal(store_verify(s, NULL, &err), FC_OK);
    store_close(s);
}

void hx_log_has(const it_env *e, const char *needle, unsigned timeout_ms) {
    uint64_t end = it_now_ms() + timeout_ms;
    while (!it_log_contains(e, needle)) {
        if (it_now_ms() > end)
            fail_msg("the daemon's log (%s) lacks: %s", e->log, needle);
        it_sleep_ms(20);
    }
}

fc_tensor_spec hx_spec(const char *name, fc_dtype dtype, uint64_t rows, uint64_t cols) {
    fc_tensor_spec s;
    memset(&s, 0, sizeof s);
    s.name = (char *)name; /* the spec never writes through it */
    s.dtype = dtype;
    s.ndim = 2;
    s.shape[0] = rows;
    s.shape[1] = cols;
    return s;
}
