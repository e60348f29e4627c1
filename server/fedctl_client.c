/* fedctl_client.c: `fedctl client add|revoke|list`, the operator's management of the clients
 * that may authenticate with a token. It owns token generation: 32 bytes from OpenSSL's
 * RAND_bytes, written as base64url text (43 characters, no padding). That text is the token a
 * client sends in Hello.token; the store keeps only the SHA-256 of the text. The token is
 * printed once and never written anywhere else: not to the database, not to stderr, not to a
 * log.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "server/daemon_config.h"
#include "server/fedctl.h"
#include "storage/store.h"

#define CMD "client"
#define TOKEN_BYTES 32
#define TOKEN_CHARS 43 /* base64url of 32 bytes, unpadded */

static const char usage_text[] =
    "usage: fedctl client add NAME --db PATH\n"
    "       fedctl client revoke NAME --db PATH\n"
    "       fedctl client list --db PATH\n"
    "\n"
    "  add      registers client NAME and prints its token on stdout. The token is shown only\n"
    "           once: only its SHA-256 is stored. Creates the database if PATH does not exist.\n"
    "  revoke   marks NAME's token revoked in the database (the record stays).\n"
    "  list     prints every client: name, created, revoked, rounds participated, and updates\n"
    "           accepted, rejected, timed out and dropped. Never prints tokens or hashes.\n"
    "\n"
    "NAME is 1..64 characters of A-Z a-z 0-9 . _ -\n"
    "--db PATH is the daemon's database ([storage] db; default DATA_DIR/fedcoord.db).\n"
    "\n"
    "Exit status: 0 on success, 1 if the database cannot be used (I/O error, corrupt), 2 for bad\n"
    "input: usage, a bad or duplicate name, an unknown or already revoked client, a missing\n"
    "database or a file that is not a fedcoord database.\n";

typedef struct args {
    const char *sub;
    const char *name;
    const char *db;
} args;

/* argv[0] is "client". Returns FEDCTL_OK or an exit status after printing the error. */
static int parse(int argc, char **argv, args *a) {
    memset(a, 0, sizeof *a);
    if (argc < 2)
        return fedctl_bad_input(CMD, "expected a subcommand: add, revoke or list");
    a->sub = argv[1];
    int want_name = strcmp(a->sub, "add") == 0 || strcmp(a->sub, "revoke") == 0;
    if (!want_name && strcmp(a->sub, "list") != 0)
        return fedctl_bad_input(CMD, "unknown subcommand '%s'; expected add, revoke or list",
                                a->sub);
    for (int i = 2; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--db") == 0 || strncmp(arg, "--db=", 5) == 0) {
            const char *v;
            if (arg[4] == '=') {
                v = arg + 5;
            } else {
                if (i + 1 >= argc)
                    return fedctl_bad_input(CMD, "--db needs a path");
                v = argv[++i];
            }
            if (a->db)
                return fedctl_bad_input(CMD, "--db given twice");
            if (!*v)
                return fedctl_bad_input(CMD, "--db needs a path");
            a->db = v;
        } else if (arg[0] == '-' && arg[1] != '\0') {
            return fedctl_bad_input(CMD, "unknown option '%s' (see fedctl client --help)", arg);
        } else if (want_name && !a->name) {
            a->name = arg;
        } else {
            return fedctl_bad_input(CMD, "unexpected argument '%s' (see fedctl client --help)",
                                    arg);
        }
    }
    if (want_name && !a->name)
        return fedctl_bad_input(CMD, "%s: missing the client NAME", a->sub);
    if (want_name && !dcfg_valid_client_name(a->name))
        return fedctl_bad_input(CMD,
                                "%s: bad client name '%.80s': use 1..%d characters of "
                                "A-Z a-z 0-9 . _ -",
                                a->sub, a->name, DCFG_NAME_MAX);
    if (!a->db)
        return fedctl_bad_input(CMD, "%s: --db PATH is required", a->sub);
    return FEDCTL_OK;
}

