/* opt_fedopt.h: internal engine shared by the adaptive server optimizers adam, yogi and adagrad
 * (Reddi et al., ICLR 2021, Algorithm 2). Not part of the aggregation API.
 */
#ifndef FC_AGG_OPT_FEDOPT_H
#define FC_AGG_OPT_FEDOPT_H

#include "aggregators/agg.h"

typedef enum fedopt_kind { FEDOPT_ADAM = 1, FEDOPT_YOGI = 2, FEDOPT_ADAGRAD = 3 } fedopt_kind;

fc_status fedopt_create(fedopt_kind kind, const agg_param_spec *specs, const agg_params *p,
                        size_t dim, agg_opt_state **out, fc_error *err);
fc_status fedopt_step(agg_opt_state *s, float *w, const double *delta, fc_error *err);
fc_status fedopt_step_range(agg_opt_state *s, float *w, const double *delta, size_t first,
                            size_t count, fc_error *err);
fc_status fedopt_save(const agg_opt_state *s, fc_buf *out, fc_error *err);
fc_status fedopt_load(agg_opt_state *s, const void *blob, size_t len, fc_error *err);
void fedopt_destroy(agg_opt_state *s);

#endif
