/* tls.c: server SSL_CTX setup, peer CN extraction and the OpenSSL error mapping.
 *
 * Owns OpenSSL configuration only; it never reads or writes a socket and never logs key
 * material (file names only).
 */
#include "server/tls.h"

#include <string.h>

#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "core/alloc.h"
#include "core/ssl_error.h"

fc_status net_tls_error(fc_error *err, fc_status code, const SSL *ssl, const char *what) {
    return fc_ssl_error(err, code, ssl, what);
}

fc_status net_tls_ctx_new(const net_tls_config *cfg, SSL_CTX **out, fc_error *err) {
    *out = NULL;
    ERR_clear_error();
    if (!cfg->cert_file || !cfg->cert_file[0])
        return fc_error_set(err, FC_ERR_CONFIG, "tls: certificate file is not set");
    if (!cfg->key_file || !cfg->key_file[0])
        return fc_error_set(err, FC_ERR_CONFIG, "tls: key file is not set");
    if (cfg->mtls != NET_MTLS_OFF && (!cfg->ca_file || !cfg->ca_file[0]))
        return fc_error_set(err, FC_ERR_CONFIG,
                            "tls: mutual TLS is enabled but no CA file is set");
    int min;
    switch (cfg->min_version) {
    case NET_TLS_DEFAULT:
    case NET_TLS_1_3:
        min = TLS1_3_VERSION;
        break;
    case NET_TLS_1_2:
        min = TLS1_2_VERSION;
        break;
    default:
        return fc_error_set(err, FC_ERR_CONFIG, "tls: unknown minimum version %d",
                            (int)cfg->min_version);
    }

    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        return net_tls_error(err, FC_ERR_NOMEM, NULL, "tls: SSL_CTX_new");
    fc_status st = FC_ERR_CONFIG;
    if (SSL_CTX_set_min_proto_version(ctx, min) != 1) {
        net_tls_error(err, FC_ERR_CONFIG, NULL, "tls: setting the minimum version");
        goto fail;
    }
    /* No resumption: every connection authenticates fully, and TLS 1.3 sends no post-handshake
     * NewSessionTicket messages. No renegotiation (TLS 1.2). Idle connections drop buffers. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_set_num_tickets(ctx, 0) != 1) {
        net_tls_error(err, FC_ERR_CONFIG, NULL, "tls: disabling session tickets");
        goto fail;
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);

    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->cert_file) != 1) {
        fc_error tmp = {0};
        net_tls_error(&tmp, FC_ERR_CONFIG, NULL, "loading the certificate chain");
        fc_error_set(err, FC_ERR_CONFIG, "tls certificate %s: %s", cfg->cert_file, tmp.msg);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->key_file, SSL_FILETYPE_PEM) != 1) {
        fc_error tmp = {0};
        net_tls_error(&tmp, FC_ERR_CONFIG, NULL, "loading the private key");
        fc_error_set(err, FC_ERR_CONFIG, "tls key %s: %s", cfg->key_file, tmp.msg);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        fc_error tmp = {0};
        net_tls_error(&tmp, FC_ERR_CONFIG, NULL, "key does not match the certificate");
        fc_error_set(err, FC_ERR_CONFIG, "tls key %s and certificate %s: %s", cfg->key_file,
                     cfg->cert_file, tmp.msg);
        goto fail;
    }
    if (cfg->mtls != NET_MTLS_OFF) {
        if (SSL_CTX_load_verify_locations(ctx, cfg->ca_file, NULL) != 1) {
            fc_error tmp = {0};
            net_tls_error(&tmp, FC_ERR_CONFIG, NULL, "loading CA certificates");
            fc_error_set(err, FC_ERR_CONFIG, "tls CA file %s: %s", cfg->ca_file, tmp.msg);
            goto fail;
        }
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cfg->ca_file);
        if (!names) {
            fc_error tmp = {0};
            net_tls_error(&tmp, FC_ERR_CONFIG, NULL, "reading CA names");
            fc_error_set(err, FC_ERR_CONFIG, "tls CA file %s: %s", cfg->ca_file, tmp.msg);
            goto fail;
        }
        SSL_CTX_set_client_CA_list(ctx, names); /* takes ownership */
        int mode = SSL_VERIFY_PEER;
        if (cfg->mtls == NET_MTLS_REQUIRE)
            mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
        SSL_CTX_set_verify(ctx, mode, NULL);
        SSL_CTX_set_verify_depth(ctx, 4);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    *out = ctx;
    return FC_OK;
fail:
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return st;
}

fc_status net_tls_peer_cn(SSL *ssl, char **out, fc_error *err) {
    *out = NULL;
    X509 *cert = SSL_get0_peer_certificate(ssl);
    if (!cert || SSL_get_verify_result(ssl) != X509_V_OK)
        return FC_OK;
    X509_NAME *subject = X509_get_subject_name(cert);
    int idx = subject ? X509_NAME_get_index_by_NID(subject, NID_commonName, -1) : -1;
    if (idx < 0)
        return fc_error_set(err, FC_ERR_AUTH, "client certificate subject has no CN");
    X509_NAME_ENTRY *entry = X509_NAME_get_entry(subject, idx);
    ASN1_STRING *data = entry ? X509_NAME_ENTRY_get_data(entry) : NULL;
    unsigned char *utf8 = NULL;
    int len = data ? ASN1_STRING_to_UTF8(&utf8, data) : -1;
    if (len < 0) {
        ERR_clear_error();
        return fc_error_set(err, FC_ERR_AUTH, "client certificate CN is not valid text");
    }
    fc_status st = FC_OK;
    if (len == 0 || len > 256) {
        st = fc_error_set(err, FC_ERR_AUTH, "client certificate CN has length %d (1..256)", len);
        goto done;
    }
    for (int i = 0; i < len; i++) {
        if (utf8[i] < 0x20 || utf8[i] == 0x7f) {
            st = fc_error_set(err, FC_ERR_AUTH,
                              "client certificate CN contains a control character at %d", i);
            goto done;
        }
    }
    *out = fc_strndup((const char *)utf8, (size_t)len);
    if (!*out)
        st = fc_error_set(err, FC_ERR_NOMEM, "copying the client certificate CN");
done:
    OPENSSL_free(utf8);
    return st;
}
