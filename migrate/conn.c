/* SPDX-License-Identifier: MIT */
/* The migration transport: TCP, optionally TLS 1.3 with mutual verification (migrate/conn.h). */
#include "migrate/conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "migrate/stream.h"

#define SLICE_MS 100
#define DEFAULT_STALL_MS 30000

struct mig_conn {
	int fd;
	SSL_CTX *ctx;
	SSL *ssl;
	const atomic_bool *cancel;
	int stall_ms;
	uint64_t bytes_out;
	char peer[80];
	char desc[96];
	char err[512];
};

#define ERR(...) (snprintf(err, errlen, __VA_ARGS__))

bool mig_tls_wanted(const struct mig_tls_opts *t)
{
	return t && (t->cert || t->key || t->ca);
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The queued OpenSSL errors as one line. */
static void ssl_errors(char *buf, size_t size)
{
	unsigned long e;
	size_t off = 0;
	buf[0] = 0;
	while ((e = ERR_get_error()) != 0) {
		char one[200];
		ERR_error_string_n(e, one, sizeof(one));
		/* "error:0A000086:SSL routines::certificate verify failed": keep the reason. */
		const char *reason = strrchr(one, ':');
		reason = reason ? reason + 1 : one;
		if (off < size)
			off += (size_t)snprintf(buf + off, size - off, "%s%s", off ? "; " : "",
						reason);
	}
	if (!buf[0])
		snprintf(buf, size, "unknown TLS error");
}

static int parse_hostport(const char *s, char *host, size_t hsize, char *port, size_t psize)
{
	const char *colon;
	if (s[0] == '[') {
		const char *end = strchr(s, ']');
		if (!end || end[1] != ':')
			return -EINVAL;
		if ((size_t)(end - s - 1) >= hsize)
			return -EINVAL;
		memcpy(host, s + 1, (size_t)(end - s - 1));
		host[end - s - 1] = 0;
		colon = end + 1;
	} else {
		colon = strrchr(s, ':');
		if (!colon || (size_t)(colon - s) >= hsize)
			return -EINVAL;
		memcpy(host, s, (size_t)(colon - s));
		host[colon - s] = 0;
	}
	if (!colon[1] || strlen(colon + 1) >= psize || strspn(colon + 1, "0123456789") !=
								 strlen(colon + 1))
		return -EINVAL;
	snprintf(port, psize, "%s", colon + 1);
	return 0;
}

static void describe_addr(const struct sockaddr *sa, char *buf, size_t size)
{
	char h[INET6_ADDRSTRLEN] = "?";
	unsigned int port = 0;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)sa;
		inet_ntop(AF_INET, &in->sin_addr, h, sizeof(h));
		port = ntohs(in->sin_port);
		snprintf(buf, size, "%s:%u", h, port);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const void *)sa;
		inet_ntop(AF_INET6, &in6->sin6_addr, h, sizeof(h));
		port = ntohs(in6->sin6_port);
		snprintf(buf, size, "[%s]:%u", h, port);
	} else {
		snprintf(buf, size, "?");
	}
}

static struct mig_conn *conn_new(int fd)
{
	struct mig_conn *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->fd = fd;
	c->stall_ms = DEFAULT_STALL_MS;
	snprintf(c->desc, sizeof(c->desc), "plain TCP");
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	return c;
}

void mig_conn_set_cancel(struct mig_conn *c, const atomic_bool *cancel, int stall_ms)
{
	c->cancel = cancel;
	if (stall_ms > 0)
		c->stall_ms = stall_ms;
}

