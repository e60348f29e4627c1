/* fedctl_verify.c: `fedctl verify DB`, the audit of a store from the database alone: SQLite's
 * integrity check, then the model version chain, chunks, hashes and state (storage/). */
#include <stdio.h>

#include "server/fedctl.h"
#include "storage/store.h"

#define CMD "verify"

static const char usage_text[] =
    "usage: fedctl verify DB\n"
    "\n"
    "Checks a fedcoord database without a running daemon: PRAGMA integrity_check, then every\n"
    "model version in order (parent link and hash, chain hash, chunks and data SHA-256, state)\n"
    "and that every committed round has its model. Opens the file read-only.\n"
    "\n"
    "Exit status: 0 if everything verifies, 1 if the database is corrupt or the chain is broken\n"
    "(the first broken link is named), 2 if DB is missing or not a fedcoord database.\n";

static int run(int argc, char **argv) {
    if (argc != 2)
        return fedctl_bad_input(CMD, "expected exactly one argument, the database path");
    fc_error err = {0};
    fc_status st = store_verify_print(argv[1], stdout, &err);
    fflush(stdout);
    switch (st) {
    case FC_OK:
        return FEDCTL_OK;
    case FC_ERR_NOT_FOUND:
    case FC_ERR_FORMAT:
    case FC_ERR_VERSION:
    case FC_ERR_INVALID:
        return fedctl_bad_input(CMD, "%s", fc_error_text(&err));
    default:
        return fedctl_failed(CMD, "%s", fc_error_text(&err));
    }
}

const fedctl_command fedctl_cmd_verify = {
    .name = "verify",
    .summary = "check a database's integrity and model version chain",
    .usage = usage_text,
    .run = run,
};
