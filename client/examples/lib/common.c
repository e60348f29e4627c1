/* common.c: data loading plus split for the example programs (see common.h). */
#include "client/examples/lib/common.h"

fc_status ex_load_and_split(const char *path, const ex_split_config *cfg, ex_dataset *data,
                            ex_split *split, fc_error *err) {
    fc_status st = ex_digits_load(path, data, err);
    if (st != FC_OK)
        return st;
    st = ex_split_dirichlet(data->y, data->n, EX_DIGITS_CLASSES, cfg, split, err);
    if (st != FC_OK)
        ex_dataset_free(data);
    return st;
}