/* Wait for @events on the socket: 0, -ECANCELED, or -ETIMEDOUT after @limit_ms (< 0: stall). */
static int wait_fd(struct mig_conn *c, short events, int limit_ms)
{
	int64_t deadline = mono_ms() + (limit_ms >= 0 ? limit_ms : c->stall_ms);
	for (;;) {
		if (c->cancel && atomic_load(c->cancel)) {
			snprintf(c->err, sizeof(c->err), "cancelled");
			return -ECANCELED;
		}
		int64_t left = deadline - mono_ms();
		if (left <= 0) {
			snprintf(c->err, sizeof(c->err), "no progress for %d ms: peer stalled",
				 limit_ms >= 0 ? limit_ms : c->stall_ms);
			return -ETIMEDOUT;
		}
		struct pollfd p = { .fd = c->fd, .events = events };
		int n = poll(&p, 1, left < SLICE_MS ? (int)left : SLICE_MS);
		if (n < 0 && errno != EINTR) {
			int r = -errno;
			snprintf(c->err, sizeof(c->err), "poll: %s", strerror(errno));
			return r;
		}
		if (n > 0)
			return 0;
	}
}

/* Drive SSL_do_handshake to the end. */
static int tls_handshake(struct mig_conn *c, int timeout_ms)
{
	for (;;) {
		ERR_clear_error();
		int r = SSL_do_handshake(c->ssl);
		if (r == 1)
			break;
		int e = SSL_get_error(c->ssl, r);
		if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
			int w = wait_fd(c, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, timeout_ms);
			if (w)
				return w;
			continue;
		}
		char why[200];
		long vr = SSL_get_verify_result(c->ssl);
		if (vr != X509_V_OK)
			snprintf(why, sizeof(why), "peer certificate rejected: %s",
				 X509_verify_cert_error_string(vr));
		else if (e == SSL_ERROR_SYSCALL || e == SSL_ERROR_ZERO_RETURN)
			snprintf(why, sizeof(why), "the peer closed the connection");
		else
			ssl_errors(why, sizeof(why));
		snprintf(c->err, sizeof(c->err), "TLS handshake with %s failed: %s", c->peer, why);
		return -EPROTO;
	}
	snprintf(c->desc, sizeof(c->desc), "%s (%s)", SSL_get_version(c->ssl),
		 SSL_get_cipher_name(c->ssl));
	return 0;
}

