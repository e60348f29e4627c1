/* digits.h: loading the UCI handwritten digits (client/examples/data/digits.csv.gz).
 *
 * The file holds one example per line: 64 integer pixel values 0..16 (an 8x8 image, row-major)
 * then the label 0..9, comma-separated, no header. A loaded example is 64 features scaled to
 * [0, 1] (pixel / 16) and its label; the model adds its own bias term.
 *
 * This module owns parsing and the dataset's memory. It never trusts the file: every malformed
 * row is an error that names the file, the line and the field, and the input size and row count
 * are bounded (EX_DIGITS_MAX_BYTES, EX_DIGITS_MAX_ROWS) before anything is allocated for them.
 */
#ifndef EX_DIGITS_H
#define EX_DIGITS_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

#define EX_DIGITS_FEATURES 64
#define EX_DIGITS_CLASSES 10
#define EX_DIGITS_PIXEL_MAX 16
/* Far above the 1797 rows (265 kB) of the real file; anything larger is refused. */
#define EX_DIGITS_MAX_ROWS 100000u
#define EX_DIGITS_MAX_BYTES ((size_t)16 * 1024 * 1024)

typedef struct ex_dataset {
    size_t n;   /* examples */
    float *x;   /* n * EX_DIGITS_FEATURES values in [0, 1], example after example */
    uint8_t *y; /* n labels in 0..EX_DIGITS_CLASSES-1 */
} ex_dataset;

#define EX_DATASET_INIT {0, NULL, NULL}

/* Parses len bytes of CSV text (not NUL-terminated) into *out, which must be empty. name is used
 * in messages only: "digits.csv:12: field 65 (label) is '11', expected an integer 0..9".
 * A final newline is optional and "\r\n" line ends are accepted; an empty line elsewhere is an
 * error. Errors: FC_ERR_FORMAT (bad row or no rows), FC_ERR_LIMIT (too many rows or bytes),
 * FC_ERR_NOMEM. On error *out is left empty. Does not block. */
fc_status ex_digits_parse(const char *text, size_t len, const char *name, ex_dataset *out,
                          fc_error *err);

/* Reads path into *out (must be empty). A path ending in ".gz" is decompressed by running
 * `gzip -dc -- path` (gzip is part of every Debian system), so no compression library is linked;
 * any other path is read as plain CSV. Blocks on file I/O and on the gzip child, which is always
 * reaped. Errors: FC_ERR_IO (open/read failed, gzip could not run or failed), FC_ERR_LIMIT (input
 * over EX_DIGITS_MAX_BYTES), and those of ex_digits_parse; every message starts with path. */
fc_status ex_digits_load(const char *path, ex_dataset *out, fc_error *err);

void ex_dataset_free(ex_dataset *d);

#endif
