/* fedctl_export.c: `fedctl export`, a stored model version written out as a safetensors file.
 * It streams the version's chunks (store_model_read, whose SHA-256 check covers the whole model)
 * straight into the crash-safe safetensors writer, so it never holds the model in memory, and it
 * never leaves a partial file: on any error the temporary file is removed. Opens the database
 * read-only; safe while the daemon runs. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


#include "core/alloc.h"
#include "core/safetensors.h"
#include "core/tensor.h"
#include "server/api.h"
#include "server/fedctl.h"
#include "storage/store.h"

#define CMD "export"
/* Far above any real model; a specs list longer than this is refused as corrupt. */
#define MAX_TENSORS 100000u

static const char usage_text[] =
    "usage: fedctl export --db PATH --out FILE [--version V]\n"
    "       fedctl export VERSION -o FILE [--url URL] [--token-file FILE] [--ca FILE]\n"
    "\n"
    "Without --db it downloads version VERSION from a running daemon's HTTP API (--url, default\n"
    "$FEDCOORD_URL or http://127.0.0.1:7080), streaming it to FILE.partial, checks the data\n"
    "against the committed SHA-256 the API sends, and only then renames it to FILE; on any\n"
    "error no FILE is left. With --db:\n"
    "\n"
    "Writes model version V (default: the newest) of the database as a safetensors file:\n"
    "the tensors in their stored order with their names, dtypes and shapes, and metadata\n"
    "fedcoord.version, fedcoord.round and fedcoord.sha256 (SHA-256 of the tensor data). The\n"
    "data's SHA-256 is checked against the database while it streams; on a mismatch nothing\n"
    "is written. FILE is replaced atomically (temporary file, fsync, rename). Opens the\n"
    "database read-only, so it can run beside the daemon.\n"
    "\n"
    "Exit status: 0 on success, 1 if the database is corrupt or FILE cannot be written,\n"
    "2 for bad input: usage, a missing database, no such version, or a version whose tensors\n"
    "were pruned ([storage] keep_last / keep_every).\n";

typedef struct args {
    const char *db, *out;
    int64_t version; /* 0 = newest */
} args;

static int take_value(int argc, char **argv, int *i, const char *flag, const char **out) {
    const char *arg = argv[*i];
    size_t fl = strlen(flag);
    const char *v;
    if (arg[fl] == '=') {
        v = arg + fl + 1;
    } else {
        if (*i + 1 >= argc)
            return fedctl_bad_input(CMD, "%s needs a value", flag);
        v = argv[++*i];
    }
    if (*out)
        return fedctl_bad_input(CMD, "%s given twice", flag);
    if (!*v)
        return fedctl_bad_input(CMD, "%s needs a value", flag);
    *out = v;
    return FEDCTL_OK;
}

static int is_flag(const char *arg, const char *flag) {
    size_t n = strlen(flag);
    return strncmp(arg, flag, n) == 0 && (arg[n] == '\0' || arg[n] == '=');
}

static int parse(int argc, char **argv, args *a) {
    memset(a, 0, sizeof *a);
    const char *version = NULL;
    for (int i = 1; i < argc; i++) {
        int rc = FEDCTL_OK;
        if (is_flag(argv[i], "--db"))
            rc = take_value(argc, argv, &i, "--db", &a->db);
        else if (is_flag(argv[i], "--out"))
            rc = take_value(argc, argv, &i, "--out", &a->out);
        else if (is_flag(argv[i], "--version"))
            rc = take_value(argc, argv, &i, "--version", &version);
        else
            return fedctl_bad_input(CMD, "unexpected argument '%s' (see fedctl export --help)",
                                    argv[i]);
        if (rc != FEDCTL_OK)
            return rc;
    }
    if (!a->db)
        return fedctl_bad_input(CMD, "--db PATH is required");
    if (!a->out)
        return fedctl_bad_input(CMD, "--out FILE is required");
    if (version && strcmp(version, "latest") != 0) {
        char *end;
        errno = 0;
        long long v = strtoll(version, &end, 10);
        if (errno || *end || v < 1 || version[0] == '+' || version[0] == ' ')
            return fedctl_bad_input(CMD, "--version '%s': expected a version number >= 1 or "
                                         "'latest'",
                                    version);
        a->version = v;
    }
    return FEDCTL_OK;
}

static fc_status sink_to_writer(void *ud, const void *data, size_t len, uint64_t offset,
                                fc_error *err) {
    (void)offset;
    return fc_st_writer_write(ud, data, len, err);
}