static int tls_setup(struct mig_conn *c, const struct mig_tls_opts *t, bool server,
		     const char *host)
{
	if (!t->cert || !t->key || !t->ca) {
		snprintf(c->err, sizeof(c->err), "TLS needs --tls-cert, --tls-key and --tls-ca");
		return -EINVAL;
	}
	char why[200];
	c->ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
	if (!c->ctx)
		goto ssl_fail;
	SSL_CTX_set_min_proto_version(c->ctx, TLS1_3_VERSION);
	SSL_CTX_set_max_proto_version(c->ctx, TLS1_3_VERSION);
	if (SSL_CTX_use_certificate_chain_file(c->ctx, t->cert) != 1) {
		ssl_errors(why, sizeof(why));
		snprintf(c->err, sizeof(c->err), "cannot load TLS certificate '%s': %s", t->cert,
			 why);
		return -EINVAL;
	}
	if (SSL_CTX_use_PrivateKey_file(c->ctx, t->key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(c->ctx) != 1) {
		ssl_errors(why, sizeof(why));
		snprintf(c->err, sizeof(c->err), "cannot use TLS key '%s': %s", t->key, why);
		return -EINVAL;
	}
	if (SSL_CTX_load_verify_locations(c->ctx, t->ca, NULL) != 1) {
		ssl_errors(why, sizeof(why));
		snprintf(c->err, sizeof(c->err), "cannot load TLS CA '%s': %s", t->ca, why);
		return -EINVAL;
	}
	SSL_CTX_set_verify(c->ctx,
			   SSL_VERIFY_PEER | (server ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), NULL);
	SSL_CTX_set_mode(c->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	if (server)
		SSL_CTX_set_num_tickets(c->ctx, 0);
	c->ssl = SSL_new(c->ctx);
	if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1)
		goto ssl_fail;
	if (server) {
		SSL_set_accept_state(c->ssl);
	} else {
		SSL_set_connect_state(c->ssl);
		/* The server's certificate must name the host we dialled (DNS name or IP). */
		X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
		struct in6_addr a6;
		struct in_addr a4;
		if (inet_pton(AF_INET, host, &a4) == 1 || inet_pton(AF_INET6, host, &a6) == 1)
			X509_VERIFY_PARAM_set1_ip_asc(vp, host);
		else {
			X509_VERIFY_PARAM_set1_host(vp, host, 0);
			SSL_set_tlsext_host_name(c->ssl, host);
		}
	}
	return 0;
ssl_fail:
	ssl_errors(why, sizeof(why));
	snprintf(c->err, sizeof(c->err), "TLS setup failed: %s", why);
	return -EIO;
}

int mig_conn_connect(const char *hostport, const struct mig_tls_opts *tls,
		     const atomic_bool *cancel, int timeout_ms, struct mig_conn **out, char *err,
		     size_t errlen)
{
	char host[256], port[16];
	if (parse_hostport(hostport, host, sizeof(host), port, sizeof(port))) {
		ERR("'%s' is not HOST:PORT", hostport);
		return -EINVAL;
	}
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC }, *ai;
	int g = getaddrinfo(host, port, &hints, &ai);
	if (g) {
		ERR("cannot resolve '%s': %s", host, gai_strerror(g));
		return -EHOSTUNREACH;
	}
	int r = -ECONNREFUSED;
	struct mig_conn *c = NULL;
	char last[512] = "no address";
	for (struct addrinfo *a = ai; a && !c; a = a->ai_next) {
		int fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			continue;
		struct mig_conn *t = conn_new(fd);
		if (!t) {
			close(fd);
			r = -ENOMEM;
			break;
		}
		t->cancel = cancel;
		describe_addr(a->ai_addr, t->peer, sizeof(t->peer));
		if (connect(fd, a->ai_addr, a->ai_addrlen) < 0 && errno != EINPROGRESS) {
			r = -errno;
			snprintf(last, sizeof(last), "%s", strerror(errno));
			mig_conn_close(t);
			continue;
		}
		int w = wait_fd(t, POLLOUT, timeout_ms);
		int soerr = 0;
		socklen_t sl = sizeof(soerr);
		if (!w)
			getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
		if (w || soerr) {
			r = w ? w : -soerr;
			snprintf(last, sizeof(last), "%s", w ? t->err : strerror(soerr));
			mig_conn_close(t);
			continue;
		}
		c = t;
	}
	freeaddrinfo(ai);
	if (!c) {
		ERR("cannot connect to %s: %s", hostport, last);
		return r;
	}
	if (mig_tls_wanted(tls)) {
		r = tls_setup(c, tls, false, host);
		if (!r)
			r = tls_handshake(c, timeout_ms);
		if (r) {
			ERR("%s%s", c->err,
			    r == -EPROTO ? " (does the destination run receive with --tls-*?)" : "");
			mig_conn_close(c);
			return r;
		}
	}
	*out = c;
	return 0;
}

int mig_listen(const char *addrport, int *fdp, char *err, size_t errlen)
{
	char host[256], port[16];
	if (parse_hostport(addrport, host, sizeof(host), port, sizeof(port))) {
		ERR("'%s' is not ADDR:PORT", addrport);
		return -EINVAL;
	}
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *ai;
	int g = getaddrinfo(host[0] ? host : NULL, port, &hints, &ai);
	if (g) {
		ERR("cannot resolve '%s': %s", host, gai_strerror(g));
		return -EINVAL;
	}
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int one = 1, r = 0;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 4) < 0) {
		r = -errno;
		ERR("cannot listen on %s: %s", addrport, strerror(errno));
		if (fd >= 0)
			close(fd);
	} else {
		*fdp = fd;
	}
	freeaddrinfo(ai);
	return r;
}

int mig_listen_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
		return -errno;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

