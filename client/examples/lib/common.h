/* common.h: what the digits example programs share: the default settings of the demo and the
 * loading of data plus split from them. Owns no state. */
#ifndef EX_COMMON_H
#define EX_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "client/examples/lib/digits.h"
#include "client/examples/lib/softmax.h"
#include "client/examples/lib/split.h"
#include "core/status.h"

#define EX_DEFAULT_DATA "client/examples/data/digits.csv.gz"
#define EX_DEFAULT_CLIENTS 10
#define EX_DEFAULT_ALPHA 0.5
#define EX_DEFAULT_SEED 42
#define EX_DEFAULT_TEST_FRACTION 0.2
#define EX_DEFAULT_MIN_EXAMPLES 10
#define EX_DEFAULT_ROUNDS 30
#define EX_DEFAULT_LOCAL_EPOCHS 5
#define EX_DEFAULT_LR 0.5
#define EX_DEFAULT_BATCH 16
#define EX_DEFAULT_CENTRAL_EPOCHS 60

/* Loads path and splits it with cfg. On error nothing is left allocated. */
fc_status ex_load_and_split(const char *path, const ex_split_config *cfg, ex_dataset *data,
                            ex_split *split, fc_error *err);

#endif
