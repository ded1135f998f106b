/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_MIGRATE_CONN_H
#define VMSNAP_MIGRATE_CONN_H

/*
 * The migration transport: one TCP connection, plain or TLS 1.3 with mutual certificate
 * verification (OpenSSL). The socket is non-blocking underneath; reads and writes wait in
 * poll() slices so that a cancel flag is honoured within 100 ms and a peer that stops moving
 * bytes for the stall timeout fails the call with -ETIMEDOUT. One thread uses a connection
 * at a time. Errors come back as -errno with a one-line message in the caller's buffer
 * (nothing is logged here).
 */

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mig_tls_opts {
	const char *cert; /* this side's certificate (PEM) */
	const char *key;  /* its private key (PEM) */
	const char *ca;	  /* CA bundle (PEM) the peer's certificate must chain to */
};

/** True when any TLS option is set (all three are then required). */
bool mig_tls_wanted(const struct mig_tls_opts *t);

struct mig_conn;

/**
 * Connect to @hostport ("HOST:PORT", "[v6]:PORT") and, with @tls, run the TLS handshake
 * (the peer's certificate must chain to tls->ca and name HOST). @cancel (may be NULL) aborts.
 * Returns 0 and *@out, or -errno with @err set.
 */
int mig_conn_connect(const char *hostport, const struct mig_tls_opts *tls,
		     const atomic_bool *cancel, int timeout_ms, struct mig_conn **out, char *err,
		     size_t errlen);

/** Listen on @addrport ("ADDR:PORT"; port 0 picks one, see mig_listen_port). */
int mig_listen(const char *addrport, int *fd, char *err, size_t errlen);
/** The port a listening socket is bound to. */
int mig_listen_port(int fd);

/**
 * Accept one connection on @lfd (waiting up to @timeout_ms, < 0 forever) and, with @tls,
 * run the TLS handshake (client certificate required). A plaintext peer on a TLS listener or a
 * TLS peer on a plain one is refused here with a message that says so.
 */
int mig_conn_accept(int lfd, const struct mig_tls_opts *tls, int timeout_ms,
		    struct mig_conn **out, char *err, size_t errlen);

/** Write / read exactly @len bytes. -EPIPE: the peer closed; -ECANCELED; -ETIMEDOUT. */
int mig_conn_write(struct mig_conn *c, const void *buf, size_t len);
int mig_conn_read(struct mig_conn *c, void *buf, size_t len);
/** A read callback for mig_reader (arg = the connection). */
int mig_conn_read_cb(void *arg, void *buf, size_t len);

/** Set the cancel flag and stall timeout (ms) used from now on. */
void mig_conn_set_cancel(struct mig_conn *c, const atomic_bool *cancel, int stall_ms);

/** The last error message of this connection ("" if none). */
const char *mig_conn_error(const struct mig_conn *c);
/** "TLS 1.3 (TLS_AES_256_GCM_SHA384)" or "plain TCP". */
const char *mig_conn_describe(const struct mig_conn *c);
/** The peer's address, "127.0.0.1:4567". */
const char *mig_conn_peer(const struct mig_conn *c);
uint64_t mig_conn_bytes_out(const struct mig_conn *c);
/** Peek: true when the peer has closed or sent bytes (non-blocking). */
bool mig_conn_readable(struct mig_conn *c);

/** Close (TLS close_notify best effort) and free. NULL is fine. */
void mig_conn_close(struct mig_conn *c);

#endif
