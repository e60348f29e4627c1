/* fuzz_digits.c: the digits CSV parser (client/examples/lib/digits.c). Any input must be either
 * refused with an error that names "<fuzz>" and a line, or parsed into rows whose every feature
 * lies in [0, 1] and every label in 0..9. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "client/examples/lib/digits.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ex_dataset d = EX_DATASET_INIT;
    fc_error err = {0};
    fc_status st = ex_digits_parse((const char *)data, size, "<fuzz>", &d, &err);
    if (st != FC_OK) {
        if (strncmp(err.msg, "<fuzz>", 6) != 0 || d.x || d.y || d.n)
            abort();
        return 0;
    }
    if (d.n == 0)
        abort();
    for (size_t i = 0; i < d.n; i++) {
        if (d.y[i] >= EX_DIGITS_CLASSES)
            abort();
        for (size_t j = 0; j < EX_DIGITS_FEATURES; j++) {
            float v = d.x[i * EX_DIGITS_FEATURES + j];
            if (!(v >= 0 && v <= 1))
                abort();
        }
    }
    ex_dataset_free(&d);
    return 0;
}
