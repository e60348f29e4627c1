/* sess_internal.h: what session.c and sess_services.c share and nothing else may use: the
 * budget's waiter queue and its staging-buffer factory. */
#ifndef FC_SERVER_SESS_INTERNAL_H
#define FC_SERVER_SESS_INTERNAL_H

#include <assert.h>
#include <stdio.h>

#include "server/session.h"

/* A session waiting for staging budget (embedded in the session). Waiters are kept and woken in
 * ascending `order` (the client id; FIFO among equal ones): the round driver folds updates in
 * ascending client id, and an update that arrives ahead of a lower one waits in its staging
 * buffer, so granting the lowest id first lets those waits end soonest. */
typedef struct sess_waiter {
    struct sess_waiter *next;
    uint64_t order;
    int queued;
    void (*wake)(struct sess_waiter *w);
} sess_waiter;

void sess_budget_wait(sess_budget *b, sess_waiter *w);
void sess_budget_unwait(sess_budget *b, sess_waiter *w);

/* Creates a stage of client_id whose buffer is counted against b (memory first, then spill).
 * FC_ERR_BUSY when both pools refuse, or when granting would leave no room for the client named
 * by sess_budget_reserve_for; the caller then waits (sess_budget_wait). */
fc_status sess_budget_stage(sess_budget *b, uint64_t client_id, const fc_tensor_spec *specs,
                            size_t n, uint64_t total, uint64_t max_total, fc_stage **out,
                            fc_error *err);

/* Memory limit plus spill limit (0 without a spill directory): all the budget can ever hold. */
uint64_t sess_budget_capacity(const sess_budget *b);

#endif
