/* cli.h: strict parsing of the example programs' command-line values. Every bad value is an
 * FC_ERR_CONFIG that names the flag, the text and the accepted range. Never allocates. */
#ifndef EX_CLI_H
#define EX_CLI_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

/* Decimal integer in [min, max]. */
fc_status ex_cli_size(const char *flag, const char *text, size_t min, size_t max, size_t *out,
                      fc_error *err);
fc_status ex_cli_u64(const char *flag, const char *text, uint64_t *out, fc_error *err);
/* Finite number in [min, max]; min_open excludes min itself. */
fc_status ex_cli_double(const char *flag, const char *text, double min, int min_open, double max,
                        double *out, fc_error *err);
/* Splits "key=value" in place (the '=' becomes NUL); FC_ERR_CONFIG without '=' or empty key. */
fc_status ex_cli_kv(const char *flag, char *text, const char **key, const char **value,
                    fc_error *err);

#endif
