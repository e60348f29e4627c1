/* tlsgen.c: generates a throw-away test PKI (CA, server, client certificates) with OpenSSL 3.
 *
 * Owns only the files it writes in the folder it is given; never reads or writes elsewhere.
 */
#include "tests/lib/tlsgen.h"
#include "tests/lib/testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define DAY (24L * 3600L)

typedef enum cert_kind { KIND_CA, KIND_SERVER, KIND_CLIENT } cert_kind;

static fc_status ossl_fail(fc_error *err, const char *what) {
    char reason[256] = "no OpenSSL detail";
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, reason, sizeof reason);
    ERR_clear_error();
    return fc_error_set(err, FC_ERR_TLS, "tlsgen: %s: %s", what, reason);
}

static fc_status add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value, fc_error *err) {
    X509_EXTENSION *ex = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
    if (!ex)
        return ossl_fail(err, value);
    int ok = X509_add_ext(x, ex, -1);
    X509_EXTENSION_free(ex);
    return ok ? FC_OK : ossl_fail(err, "adding an extension");
}

/* A certificate for key, issued by (issuer, issuer_key), or self-signed when issuer is NULL. */
static fc_status make_cert(EVP_PKEY *key, const char *cn, cert_kind kind, X509 *issuer,
                           EVP_PKEY *issuer_key, long not_before_s, long not_after_s, X509 **out,
                           fc_error *err) {
    *out = NULL;
    fc_status st;
    BIGNUM *serial = BN_new();
    X509 *x = X509_new();
    if (!x || !serial) {
        st = ossl_fail(err, "allocating a certificate");
        goto fail;
    }
    if (!X509_set_version(x, 2) || !BN_rand(serial, 63, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) ||
        !BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(x)) ||
        !X509_gmtime_adj(X509_getm_notBefore(x), not_before_s) ||
        !X509_gmtime_adj(X509_getm_notAfter(x), not_after_s) || !X509_set_pubkey(x, key)) {
        st = ossl_fail(err, "setting certificate fields");
        goto fail;
    }
    X509_NAME *name = X509_get_subject_name(x);
    if (!X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                                    (const unsigned char *)"fedcoord tests", -1, -1, 0) ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1,
                                    -1, 0) ||
        !X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name)) {
        st = ossl_fail(err, "setting the subject");
        goto fail;
    }
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
    switch (kind) {
    case KIND_CA:
        if ((st = add_ext(x, &ctx, NID_basic_constraints, "critical,CA:TRUE", err)) != FC_OK ||
            (st = add_ext(x, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign", err)) !=
                FC_OK ||
            (st = add_ext(x, &ctx, NID_subject_key_identifier, "hash", err)) != FC_OK)
            goto fail;
        break;
    case KIND_SERVER:
        if ((st = add_ext(x, &ctx, NID_basic_constraints, "critical,CA:FALSE", err)) != FC_OK ||
            (st = add_ext(x, &ctx, NID_key_usage, "critical,digitalSignature", err)) != FC_OK ||
            (st = add_ext(x, &ctx, NID_ext_key_usage, "serverAuth", err)) != FC_OK ||
            (st = add_ext(x, &ctx, NID_subject_alt_name,
                          "DNS:localhost,IP:127.0.0.1,IP:::1", err)) != FC_OK ||
            (st = add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always", err)) != FC_OK)
            goto fail;
        break;
    case KIND_CLIENT:
        if ((st = add_ext(x, &ctx, NID_basic_constraints, "critical,CA:FALSE", err)) != FC_OK ||
            (st = add_ext(x, &ctx, NID_key_usage, "critical,digitalSignature", err)) != FC_OK ||
            (st = add_ext(x, &ctx, NID_ext_key_usage, "clientAuth", err)) != FC_OK ||
            (st = add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always", err)) != FC_OK)
            goto fail;
        break;
    }
    if (X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) <= 0) {
        st = ossl_fail(err, "signing the certificate");
        goto fail;
    }
    BN_free(serial);
    *out = x;
    return FC_OK;
fail:
    BN_free(serial);
    X509_free(x);
    return st;
}

static FILE *open_out(const char *path, mode_t mode, fc_error *err) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    if (fd < 0) {
        fc_error_set(err, FC_ERR_IO, "tlsgen: cannot create %s: %s", path, strerror(errno));
        return NULL;
    }
    FILE *f = fdopen(fd, "w");
    if (!f) {
        fc_error_set(err, FC_ERR_IO, "tlsgen: cannot open %s: %s", path, strerror(errno));
        close(fd);
    }
    return f;
}

static fc_status close_out(FILE *f, int write_ok, const char *path, fc_error *err) {
    int rc = fclose(f);
    if (!write_ok)
        return ossl_fail(err, path);
    if (rc != 0)
        return fc_error_set(err, FC_ERR_IO, "tlsgen: writing %s: %s", path, strerror(errno));
    return FC_OK;
}

static fc_status write_pair(X509 *x, EVP_PKEY *key, const char *cert_path, const char *key_path,
                            fc_error *err) {
    FILE *f = open_out(key_path, 0600, err);
    if (!f)
        return FC_ERR_IO;
    int ok = PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    fc_status st = close_out(f, ok, key_path, err);
    if (st != FC_OK)
        return st;
    if (!(f = open_out(cert_path, 0644, err)))
        return FC_ERR_IO;
    ok = PEM_write_X509(f, x);
    return close_out(f, ok, cert_path, err);
}

/* Generates a key and a certificate and writes both. */
static fc_status issue(const char *cn, cert_kind kind, X509 *issuer, EVP_PKEY *issuer_key,
                       long not_before_s, long not_after_s, const char *cert_path,
                       const char *key_path, X509 **cert_out, EVP_PKEY **key_out, fc_error *err) {
    EVP_PKEY *key = EVP_EC_gen("P-256");
    if (!key)
        return ossl_fail(err, "generating a P-256 key");
    X509 *x = NULL;
    fc_status st = make_cert(key, cn, kind, issuer, issuer_key, not_before_s, not_after_s, &x, err);
    if (st == FC_OK)
        st = write_pair(x, key, cert_path, key_path, err);
    if (st == FC_OK && cert_out && key_out) {
        *cert_out = x;
        *key_out = key;
        return FC_OK;
    }
    X509_free(x);
    EVP_PKEY_free(key);
    return st;
}

static fc_status set_path(char *dst, const char *dir, const char *file, fc_error *err) {
    int n = snprintf(dst, TLSGEN_PATH_MAX, "%s/%s", dir, file);
    if (n < 0 || n >= TLSGEN_PATH_MAX)
        return fc_error_set(err, FC_ERR_IO, "tlsgen: path %s/%s is too long", dir, file);
    return FC_OK;
}

fc_status tlsgen_create(const char *dir, tlsgen_pki *out, fc_error *err) {
    memset(out, 0, sizeof *out);
    if (!dir)
        dir = fc_test_tmpdir();
    if (strlen(dir) >= TLSGEN_PATH_MAX - 32)
        return fc_error_set(err, FC_ERR_IO, "tlsgen: folder name %s is too long", dir);
    snprintf(out->dir, sizeof out->dir, "%s", dir);
    fc_status st;
    if ((st = set_path(out->ca_cert, dir, "ca.pem", err)) != FC_OK ||
        (st = set_path(out->ca_key, dir, "ca.key", err)) != FC_OK ||
        (st = set_path(out->server_cert, dir, "server.pem", err)) != FC_OK ||
        (st = set_path(out->server_key, dir, "server.key", err)) != FC_OK ||
        (st = set_path(out->client_cert, dir, "client.pem", err)) != FC_OK ||
        (st = set_path(out->client_key, dir, "client.key", err)) != FC_OK ||
        (st = set_path(out->expired_cert, dir, "expired.pem", err)) != FC_OK ||
        (st = set_path(out->expired_key, dir, "expired.key", err)) != FC_OK ||
        (st = set_path(out->rogue_ca_cert, dir, "rogue-ca.pem", err)) != FC_OK ||
        (st = set_path(out->rogue_ca_key, dir, "rogue-ca.key", err)) != FC_OK ||
        (st = set_path(out->rogue_cert, dir, "rogue.pem", err)) != FC_OK ||
        (st = set_path(out->rogue_key, dir, "rogue.key", err)) != FC_OK)
        return st;

    X509 *ca = NULL, *rogue_ca = NULL;
    EVP_PKEY *ca_key = NULL, *rogue_ca_key = NULL;
    if ((st = issue("fedcoord test CA", KIND_CA, NULL, NULL, -DAY, 365 * DAY, out->ca_cert,
                    out->ca_key, &ca, &ca_key, err)) != FC_OK)
        goto done;
    if ((st = issue("localhost", KIND_SERVER, ca, ca_key, -DAY, 30 * DAY, out->server_cert,
                    out->server_key, NULL, NULL, err)) != FC_OK)
        goto done;
    if ((st = issue("client-1", KIND_CLIENT, ca, ca_key, -DAY, 30 * DAY, out->client_cert,
                    out->client_key, NULL, NULL, err)) != FC_OK)
        goto done;
    if ((st = issue("client-expired", KIND_CLIENT, ca, ca_key, -10 * DAY, -DAY,
                    out->expired_cert, out->expired_key, NULL, NULL, err)) != FC_OK)
        goto done;
    if ((st = issue("fedcoord rogue CA", KIND_CA, NULL, NULL, -DAY, 365 * DAY,
                    out->rogue_ca_cert, out->rogue_ca_key, &rogue_ca, &rogue_ca_key, err)) !=
        FC_OK)
        goto done;
    st = issue("client-rogue", KIND_CLIENT, rogue_ca, rogue_ca_key, -DAY, 30 * DAY,
               out->rogue_cert, out->rogue_key, NULL, NULL, err);
done:
    X509_free(ca);
    X509_free(rogue_ca);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(rogue_ca_key);
    return st;
}

fc_status tlsgen_issue_client(const char *ca_cert, const char *ca_key, const char *cn,
                              long not_before_s, long not_after_s, const char *cert_path,
                              const char *key_path, fc_error *err) {
    FILE *f = fopen(ca_cert, "r");
    if (!f)
        return fc_error_set(err, FC_ERR_IO, "tlsgen: cannot open %s: %s", ca_cert,
                            strerror(errno));
    X509 *ca = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (!ca)
        return ossl_fail(err, ca_cert);
    if (!(f = fopen(ca_key, "r"))) {
        X509_free(ca);
        return fc_error_set(err, FC_ERR_IO, "tlsgen: cannot open %s: %s", ca_key,
                            strerror(errno));
    }
    EVP_PKEY *key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    fc_status st = key ? issue(cn, KIND_CLIENT, ca, key, not_before_s, not_after_s, cert_path,
                               key_path, NULL, NULL, err)
                       : ossl_fail(err, ca_key);
    EVP_PKEY_free(key);
    X509_free(ca);
    return st;
}
