/* dashboard.h: the operators' dashboard page (server/dashboard.html), compiled into the binary.
 *
 * The bytes are generated at build time from server/dashboard.html into
 * build/gen/dashboard_html.c (Makefile). Nothing here reads the filesystem; server/api.c serves
 * the page at GET / with its Content-Security-Policy.
 */
#ifndef FC_SERVER_DASHBOARD_H
#define FC_SERVER_DASHBOARD_H

#include <stddef.h>

/* The page, byte for byte as in server/dashboard.html (not NUL-terminated). */
extern const unsigned char fc_dashboard_html[];
extern const size_t fc_dashboard_html_len;

#endif
