/* hostile.h: shared pieces of the hostile-client suite (tests/integration/hostile/): a daemon
 * started on a [2,3] f32 model w0[k] = k + 1, honest SDK workers that send a constant delta, and
 * the three checks every case makes (docs/security.md, "Hostile clients"):
 *   1. a clear error: the client got a status and a message, and the daemon logged it;
 *   2. the daemon kept serving the honest clients of the same round (the round committed);
 *   3. nothing partial reached the aggregate or the store: every committed version equals the
 *      previous one plus the exact mean of the honest deltas, and the store verifies. */
#ifndef FC_TESTS_HOSTILE_H
#define FC_TESTS_HOSTILE_H

#include <stdatomic.h>

#include "tests/integration/harness.h"

#define HX_NUMEL 6

/* it_env_init(name), the initial model, and it_daemon_start with `sections` after the [round]
 * initial_model line (so they may continue [round]) and `sets`. fail_msg on any error. */
void hx_start(it_env *e, const char *name, const char *sections, const char *const *sets);
/* it_client_add, fail_msg on error. */
void hx_add(it_env *e, const char *name, char token[64]);
/* What an honest worker sends: `value` everywhere with num_examples 1, after delay_ms and, when
 * gate is set, once *gate is 0 again (a test holds its honest clients back with it). */
typedef struct hx_plan {
    float value;
    unsigned delay_ms;
    atomic_int *gate;
} hx_plan;
/* An honest worker following plan (which must outlive it), reconnecting (retry). */
void hx_honest(it_worker *w, it_env *e, const char *name, const char *token, hx_plan *plan);
/* Registers good1 (+1) and good2 (+3), starts them with delay_ms per round in w[0], w[1] (the
 * plans live in plans[2]) and waits for round 1. */
void hx_start_honest(it_env *e, it_worker w[2], hx_plan plans[2], unsigned delay_ms);
/* Joins the workers and fails unless each ended cleanly with every submit accepted. */
void hx_join_honest(it_worker *w, size_t n);
/* Rounds first..last are COMMITTED and each model version v+1 = v + step[round - first]
 * exactly, element by element; the store verifies. */
void hx_check_versions(it_env *e, int64_t first, int64_t last, const float *step);
/* Fails unless the daemon's log holds needle within timeout_ms (logs are written as it goes). */
void hx_log_has(const it_env *e, const char *needle, unsigned timeout_ms);
/* The f32 [2,3] spec named "w" (or name), with dtype. */
fc_tensor_spec hx_spec(const char *name, fc_dtype dtype, uint64_t rows, uint64_t cols);

#endif
