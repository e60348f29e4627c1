/* test_sess_budget.c: the order in which the shared staging budget wakes sessions waiting for
 * it (server/sess_services.c): ascending client id, first come first served among equal ids, so
 * that the round driver, which folds in ascending client id, rarely has to hold copies of early
 * updates. Uses the budget directly with a real uv loop; no sockets.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>
#include <uv.h>

#include "core/alloc.h"
#include "proto/stream.h"
#include "server/sess_internal.h"

typedef struct rec_waiter {
    sess_waiter w; /* first member: the wake callback casts back */
    int tag;
} rec_waiter;

static int woken[8];
static size_t n_woken;

static void record_wake(sess_waiter *w) {
    rec_waiter *r = (rec_waiter *)(void *)w;
    woken[n_woken++] = r->tag;
}

/* Fills the whole memory budget with one staged update of `bytes` (f32 elements). */
static fc_stage *fill(sess_budget *b, uint64_t bytes) {
    fc_tensor_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.name = "w";
    spec.dtype = FC_DTYPE_F32;
    spec.ndim = 1;
    spec.shape[0] = bytes / 4;
    fc_stage *st = NULL;
    fc_error err = {0};
    assert_int_equal(sess_budget_stage(b, &spec, 1, bytes, bytes, &st, &err), FC_OK);
    return st;
}

static void test_budget_wakes_waiters_in_ascending_client_id(void **state) {
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    sess_budget *b = NULL;
    fc_error err = {0};
    assert_int_equal(sess_budget_new(&loop, 4096, NULL, 0, &b, &err), FC_OK);
    fc_stage *st = fill(b, 4096);
    assert_int_equal(sess_budget_memory_used(b), 4096);
    /* client ids 5, 1, 3, 1 (a second session of client 1), 9 arrive in that order */
    static const uint64_t ids[] = {5, 1, 3, 1, 9};
    rec_waiter ws[5];
    memset(ws, 0, sizeof ws);
    for (int i = 0; i < 5; i++) {
        ws[i].w.wake = record_wake;
        ws[i].w.order = ids[i];
        ws[i].tag = i;
        sess_budget_wait(b, &ws[i].w);
    }
    assert_int_equal(sess_budget_waiting(b), 5);
    /* a waiter that gives up (its connection closed) leaves the queue */
    sess_budget_unwait(b, &ws[2].w);
    assert_int_equal(sess_budget_waiting(b), 4);
    n_woken = 0;
    fc_stage_free(st); /* releases the budget: the waiters are woken from the idle handle */
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(n_woken, 4);
    assert_int_equal(woken[0], 1); /* id 1, first session */
    assert_int_equal(woken[1], 3); /* id 1, second session */
    assert_int_equal(woken[2], 0); /* id 5 */
    assert_int_equal(woken[3], 4); /* id 9 */
    assert_int_equal(sess_budget_waiting(b), 0);
    sess_budget_free(b);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_budget_wakes_waiters_in_ascending_client_id),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
