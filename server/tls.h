/* tls.h: the OpenSSL 3 engine under net.c: the server context and the one error mapping.
 *
 * tls owns SSL_CTX configuration (protocol versions, certificates, mutual TLS) and the mapping
 * of OpenSSL's error queue into fc_error. It never touches sockets or the event loop; net.c
 * drives SSL objects over memory BIOs.
 */
#ifndef FC_SERVER_TLS_H
#define FC_SERVER_TLS_H

#include <openssl/ssl.h>

#include "core/status.h"
#include "server/net.h"

/* Builds a server SSL_CTX from cfg: TLS 1.3 only unless cfg->min_version is 1.2, no session
 * tickets or session cache, no renegotiation, SSL_MODE_RELEASE_BUFFERS (idle connections keep
 * no record buffers). Loads the chain and key and checks that they match; with mTLS loads
 * ca_file and requests (OPTIONAL) or requires (REQUIRE) a client certificate. Errors:
 * FC_ERR_CONFIG naming the file and OpenSSL's reason, FC_ERR_NOMEM. */
fc_status net_tls_ctx_new(const net_tls_config *cfg, SSL_CTX **out, fc_error *err);

/* The one OpenSSL error mapping: sets err to code with "what: <OpenSSL reasons>" built from
 * (and draining) this thread's OpenSSL error queue; with ssl, adds the certificate verification
 * result when it failed. Returns code. */
fc_status net_tls_error(fc_error *err, fc_status code, const SSL *ssl, const char *what);

/* The verified peer certificate's subject CN as a new string (fc_free), or NULL if there is no
 * verified certificate. FC_ERR_AUTH if a certificate has no usable CN (missing, empty, or with
 * control characters); FC_ERR_NOMEM. */
fc_status net_tls_peer_cn(SSL *ssl, char **out, fc_error *err);

#endif