/* Tell a plaintext peer why it is refused, in its own protocol (best effort). */
static void send_plain_error(struct mig_conn *c, const char *msg)
{
	struct enc e;
	struct mig_reply rep = { .status = EPROTO };
	struct enc pe;
	enc_init(&e);
	enc_init(&pe);
	snprintf(rep.msg, sizeof(rep.msg), "%s", msg);
	mig_reply_encode(&pe, MIG_REC_ERROR, &rep);
	mig_put_record(&e, IMG_SEC_ID(MIG_REC_ERROR, 0), 1, IMG_SEC_REQUIRED, pe.buf, pe.len);
	if (!enc_error(&e) && !enc_error(&pe))
		(void)!send(c->fd, e.buf, e.len, MSG_NOSIGNAL | MSG_DONTWAIT);
	enc_free(&e);
	enc_free(&pe);
}

int mig_conn_accept(int lfd, const struct mig_tls_opts *tls, int timeout_ms,
		    struct mig_conn **out, char *err, size_t errlen)
{
	struct pollfd p = { .fd = lfd, .events = POLLIN };
	int n;
	do
		n = poll(&p, 1, timeout_ms);
	while (n < 0 && errno == EINTR);
	if (n == 0) {
		ERR("no source connected within %d s", timeout_ms / 1000);
		return -ETIMEDOUT;
	}
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	int fd = n < 0 ? -1 : accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC);
	if (fd < 0) {
		int r = -errno;
		ERR("accept: %s", strerror(errno));
		return r;
	}
	struct mig_conn *c = conn_new(fd);
	if (!c) {
		close(fd);
		return -ENOMEM;
	}
	describe_addr((struct sockaddr *)&ss, c->peer, sizeof(c->peer));

	/* Look at the first bytes: a TLS ClientHello starts with 0x16, our stream with "VMSN". */
	uint8_t first[4];
	ssize_t got = 0;
	int r = wait_fd(c, POLLIN, 10000);
	if (!r) {
		got = recv(fd, first, sizeof(first), MSG_PEEK);
		if (got <= 0)
			r = -EPIPE;
	}
	if (r) {
		ERR("%s: no data from the peer (%s)", c->peer, r == -EPIPE ? "closed" : c->err);
		mig_conn_close(c);
		return r;
	}
	bool is_tls = first[0] == 0x16;
	bool is_plain = got >= 4 && !memcmp(first, MIG_MAGIC, 4);
	if (mig_tls_wanted(tls) && !is_tls) {
		ERR("%s: refused: the peer speaks %s, this receiver requires TLS", c->peer,
		    is_plain ? "plaintext migration" : "something that is not TLS");
		if (is_plain)
			send_plain_error(c, "this receiver requires TLS: run migrate with "
					    "--tls-cert/--tls-key/--tls-ca");
		mig_conn_close(c);
		return -EPROTO;
	}
	if (!mig_tls_wanted(tls) && is_tls) {
		ERR("%s: refused: the peer started a TLS handshake, but this receiver runs without "
		    "--tls-cert/--tls-key/--tls-ca",
		    c->peer);
		mig_conn_close(c);
		return -EPROTO;
	}
	if (mig_tls_wanted(tls)) {
		r = tls_setup(c, tls, true, NULL);
		if (!r)
			r = tls_handshake(c, 10000);
		if (r) {
			ERR("%s", c->err);
			mig_conn_close(c);
			return r;
		}
	}
	*out = c;
	return 0;
}

/* Classify a failed SSL_read/SSL_write: the errno to return, message in c->err. */
static int ssl_io_error(struct mig_conn *c, int ret, bool reading)
{
	int e = SSL_get_error(c->ssl, ret);
	if (e == SSL_ERROR_ZERO_RETURN) {
		snprintf(c->err, sizeof(c->err), "the peer closed the TLS connection");
		return -EPIPE;
	}
	if (e == SSL_ERROR_SYSCALL) {
		int se = errno;
		snprintf(c->err, sizeof(c->err), "connection lost: %s",
			 se ? strerror(se) : "unexpected end of stream");
		return se == ETIMEDOUT ? -ETIMEDOUT : -EPIPE;
	}
	char why[200];
	ssl_errors(why, sizeof(why));
	snprintf(c->err, sizeof(c->err), "TLS %s failed: %s", reading ? "read" : "write", why);
	/* OpenSSL 3 reports a bare TCP close as "unexpected eof while reading". */
	return strstr(why, "unexpected eof") ? -EPIPE : -EPROTO;
}

