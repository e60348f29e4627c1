/* cli.c: number and key=value parsing for the example programs (see cli.h). */
#include "client/examples/lib/cli.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

fc_status ex_cli_u64(const char *flag, const char *text, uint64_t *out, fc_error *err) {
    if (!text || !*text || *text == '-' || *text == '+' || *text == ' ')
        return fc_error_set(err, FC_ERR_CONFIG, "%s: '%s' is not a non-negative integer", flag,
                            text ? text : "");
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || *end)
        return fc_error_set(err, FC_ERR_CONFIG, "%s: '%s' is not a non-negative integer", flag,
                            text);
    *out = (uint64_t)v;
    return FC_OK;
}

fc_status ex_cli_size(const char *flag, const char *text, size_t min, size_t max, size_t *out,
                      fc_error *err) {
    uint64_t v;
    fc_status st = ex_cli_u64(flag, text, &v, err);
    if (st != FC_OK)
        return st;
    if (v < min || v > max)
        return fc_error_set(err, FC_ERR_CONFIG, "%s: %s is out of range %zu..%zu", flag, text,
                            min, max);
    *out = (size_t)v;
    return FC_OK;
}

fc_status ex_cli_double(const char *flag, const char *text, double min, int min_open, double max,
                        double *out, fc_error *err) {
    if (!text || !*text)
        return fc_error_set(err, FC_ERR_CONFIG, "%s: empty value", flag);
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || *end || !isfinite(v))
        return fc_error_set(err, FC_ERR_CONFIG, "%s: '%s' is not a finite number", flag, text);
    if (v < min || (min_open && v == min) || v > max)
        return fc_error_set(err, FC_ERR_CONFIG, "%s: %s is out of range %s%g..%g", flag, text,
                            min_open ? "(>) " : "", min, max);
    *out = v;
    return FC_OK;
}

fc_status ex_cli_kv(const char *flag, char *text, const char **key, const char **value,
                    fc_error *err) {
    char *eq = text ? strchr(text, '=') : NULL;
    if (!eq || eq == text)
        return fc_error_set(err, FC_ERR_CONFIG, "%s: '%s' is not key=value", flag,
                            text ? text : "");
    *eq = '\0';
    *key = text;
    *value = eq + 1;
    return FC_OK;
}
