/* rawcl.h: a blocking TLS client that speaks raw protocol frames, for tests that must send what
 * the SDK never would (bad sequences, partial uploads, protocol violations) to a server on
 * 127.0.0.1. It verifies the server certificate against the test PKI's CA and the name
 * "localhost", and can present the PKI's client certificate. One client per thread. */
#ifndef FC_TESTS_RAWCL_H
#define FC_TESTS_RAWCL_H

#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/wire.h"
#include "tests/lib/tlsgen.h"

typedef struct rawcl {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    uint64_t seq; /* the last sequence number sent */
} rawcl;

/* Connects and completes the TLS handshake. 1 on success, 0 otherwise (rawcl_free it anyway). */
int rawcl_open(rawcl *c, int port, const tlsgen_pki *pki, int with_client_cert);
/* Abrupt close: no Bye, no close_notify. Safe on a failed or freed client. */
void rawcl_free(rawcl *c);
int rawcl_write(rawcl *c, const void *p, size_t n);
int rawcl_read_exact(rawcl *c, void *buf, size_t len);
/* Sends m (built with any seq) as the next frame; frees m. */
int rawcl_send(rawcl *c, fc_wire_msg *m);
/* Sends a Chunk frame as the next frame. */
int rawcl_send_chunk(rawcl *c, uint32_t tensor_index, uint64_t offset, const void *data,
                     size_t len);
/* Reads one frame; NULL when the connection ended (or the socket's read timeout passed). */
fc_envelope *rawcl_recv(rawcl *c);
/* 1 if the server closed the connection before sending any further frame. */
int rawcl_sees_close(rawcl *c);

#endif
