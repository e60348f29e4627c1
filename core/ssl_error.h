/* ssl_error.h: the one mapping from OpenSSL's error state to fc_error, shared by the daemon's
 * TLS layer (server/tls.c) and the SDK (client/conn.c). */
#ifndef FC_SSL_ERROR_H
#define FC_SSL_ERROR_H

#include <openssl/ssl.h>

#include "core/status.h"

/* Drains this thread's OpenSSL error queue into err as "what: reason; reason". If ssl is not
 * NULL and its peer certificate failed verification, the detail starts with "what: certificate
 * verification failed: <X509 reason>" and the queue's reasons follow in parentheses. Returns
 * code. Never blocks; err may be NULL (the queue is still drained). */
fc_status fc_ssl_error(fc_error *err, fc_status code, const SSL *ssl, const char *what);

#endif
