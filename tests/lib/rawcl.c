/* rawcl.c: see rawcl.h. */
#include "tests/lib/rawcl.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/buf.h"
#include "proto/frame.h"

int rawcl_open(rawcl *c, int port, const tlsgen_pki *pki, int with_client_cert) {
    memset(c, 0, sizeof *c);
    c->fd = -1;
    c->ctx = SSL_CTX_new(TLS_client_method());
    if (!c->ctx || SSL_CTX_load_verify_locations(c->ctx, pki->ca_cert, NULL) != 1)
        return 0;
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    if (with_client_cert &&
        (SSL_CTX_use_certificate_chain_file(c->ctx, pki->client_cert) != 1 ||
         SSL_CTX_use_PrivateKey_file(c->ctx, pki->client_key, SSL_FILETYPE_PEM) != 1))
        return 0;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0)
        return 0;
    c->ssl = SSL_new(c->ctx);
    if (!c->ssl)
        return 0;
    SSL_set_fd(c->ssl, c->fd);
    SSL_set1_host(c->ssl, "localhost");
    return SSL_connect(c->ssl) == 1;
}

void rawcl_free(rawcl *c) {
    if (c->ssl)
        SSL_free(c->ssl);
    if (c->ctx)
        SSL_CTX_free(c->ctx);
    if (c->fd >= 0)
        close(c->fd);
    c->ssl = NULL, c->ctx = NULL, c->fd = -1;
    ERR_clear_error();
}

int rawcl_write(rawcl *c, const void *p, size_t n) {
    return SSL_write(c->ssl, p, (int)n) == (int)n;
}

int rawcl_read_exact(rawcl *c, void *buf, size_t len) {
    size_t got = 0;
    while (got < len) {
        int r = SSL_read(c->ssl, (uint8_t *)buf + got, (int)(len - got));
        if (r <= 0)
            return 0;
        got += (size_t)r;
    }
    return 1;
}

int rawcl_send(rawcl *c, fc_wire_msg *m) {
    fc_buf b = FC_BUF_INIT;
    fc_error err = {0};
    m->env.seq = ++c->seq;
    int ok = fc_wire_encode(m, 0, &b, &err) == FC_OK && rawcl_write(c, b.data, b.len);
    fc_wire_msg_free(m);
    fc_buf_free(&b);
    return ok;
}

int rawcl_send_chunk(rawcl *c, uint32_t tensor_index, uint64_t offset, const void *data,
                     size_t len) {
    fc_buf b = FC_BUF_INIT;
    fc_error err = {0};
    int ok = fc_frame_encode_chunk(++c->seq, tensor_index, offset, data, len, 0, &b, &err) ==
                 FC_OK &&
             rawcl_write(c, b.data, b.len);
    fc_buf_free(&b);
    return ok;
}

fc_envelope *rawcl_recv(rawcl *c) {
    uint8_t pre[4];
    if (!rawcl_read_exact(c, pre, 4))
        return NULL;
    uint32_t n =
        ((uint32_t)pre[0] << 24) | ((uint32_t)pre[1] << 16) | ((uint32_t)pre[2] << 8) | pre[3];
    uint8_t *buf = malloc(n ? n : 1);
    fc_envelope *env = NULL;
    fc_error err = {0};
    if (buf && rawcl_read_exact(c, buf, n))
        fc_wire_decode(buf, n, &env, &err);
    free(buf);
    return env;
}

int rawcl_sees_close(rawcl *c) {
    fc_envelope *e = rawcl_recv(c);
    if (e) {
        fc_envelope_free(e);
        return 0;
    }
    return 1;
}
