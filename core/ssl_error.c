/* ssl_error.c: OpenSSL error queue -> fc_error. */
#include "core/ssl_error.h"

#include <stdio.h>

#include <openssl/err.h>
#include <openssl/x509.h>

fc_status fc_ssl_error(fc_error *err, fc_status code, const SSL *ssl, const char *what) {
    char reasons[FC_ERROR_MSG_MAX];
    size_t used = 0;
    reasons[0] = '\0';
    unsigned long e;
    while ((e = ERR_get_error()) != 0) {
        char one[256];
        ERR_error_string_n(e, one, sizeof one);
        int n = snprintf(reasons + used, sizeof reasons - used, "%s%s", used ? "; " : "", one);
        if (n < 0 || (size_t)n >= sizeof reasons - used)
            used = sizeof reasons - 1; /* full: keep draining, drop the rest */
        else
            used += (size_t)n;
    }
    long verify = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    if (verify != X509_V_OK)
        return fc_error_set(err, code, "%s: certificate verification failed: %s%s%s%s", what,
                            X509_verify_cert_error_string(verify), used ? " (" : "",
                            used ? reasons : "", used ? ")" : "");
    return fc_error_set(err, code, "%s: %s", what, used ? reasons : "no OpenSSL error detail");
}
