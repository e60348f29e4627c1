/* robust.h: machinery shared by the retaining (robust) rules: median, trimmed_mean, krum,
 * multikrum, bulyan, geomed and ida. Each rule file stays a thin table over these helpers.
 *
 * It owns the block loops over a spool (coordinate blocks for the coordinate-wise rules,
 * pairwise distances for the Krum family) and Krum scoring. It never validates updates (the
 * round driver does) and never fills a report (the rules do).
 */
#ifndef FC_AGG_ROBUST_H
#define FC_AGG_ROBUST_H

#include <stddef.h>

#include "aggregators/agg.h"
#include "aggregators/spool.h"

/* The part of every retaining rule's state: the rows seen so far. */
typedef struct agg_rb_base {
    size_t dim;
    agg_spool *spool;
} agg_rb_base;

fc_status agg_rb_base_init(agg_rb_base *b, const agg_context *ctx, const char *rule, fc_error *err);
/* Appends u to the spool; errors are prefixed with the rule name. */
fc_status agg_rb_base_add(agg_rb_base *b, const agg_update *u, const char *rule, fc_error *err);
/* Seals the spool for reading (call once at finish). */
fc_status agg_rb_base_seal(agg_rb_base *b, const char *rule, fc_error *err);
void agg_rb_base_free(agg_rb_base *b);

typedef enum agg_rb_coord_kind {
    AGG_RB_MEDIAN = 1,  /* median; mean of the two middle values for an even count */
    AGG_RB_TRIMMED = 2, /* drop the `param` lowest and highest, average the rest */
    AGG_RB_CLOSEST = 3, /* mean of the `param` values closest to the median (Bulyan) */
} agg_rb_coord_kind;

/* Per coordinate j of out (dim doubles), the statistic `kind` of the values of rows
 * rows[0..nrows) (all rows in index order if rows is NULL). Works in coordinate blocks, so the
 * memory beyond the spool is O(nrows * block). For AGG_RB_CLOSEST the order of rows is the
 * selection order used to break ties. If below_out is not NULL, AGG_RB_CLOSEST adds up, over
 * all coordinates, how many values were dropped below the kept window (the rest, nrows - param
 * per coordinate minus that, were dropped above). */
fc_status agg_rb_coordwise(agg_spool *s, const size_t *rows, size_t nrows, agg_rb_coord_kind kind,
                           size_t param, double *out, uint64_t *below_out, const char *rule,
                           fc_error *err);

/* dist (n*n doubles, n = spool rows) receives every squared distance sum (x_a - x_b)^2 from
 * explicit differences, symmetric with a zero diagonal. One pass over the spool in coordinate
 * blocks; O(n^2 d) arithmetic. */
fc_status agg_rb_pairwise_sqdist(agg_spool *s, double *dist, const char *rule, fc_error *err);

/* Krum scores among the candidates cand[0..nc) (indices into the n x n matrix dist): score of
 * cand[t] = sum of its k smallest squared distances to the other candidates (k <= nc - 1).
 * scratch holds nc doubles. */
void agg_rb_krum_scores(const double *dist, size_t n, const size_t *cand, size_t nc, size_t k,
                        double *scores, double *scratch);

/* Index t of the smallest v[t]; ties go to the lowest t. */
size_t agg_rb_argmin(const double *v, size_t n);

/* out = (1/m) * sum of rows rows[0..m), added in the given order, in double. */
void agg_rb_mean_rows(const agg_spool *s, const size_t *rows, size_t m, double *out);

#endif
