/* agg_testutil.h: helpers for the aggregation unit tests (run one round end to end). */
#ifndef FC_AGG_TESTUTIL_H
#define FC_AGG_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

#include "aggregators/agg.h"

/* Runs one round of rule `name` with params "k=v" strings (NULL-terminated list, may be NULL)
 * over n updates offered in order perm (NULL = 0..n-1). If expect is set, the ids of all n
 * updates are declared with agg_round_expect first. state (may be NULL) is loaded at begin and
 * replaced by the saved state after a successful finish. Returns finish's status (or an earlier
 * failure). */
fc_status agg_test_round(const char *name, const char *const *kv, const agg_context *ctx,
                         const agg_update *ups, size_t n, const size_t *perm, int expect, double *D,
                         agg_report *rep, fc_buf *state, fc_error *err);

/* Bitwise equality of two double arrays. */
int agg_test_same_bits(const double *a, const double *b, size_t n);

/* 1 if |a-b| <= tol * max(1, |b|). */
int agg_test_close(double a, double b, double tol);

#endif