static int open_db(const args *a, int readonly, int must_exist, store **s) {
    store_options opt = {.version = STORE_OPTIONS_V1, .readonly = readonly,
                         .must_exist = must_exist};
    fc_error err = {0};
    fc_status st = store_open(a->db, &opt, s, &err);
    switch (st) {
    case FC_OK:
        return FEDCTL_OK;
    case FC_ERR_NOT_FOUND:
    case FC_ERR_FORMAT:
    case FC_ERR_VERSION:
    case FC_ERR_INVALID:
        return fedctl_bad_input(CMD, "%s: %s", a->sub, fc_error_text(&err));
    default:
        return fedctl_failed(CMD, "%s: %s", a->sub, fc_error_text(&err));
    }
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void base64url(const uint8_t *in, size_t n, char *out) {
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = alphabet[(v >> 18) & 63];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = alphabet[(v >> 6) & 63];
        out[o++] = alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = alphabet[(v >> 18) & 63];
        out[o++] = alphabet[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = alphabet[(v >> 18) & 63];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = alphabet[(v >> 6) & 63];
    }
    out[o] = '\0';
}

static int cmd_add(const args *a) {
    uint8_t raw[TOKEN_BYTES], hash[STORE_SHA256_LEN];
    char token[TOKEN_CHARS + 1];
    unsigned hash_len = 0;
    if (RAND_bytes(raw, sizeof raw) != 1)
        return fedctl_failed(CMD, "add: the OpenSSL random generator failed");
    base64url(raw, sizeof raw, token);
    OPENSSL_cleanse(raw, sizeof raw);
    if (EVP_Digest(token, TOKEN_CHARS, hash, &hash_len, EVP_sha256(), NULL) != 1 ||
        hash_len != sizeof hash) {
        OPENSSL_cleanse(token, sizeof token);
        return fedctl_failed(CMD, "add: SHA-256 failed");
    }
    store *s = NULL;
    int rc = open_db(a, 0, 0, &s);
    if (rc != FEDCTL_OK)
        goto done;
    fc_error err = {0};
    fc_status st = store_client_add(s, a->name, hash, now_ms(), NULL, &err);
    if (st == FC_ERR_EXISTS) {
        store_client existing;
        fc_error e2 = {0};
        if (store_client_by_name(s, a->name, &existing, &e2) == FC_OK)
            rc = fedctl_bad_input(CMD, "add: a client named '%s' already exists%s", a->name,
                                  existing.revoked_at ? " (revoked; names are not reused)" : "");
        else /* the hash collided: 2^-256, but say what happened */
            rc = fedctl_failed(CMD, "add: %s", fc_error_text(&err));
        goto done;
    }
    if (st != FC_OK) {
        rc = st == FC_ERR_INVALID ? fedctl_bad_input(CMD, "add: %s", fc_error_text(&err))
                                  : fedctl_failed(CMD, "add: %s", fc_error_text(&err));
        goto done;
    }
    if (printf("%s\n", token) < 0 || fflush(stdout) != 0) {
        /* Nobody saw the token: revoke it so that no unknown credential stays valid. */
        fc_error e2 = {0};
        if (store_client_revoke(s, a->name, now_ms(), &e2) != FC_OK)
            rc = fedctl_failed(CMD, "add: cannot write the token, and revoking '%s' failed: %s",
                               a->name, fc_error_text(&e2));
        else
            rc = fedctl_failed(CMD, "add: cannot write the token to stdout; '%s' was revoked",
                               a->name);
        goto done;
    }
    fprintf(stderr,
            "fedctl client: added '%s'; its token (on stdout) is shown only this once and "
            "cannot be recovered\n",
            a->name);
    rc = FEDCTL_OK;
done:
    OPENSSL_cleanse(token, sizeof token);
    store_close(s);
    return rc;
}

static int cmd_revoke(const args *a) {
    store *s = NULL;
    int rc = open_db(a, 0, 1, &s);
    if (rc != FEDCTL_OK)
        return rc;
    fc_error err = {0};
    fc_status st = store_client_revoke(s, a->name, now_ms(), &err);
    if (st == FC_OK) {
        printf("revoked '%s'\n", a->name);
        rc = fflush(stdout) == 0 ? FEDCTL_OK : FEDCTL_FAILED;
    } else if (st == FC_ERR_NOT_FOUND) {
        rc = fedctl_bad_input(CMD, "revoke: no client named '%s'", a->name);
    } else if (st == FC_ERR_STATE) {
        rc = fedctl_bad_input(CMD, "revoke: client '%s' is already revoked", a->name);
    } else {
        rc = fedctl_failed(CMD, "revoke: %s", fc_error_text(&err));
    }
    store_close(s);
    return rc;
}

static void format_time(int64_t ms, char *out, size_t size) {
    if (ms <= 0) {
        snprintf(out, size, "-");
        return;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (!gmtime_r(&t, &tm) || strftime(out, size, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, size, "%lld", (long long)ms);
}

static fc_status print_client(void *ud, const store_client *c) {
    (void)ud;
    char created[32], revoked[32];
    format_time(c->created_at, created, sizeof created);
    format_time(c->revoked_at, revoked, sizeof revoked);
    printf("%-24s %-20s %-20s %7lld %9lld %9lld %9lld %7lld\n", c->name, created, revoked,
           (long long)c->rounds_participated, (long long)c->updates_accepted,
           (long long)c->updates_rejected, (long long)c->updates_timed_out,
           (long long)c->updates_dropped);
    return FC_OK;
}

static int cmd_list(const args *a) {
    store *s = NULL;
    int rc = open_db(a, 1, 1, &s);
    if (rc != FEDCTL_OK)
        return rc;
    printf("%-24s %-20s %-20s %7s %9s %9s %9s %7s\n", "NAME", "CREATED", "REVOKED", "ROUNDS",
           "ACCEPTED", "REJECTED", "TIMED_OUT", "DROPPED");
    fc_error err = {0};
    fc_status st = store_client_list(s, print_client, NULL, &err);
    if (st != FC_OK)
        rc = fedctl_failed(CMD, "list: %s", fc_error_text(&err));
    else if (fflush(stdout) != 0)
        rc = fedctl_failed(CMD, "list: cannot write to stdout");
    store_close(s);
    return rc;
}

static int run(int argc, char **argv) {
    args a;
    int rc = parse(argc, argv, &a);
    if (rc != FEDCTL_OK)
        return rc;
    if (strcmp(a.sub, "add") == 0)
        return cmd_add(&a);
    if (strcmp(a.sub, "revoke") == 0)
        return cmd_revoke(&a);
    return cmd_list(&a);
}

const fedctl_command fedctl_cmd_client = {
    .name = "client",
    .summary = "add, revoke or list the clients that authenticate with a token",
    .usage = usage_text,
    .run = run,
};
