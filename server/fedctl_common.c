/* fedctl_common.c: shared helpers for fedctl subcommands (messages and exit codes). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "server/fedctl.h"
#include "storage/store.h"

__attribute__((format(printf, 2, 0))) static void vreport(const char *cmd, const char *fmt,
                                                          va_list ap) {
    fprintf(stderr, "fedctl %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

int fedctl_bad_input(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport(cmd, fmt, ap);
    va_end(ap);
    return FEDCTL_BAD_INPUT;
}

int fedctl_failed(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport(cmd, fmt, ap);
    va_end(ap);
    return FEDCTL_FAILED;
}

int fedctl_is_help(const char *arg) { return strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0; }

int fedctl_has_flag(int argc, char **argv, const char *flag) {
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], flag) == 0)
            return 1;
    return 0;
}

int fedctl_open_store_ro(const char *cmd, const char *path, store **out) {
    store_options opt = {.version = STORE_OPTIONS_V1, .readonly = 1, .must_exist = 1};
    fc_error err = {0};
    *out = NULL;
    fc_status st = store_open(path, &opt, out, &err);
    if (st == FC_OK)
        return FEDCTL_OK;
    if (st == FC_ERR_NOT_FOUND || st == FC_ERR_FORMAT || st == FC_ERR_VERSION ||
        st == FC_ERR_INVALID)
        return fedctl_bad_input(cmd, "%s", fc_error_text(&err));
    return fedctl_failed(cmd, "%s", fc_error_text(&err));
}
