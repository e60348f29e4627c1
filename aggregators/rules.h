/* rules.h: every rule and server optimizer table the project defines, by extern name.
 *
 * One const table per file (aggregators/rule_<name>.c, aggregators/opt_<name>.c). registry.c
 * lists them; nothing else should reach for a table by symbol except tests. Declaring a name here
 * does not define it: only names that have a file are listed in registry.c.
 */
#ifndef FC_AGG_RULES_H
#define FC_AGG_RULES_H

#include "aggregators/agg.h"

/* rules */
extern const agg_rule agg_fedavg;
extern const agg_rule agg_fedau;
extern const agg_rule agg_median;
extern const agg_rule agg_trimmed_mean;
extern const agg_rule agg_krum;
extern const agg_rule agg_multikrum;
extern const agg_rule agg_bulyan;
extern const agg_rule agg_geomed;
extern const agg_rule agg_centered_clip;
extern const agg_rule agg_norm_bound;
extern const agg_rule agg_ida;
extern const agg_rule agg_fedbuff;

/* acc[i] += w * u->data[i] for i < dim, in windows of a few MiB of data, telling u->consumed
 * (when set) after each: the fold of every streaming rule that reads an update once. */
void agg_fold_update(double *acc, const agg_update *u, double w, size_t dim);

/* server optimizers */
extern const agg_opt agg_opt_sgd;
extern const agg_opt agg_opt_adam;
extern const agg_opt agg_opt_yogi;
extern const agg_opt agg_opt_adagrad;

#endif
