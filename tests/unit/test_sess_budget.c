/* test_sess_budget.c: the shared staging budget (server/sess_services.c): the order in which it
 * wakes sessions waiting for it (ascending client id, first come first served among equal ids),
 * and the room it keeps for the next client in fold order (sess_budget_reserve_for), so that
 * updates that must wait for a lower client id never fill it, and the released buffers it keeps
 * for the next uploads. Uses the budget directly with a real uv loop; no sockets.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "core/alloc.h"
#include "proto/stream.h"
#include "server/sess_internal.h"
#include "tests/lib/testutil.h"

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

/* Asks for a stage of `bytes` (f32 elements) for client; the status of the request. */
static fc_status ask(sess_budget *b, uint64_t client, uint64_t bytes, fc_stage **st,
                     fc_error *err) {
    fc_tensor_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.name = "w";
    spec.dtype = FC_DTYPE_F32;
    spec.ndim = 1;
    spec.shape[0] = bytes / 4;
    *st = NULL;
    return sess_budget_stage(b, client, &spec, 1, bytes, bytes, st, err);
}

/* Fills the whole memory budget with one staged update of `bytes` (client 100). */
static fc_stage *fill(sess_budget *b, uint64_t bytes) {
    fc_stage *st = NULL;
    fc_error err = {0};
    assert_int_equal(ask(b, 100, bytes, &st, &err), FC_OK);
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

/* Room for two updates in memory, none on disk; client 3 is next in fold order. */
static void test_budget_keeps_room_for_the_next_client_in_fold_order(void **state) {
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    sess_budget *b = NULL;
    fc_error err = {0};
    assert_int_equal(sess_budget_new(&loop, 2 * 4096, NULL, 0, &b, &err), FC_OK);
    sess_budget_reserve_for(b, 3);
    assert_int_equal(sess_budget_reserved_for(b), 3);
    fc_stage *s7 = NULL, *s9 = NULL, *s3 = NULL, *s5 = NULL;
    /* client 7 fits next to the reservation; client 9 would take client 3's room */
    assert_int_equal(ask(b, 7, 4096, &s7, &err), FC_OK);
    assert_int_equal(ask(b, 9, 4096, &s9, &err), FC_ERR_BUSY);
    assert_non_null(strstr(err.msg, "room kept for client 3, next in fold order"));
    assert_null(s9);
    /* client 3 gets the room kept for it */
    assert_int_equal(ask(b, 3, 4096, &s3, &err), FC_OK);
    assert_int_equal(sess_budget_memory_used(b), 2 * 4096);
    /* client 3 folded: its buffer goes back and the next in order is 5 */
    fc_stage_free(s3);
    sess_budget_reserve_for(b, 5);
    assert_int_equal(ask(b, 9, 4096, &s9, &err), FC_ERR_BUSY);
    assert_int_equal(ask(b, 5, 4096, &s5, &err), FC_OK);
    fc_stage_free(s5);
    fc_stage_free(s7);
    /* no reservation: first come, first served up to the limit */
    sess_budget_reserve_for(b, 0);
    assert_int_equal(ask(b, 9, 4096, &s9, &err), FC_OK);
    assert_int_equal(ask(b, 11, 4096, &s7, &err), FC_OK);
    assert_int_equal(ask(b, 12, 4096, &s5, &err), FC_ERR_BUSY);
    assert_null(strstr(err.msg, "room kept"));
    fc_stage_free(s9);
    fc_stage_free(s7);
    assert_int_equal(sess_budget_memory_used(b), 0);
    sess_budget_free(b);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* Once the priority client holds a buffer, the others may fill the rest; naming a client that
 * already holds one counts its buffer; a client waiting for budget is woken when it is named. */
static void test_budget_reservation_ends_once_the_client_holds_a_buffer(void **state) {
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    sess_budget *b = NULL;
    fc_error err = {0};
    assert_int_equal(sess_budget_new(&loop, 3 * 4096, NULL, 0, &b, &err), FC_OK);
    sess_budget_reserve_for(b, 2);
    fc_stage *s2 = NULL, *s4 = NULL, *s6 = NULL, *s8 = NULL;
    assert_int_equal(ask(b, 2, 4096, &s2, &err), FC_OK);
    assert_int_equal(ask(b, 4, 4096, &s4, &err), FC_OK);
    assert_int_equal(ask(b, 6, 4096, &s6, &err), FC_OK); /* the budget is full now */
    assert_int_equal(ask(b, 8, 4096, &s8, &err), FC_ERR_BUSY);
    /* client 8 waits; naming client 4 (which holds a buffer) reserves nothing more */
    rec_waiter w8;
    memset(&w8, 0, sizeof w8);
    w8.w.wake = record_wake;
    w8.w.order = 8;
    w8.tag = 8;
    sess_budget_wait(b, &w8.w);
    sess_budget_reserve_for(b, 4);
    fc_stage_free(s2);
    n_woken = 0;
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(n_woken, 1);
    assert_int_equal(woken[0], 8);
    assert_int_equal(ask(b, 8, 4096, &s8, &err), FC_OK);
    /* a waiting client is woken when it becomes the priority one */
    fc_stage_free(s4);
    sess_budget_reserve_for(b, 5);
    fc_stage *s10 = NULL;
    assert_int_equal(ask(b, 10, 4096, &s10, &err), FC_ERR_BUSY);
    rec_waiter w10;
    memset(&w10, 0, sizeof w10);
    w10.w.wake = record_wake;
    w10.w.order = 10;
    w10.tag = 10;
    sess_budget_wait(b, &w10.w);
    n_woken = 0;
    sess_budget_reserve_for(b, 10);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(n_woken, 1);
    assert_int_equal(woken[0], 10);
    assert_int_equal(ask(b, 10, 4096, &s10, &err), FC_OK);
    fc_stage_free(s6);
    fc_stage_free(s8);
    fc_stage_free(s10);
    sess_budget_free(b);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* With a spill pool, the room may be kept in either pool. */
static void test_budget_reservation_counts_the_spill_pool(void **state) {
    (void)state;
    char dir[512];
    fc_test_path(dir, sizeof dir, "budget-spill");
    assert_true(mkdir(dir, 0700) == 0 || errno == EEXIST);
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    sess_budget *b = NULL;
    fc_error err = {0};
    assert_int_equal(sess_budget_new(&loop, 4096, dir, 4096, &b, &err), FC_OK);
    sess_budget_reserve_for(b, 1);
    fc_stage *s5 = NULL, *s6 = NULL, *s1 = NULL;
    assert_int_equal(ask(b, 5, 4096, &s5, &err), FC_OK); /* memory; the room for 1 is on disk */
    assert_int_equal(sess_budget_memory_used(b), 4096);
    assert_int_equal(ask(b, 6, 4096, &s6, &err), FC_ERR_BUSY);
    assert_int_equal(ask(b, 1, 4096, &s1, &err), FC_OK);
    assert_int_equal(sess_budget_spill_used(b), 4096);
    fc_stage_free(s1);
    fc_stage_free(s5);
    sess_budget_free(b);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(rmdir(dir), 0);
}

static void never_fires(uv_timer_t *t) { (void)t; }

/* Completes stage st of `bytes` zero bytes and returns where its buffer is. */
static const void *staged_buffer(fc_stage *st, uint64_t bytes) {
    static const uint8_t zeros[1 << 20];
    uint8_t sha[FC_SHA256_BYTES];
    fc_stream_hash h = {0};
    fc_error err = {0};
    assert_true(bytes <= sizeof zeros);
    assert_int_equal(fc_stage_add_chunk(st, 0, 0, zeros, (size_t)bytes, &err), FC_OK);
    assert_int_equal(fc_stream_hash_init(&h, &err), FC_OK);
    assert_int_equal(fc_stream_hash_update(&h, zeros, (size_t)bytes, &err), FC_OK);
    assert_int_equal(fc_stream_hash_final(&h, sha, &err), FC_OK);
    assert_int_equal(fc_stage_finish(st, sha, sizeof sha, &err), FC_OK);
    fc_model m = FC_MODEL_INIT;
    assert_int_equal(fc_stage_view_model(st, &m, &err), FC_OK);
    const void *p = m.tensors[0].data;
    fc_model_free(&m);
    return p;
}

/* A released memory buffer is kept for the next upload of its size (the same buffer comes back),
 * within the memory limit: a request of another size frees kept buffers to make room, small
 * buffers are not kept, and kept buffers go once the cache time has passed without a release. */
static void test_budget_keeps_released_buffers_for_the_next_upload(void **state) {
    (void)state;
    const uint64_t limit = 1 << 20, n = 256 << 10, big = 900 << 10;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    sess_budget *b = NULL;
    fc_error err = {0};
    assert_int_equal(sess_budget_new(&loop, limit, NULL, 0, &b, &err), FC_OK);
    sess_budget_set_cache_ms(b, 50);
    fc_stage *s1 = NULL, *s2 = NULL, *s3 = NULL, *small = NULL;
    assert_int_equal(ask(b, 1, n, &s1, &err), FC_OK);
    const void *p1 = staged_buffer(s1, n);
    fc_stage_free(s1);
    assert_int_equal(sess_budget_memory_used(b), 0);
    assert_int_equal(sess_budget_memory_cached(b), n);
    assert_int_equal(ask(b, 2, n, &s2, &err), FC_OK);
    assert_int_equal(sess_budget_memory_cached(b), 0);
    assert_int_equal(sess_budget_memory_used(b), n);
    assert_ptr_equal(staged_buffer(s2, n), p1); /* the same buffer, no fresh pages */
    fc_stage_free(s2);
    /* another size: the kept 256 KiB would not fit next to 900 KiB in 1 MiB, so it goes */
    assert_int_equal(ask(b, 3, big, &s3, &err), FC_OK);
    assert_int_equal(sess_budget_memory_used(b), big);
    assert_int_equal(sess_budget_memory_cached(b), 0);
    assert_int_equal(ask(b, 4, 4096, &small, &err), FC_OK);
    fc_stage_free(small); /* below SESS_BUDGET_CACHE_MIN: freed */
    assert_int_equal(sess_budget_memory_cached(b), 0);
    fc_stage_free(s3);
    assert_int_equal(sess_budget_memory_cached(b), big);
    /* kept buffers never keep the loop alive (a daemon shutting down would wait for them) */
    assert_int_equal(uv_loop_alive(&loop), 0);
    /* while the loop runs for other reasons (a daemon's listeners; here a long timer), the
     * budget's timer frees them after the cache time */
    uv_timer_t alive;
    assert_int_equal(uv_timer_init(&loop, &alive), 0);
    assert_int_equal(uv_timer_start(&alive, never_fires, 10000, 0), 0);
    uv_update_time(&loop);
    uint64_t t0 = uv_now(&loop);
    while (sess_budget_memory_cached(b) > 0 && uv_now(&loop) - t0 < 5000)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(sess_budget_memory_cached(b), 0);
    assert_true(uv_now(&loop) - t0 >= 40);
    uv_close((uv_handle_t *)&alive, NULL);
    sess_budget_free(b);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_budget_wakes_waiters_in_ascending_client_id),
        cmocka_unit_test(test_budget_keeps_room_for_the_next_client_in_fold_order),
        cmocka_unit_test(test_budget_reservation_ends_once_the_client_holds_a_buffer),
        cmocka_unit_test(test_budget_reservation_counts_the_spill_pool),
        cmocka_unit_test(test_budget_keeps_released_buffers_for_the_next_upload),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