static int export_version(store *s, const args *a) {
    fc_error err = {0};
    int64_t version = a->version;
    fc_status st;
    if (version == 0) {
        if ((st = store_latest_version(s, &version, &err)) != FC_OK)
            return fedctl_failed(CMD, "%s: %s", a->db, fc_error_text(&err));
        if (version == 0)
            return fedctl_bad_input(CMD, "%s holds no model version yet", a->db);
    }
    store_model_info info = {0};
    if ((st = store_model_info_get(s, version, &info, &err)) != FC_OK) {
        if (st == FC_ERR_NOT_FOUND)
            return fedctl_bad_input(CMD, "%s has no model version %" PRId64, a->db, version);
        return fedctl_failed(CMD, "%s: version %" PRId64 ": %s", a->db, version,
                             fc_error_text(&err));
    }
    int rc = FEDCTL_FAILED;
    fc_tensor_spec *specs = NULL;
    size_t n = 0;
    fc_st_writer *w = NULL;
    if (info.pruned_at != 0) {
        rc = fedctl_bad_input(CMD,
                              "version %" PRId64 " was pruned: only its metadata is kept "
                              "([storage] keep_last, keep_every)",
                              version);
        goto out;
    }
    if ((st = api_specs_from_json(info.tensor_specs_json, MAX_TENSORS, &specs, &n, &err)) !=
        FC_OK) {
        rc = fedctl_failed(CMD, "%s: version %" PRId64 ": %s", a->db, version,
                           fc_error_text(&err));
        goto out;
    }
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t nb;
        if (fc_spec_nbytes(&specs[i], &nb) != FC_OK || total + nb < total) {
            rc = fedctl_failed(CMD, "%s: version %" PRId64 ": tensor '%s' size overflows", a->db,
                               version, specs[i].name);
            goto out;
        }
        total += nb;
    }
    if (total != info.size) {
        rc = fedctl_failed(CMD,
                           "%s: version %" PRId64 ": tensor specs need %" PRIu64
                           " bytes, the stored model has %" PRIu64,
                           a->db, version, total, info.size);
        goto out;
    }
    char vtext[32], rtext[32], hex[2 * STORE_SHA256_LEN + 1];
    snprintf(vtext, sizeof vtext, "%" PRId64, version);
    snprintf(rtext, sizeof rtext, "%" PRId64, info.round_id);
    for (size_t i = 0; i < STORE_SHA256_LEN; i++)
        snprintf(hex + 2 * i, 3, "%02x", info.sha256[i]);
    fc_st_meta meta[3] = {{"fedcoord.version", vtext},
                          {"fedcoord.round", rtext},
                          {"fedcoord.sha256", hex}};
    if ((st = fc_st_writer_begin(a->out, specs, n, meta, 3, &w, &err)) != FC_OK) {
        rc = st == FC_ERR_IO ? fedctl_failed(CMD, "%s", fc_error_text(&err))
                             : fedctl_failed(CMD, "%s: %s", a->out, fc_error_text(&err));
        goto out;
    }
    if ((st = store_model_read(s, version, 0, sink_to_writer, w, &err)) != FC_OK) {
        rc = fedctl_failed(CMD, "%s: version %" PRId64 ": %s", a->db, version,
                           fc_error_text(&err));
        goto out;
    }
    st = fc_st_writer_finish(w, &err);
    w = NULL;
    if (st != FC_OK) {
        rc = fedctl_failed(CMD, "%s: %s", a->out, fc_error_text(&err));
        goto out;
    }
    printf("exported model version %" PRId64 " (round %" PRId64 ", %zu tensors, %" PRIu64
           " bytes, sha256 %s) to %s\n",
           version, info.round_id, n, total, hex, a->out);
    rc = FEDCTL_OK;
out:
    fc_st_writer_abort(w);
    api_specs_free(specs, n);
    store_model_info_clear(&info);
    return rc;
}

static int run(int argc, char **argv) {
    if (!fedctl_has_flag(argc, argv, "--db"))
        return fedctl_http_export(argc, argv); /* a running daemon, over HTTP */
    args a;
    int rc = parse(argc, argv, &a);
    if (rc != FEDCTL_OK)
        return rc;
    store *s = NULL;
    if ((rc = fedctl_open_store_ro(CMD, a.db, &s)) != FEDCTL_OK)
        return rc;
    rc = export_version(s, &a);
    store_close(s);
    return rc;
}

const fedctl_command fedctl_cmd_export = {
    .name = "export",
    .summary = "write a stored model version as a safetensors file",
    .usage = usage_text,
    .run = run,
};