int mig_conn_write(struct mig_conn *c, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len) {
		if (c->cancel && atomic_load(c->cancel)) {
			snprintf(c->err, sizeof(c->err), "cancelled");
			return -ECANCELED;
		}
		size_t done = 0;
		short want = POLLOUT;
		if (c->ssl) {
			ERR_clear_error();
			int r = SSL_write_ex(c->ssl, p, len, &done);
			if (r <= 0) {
				int e = SSL_get_error(c->ssl, r);
				if (e != SSL_ERROR_WANT_WRITE && e != SSL_ERROR_WANT_READ)
					return ssl_io_error(c, r, false);
				want = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
				done = 0;
			}
		} else {
			ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
			if (n < 0) {
				if (errno == EINTR)
					continue;
				if (errno != EAGAIN) {
					int r = errno == ECONNRESET || errno == EPIPE ? -EPIPE : -errno;
					snprintf(c->err, sizeof(c->err), "connection lost: %s",
						 strerror(errno));
					return r;
				}
			} else {
				done = (size_t)n;
			}
		}
		if (done) {
			p += done;
			len -= done;
			c->bytes_out += done;
			continue;
		}
		int w = wait_fd(c, want, -1);
		if (w)
			return w;
	}
	return 0;
}

int mig_conn_read(struct mig_conn *c, void *buf, size_t len)
{
	uint8_t *p = buf;
	while (len) {
		size_t done = 0;
		short want = POLLIN;
		if (c->ssl) {
			ERR_clear_error();
			int r = SSL_read_ex(c->ssl, p, len, &done);
			if (r <= 0) {
				int e = SSL_get_error(c->ssl, r);
				if (e != SSL_ERROR_WANT_WRITE && e != SSL_ERROR_WANT_READ)
					return ssl_io_error(c, r, true);
				want = e == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN;
				done = 0;
			}
		} else {
			ssize_t n = recv(c->fd, p, len, 0);
			if (n == 0) {
				snprintf(c->err, sizeof(c->err), "the peer closed the connection");
				return -EPIPE;
			}
			if (n < 0) {
				if (errno == EINTR)
					continue;
				if (errno != EAGAIN) {
					int r = errno == ECONNRESET ? -EPIPE : -errno;
					snprintf(c->err, sizeof(c->err), "connection lost: %s",
						 strerror(errno));
					return r;
				}
			} else {
				done = (size_t)n;
			}
		}
		if (done) {
			p += done;
			len -= done;
			continue;
		}
		int w = wait_fd(c, want, -1);
		if (w)
			return w;
	}
	return 0;
}

int mig_conn_read_cb(void *arg, void *buf, size_t len)
{
	return mig_conn_read(arg, buf, len);
}

bool mig_conn_readable(struct mig_conn *c)
{
	if (c->ssl && SSL_pending(c->ssl) > 0)
		return true;
	struct pollfd p = { .fd = c->fd, .events = POLLIN };
	return poll(&p, 1, 0) > 0;
}

const char *mig_conn_error(const struct mig_conn *c)
{
	return c->err;
}

const char *mig_conn_describe(const struct mig_conn *c)
{
	return c->desc;
}

const char *mig_conn_peer(const struct mig_conn *c)
{
	return c->peer;
}

uint64_t mig_conn_bytes_out(const struct mig_conn *c)
{
	return c->bytes_out;
}

void mig_conn_close(struct mig_conn *c)
{
	if (!c)
		return;
	if (c->ssl) {
		SSL_shutdown(c->ssl); /* non-blocking: best effort close_notify */
		SSL_free(c->ssl);
	}
	if (c->ctx)
		SSL_CTX_free(c->ctx);
	if (c->fd >= 0)
		close(c->fd);
	free(c);
}
