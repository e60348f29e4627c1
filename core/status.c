/* status.c: strings for fc_status and the detail-carrying fc_error. */
#include "core/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *fc_strerror(fc_status st) {
    switch (st) {
#define FC_STATUS_STR(name, num, desc)                                                            \
    case FC_##name:                                                                               \
        return desc;
        FC_STATUS_MAP(FC_STATUS_STR)
#undef FC_STATUS_STR
    }
    return "unknown error";
}

const char *fc_status_name(fc_status st) {
    switch (st) {
#define FC_STATUS_NAME(name, num, desc)                                                           \
    case FC_##name:                                                                               \
        return #name;
        FC_STATUS_MAP(FC_STATUS_NAME)
#undef FC_STATUS_NAME
    }
    return "UNKNOWN";
}

fc_status fc_error_set(fc_error *err, fc_status code, const char *fmt, ...) {
    if (err) {
        err->code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* Truncation is intended here: a long detail is cut at FC_ERROR_MSG_MAX - 1 bytes. */
static void join3(char *dst, size_t size, const char *a, const char *b, const char *c) {
    size_t pos = 0;
    const char *parts[3] = {a, b, c};
    for (int i = 0; i < 3; i++)
        for (const char *p = parts[i]; *p && pos + 1 < size; p++)
            dst[pos++] = *p;
    dst[pos] = '\0';
}

fc_status fc_error_prefix(fc_error *err, const char *fmt, ...) {
    if (!err)
        return FC_OK;
    char prefix[FC_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    char old[FC_ERROR_MSG_MAX];
    memcpy(old, err->msg, sizeof old);
    old[sizeof old - 1] = '\0';
    join3(err->msg, sizeof err->msg, prefix, ": ", old[0] ? old : fc_strerror(err->code));
    return err->code;
}

const char *fc_error_text(const fc_error *err) {
    if (!err)
        return "";
    return err->msg[0] ? err->msg : fc_strerror(err->code);
}
