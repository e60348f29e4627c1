/* conn.h: the SDK's internals shared by the client/ sources (not installed, not exported).
 *
 * conn.c owns one blocking-style TLS connection on a non-blocking socket driven with poll():
 * address parsing, connect with a timeout, the TLS 1.3 handshake with certificate and host name
 * verification, framed sends and receives with deadlines, heartbeats while waiting, the
 * Hello/Welcome exchange, and reconnection with exponential backoff and jitter. It never
 * interprets tasks, models or uploads (client.c does) and never allocates outside core/alloc.h.
 */
#ifndef FC_CLIENT_CONN_H
#define FC_CLIENT_CONN_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "core/buf.h"
#include "core/status.h"
#include "core/tensor.h"
#include "proto/frame.h"
#include "proto/stream.h"
#include "proto/wire.h"

#include "fedcoord/client.h"

#define CONN_IN_CAP ((size_t)64 * 1024)

struct fc_client {
    /* configuration (owned copies) */
    char *host, *port, *verify_name, *ca_file, *cert_file, *key_file, *token, *client_name;
    uint32_t connect_timeout_ms, io_timeout_ms, backoff_base_ms, backoff_max_ms;
    int max_attempts;
    uint64_t max_model_bytes;
    SSL_CTX *ctx;

    /* connection */
    int fd;
    SSL *ssl;
    int connected;
    int lost;     /* the last failure was a broken transport: reconnecting may help */
    int finished; /* the server said Bye or the client was closed: no more reconnects */
    uint64_t seq_out;
    fc_frame_decoder dec;
    uint8_t *in;
    size_t in_pos, in_len;
    fc_buf out;
    uint64_t last_send_ms, last_recv_ms;
    uint64_t wait_from_ms; /* start of the current conn_recv */

    /* session */
    uint8_t resume_token[FC_WIRE_MAX_TOKEN];
    size_t resume_len;
    char session_id[FC_WIRE_MAX_SHORT_STRING + 1];
    uint32_t heartbeat_ms, max_frame, max_chunk;
    int server_resume;
    uint64_t connects; /* successful sessions established (1 after open) */

    fc_envelope *pending_task; /* a Task that arrived while another exchange was running */
    struct fc_task *initial;   /* fc_client_set_initial_model's copy, as a round-0 task */
    const void **initial_data; /* its tensors' data pointers, for the upload code */
    uint8_t initial_sha[FC_SHA256_BYTES];
    uint64_t rng;
    uint8_t *scratch; /* FC_STREAM_MAX_CHUNK bytes, for delta computation */
    fc_error err;
};

/* What conn_recv produced: either an unpacked Envelope (env, owned by the caller) or a chunk
 * seen in place (chunk.data valid until the next conn_* call). */
typedef struct conn_msg {
    fc_envelope *env;
    int is_chunk;
    fc_chunk_view chunk;
} conn_msg;

uint64_t conn_now_ms(void);
void conn_sleep_ms(uint64_t ms);

/* Copies and checks the configuration, builds the SSL_CTX. FC_ERR_INVALID / FC_ERR_CONFIG. */
fc_status conn_configure(fc_client *c, const fc_client_config *cfg);
/* One attempt: TCP connect, TLS handshake, Hello, Welcome. Sets c->lost on a transport failure
 * that a later attempt could overcome. */
fc_status conn_establish(fc_client *c);
/* Attempts conn_establish with backoff until it works, fails for good, or the attempts are used
 * up (FC_ERR_CLOSED). first=1 counts the initial connection as attempt 0. */
fc_status conn_reconnect(fc_client *c);
/* Closes the socket and TLS session without a Bye. */
void conn_drop(fc_client *c);
/* Encodes and sends m (then frees it). On failure the connection is dropped and c->lost set. */
fc_status conn_send(fc_client *c, fc_wire_msg *m);
/* Sends one chunk frame. */
fc_status conn_send_chunk(fc_client *c, uint32_t tensor_index, uint64_t offset, const void *data,
                          size_t len);
/* Waits for the next frame until deadline_ms (absolute, conn_now_ms clock; 0 = no deadline),
 * sending heartbeats while idle and skipping the server's heartbeats. FC_ERR_TIMEOUT at the
 * deadline (connection kept). Connection failures drop the connection and set c->lost. */
fc_status conn_recv(fc_client *c, uint64_t deadline_ms, conn_msg *out);
/* Turns a received Error frame into c->err; returns the mapped status. Fatal errors drop the
 * connection. */
fc_status conn_server_error(fc_client *c, const Fedcoord__V1__Error *e);
/* Closes the connection after a protocol violation by the server: detail in c->err already. */
fc_status conn_violation(fc_client *c, fc_status st);

#endif
