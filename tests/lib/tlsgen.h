/* tlsgen.h: test PKI generated at run time with the OpenSSL 3 API (no openssl CLI, no fixtures).
 *
 * tlsgen owns throw-away keys and certificates for tests: it writes PEM files into a folder and
 * never touches anything outside it. Keys are ECDSA P-256, signatures SHA-256. Not for
 * production use (keys are written unencrypted).
 *
 * Typical use (unit or integration test):
 *
 *     tlsgen_pki pki;
 *     fc_error err = {0};
 *     if (tlsgen_create(NULL, &pki, &err) != FC_OK) fail_msg("%s", err.msg);
 *     server: cert_file = pki.server_cert, key_file = pki.server_key, ca_file = pki.ca_cert
 *     client: trust pki.ca_cert; present pki.client_cert / pki.client_key (CN "client-1")
 *
 * tlsgen_create generates, in DIR (NULL: fc_test_tmpdir(), tests/lib/testutil.h):
 *   ca.pem / ca.key                CA "fedcoord test CA" (CA:TRUE, keyCertSign)
 *   server.pem / server.key        CN "localhost", SAN DNS:localhost, IP:127.0.0.1, IP:::1,
 *                                  serverAuth, signed by the CA, valid -1 day .. +30 days
 *   client.pem / client.key        CN "client-1", clientAuth, signed by the CA, valid now
 *   expired.pem / expired.key      CN "client-expired", signed by the CA, valid -10 .. -1 days
 *   rogue-ca.pem / rogue-ca.key    a second, untrusted CA "fedcoord rogue CA"
 *   rogue.pem / rogue.key          CN "client-rogue", clientAuth, signed by the rogue CA
 * Paths in tlsgen_pki are absolute if DIR is. Every call makes fresh keys.
 */
#ifndef FC_TESTS_TLSGEN_H
#define FC_TESTS_TLSGEN_H

#include "core/status.h"

#define TLSGEN_PATH_MAX 512

typedef struct tlsgen_pki {
    char dir[TLSGEN_PATH_MAX];
    char ca_cert[TLSGEN_PATH_MAX], ca_key[TLSGEN_PATH_MAX];
    char server_cert[TLSGEN_PATH_MAX], server_key[TLSGEN_PATH_MAX];
    char client_cert[TLSGEN_PATH_MAX], client_key[TLSGEN_PATH_MAX];
    char expired_cert[TLSGEN_PATH_MAX], expired_key[TLSGEN_PATH_MAX];
    char rogue_ca_cert[TLSGEN_PATH_MAX], rogue_ca_key[TLSGEN_PATH_MAX];
    char rogue_cert[TLSGEN_PATH_MAX], rogue_key[TLSGEN_PATH_MAX];
} tlsgen_pki;

/* Generates the whole set above into dir (see the file comment). Returns FC_OK, FC_ERR_IO
 * (folder or file not writable; the detail names the path), FC_ERR_TLS (an OpenSSL step failed;
 * the detail has OpenSSL's reason) or FC_ERR_NOMEM. */
fc_status tlsgen_create(const char *dir, tlsgen_pki *out, fc_error *err);

/* Issues one more client certificate signed by the CA in (ca_cert, ca_key): subject CN cn,
 * clientAuth, valid from now+not_before_s to now+not_after_s (seconds, may be negative).
 * Writes cert_path and key_path (PEM). Same errors as tlsgen_create. */
fc_status tlsgen_issue_client(const char *ca_cert, const char *ca_key, const char *cn,
                              long not_before_s, long not_after_s, const char *cert_path,
                              const char *key_path, fc_error *err);

#endif
