/* SPDX-License-Identifier: MIT */
#include "vmm/api.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "util/log.h"

#define API_OUT_HIGH (64 * 1024)   /* stop reading a client's requests above this backlog */
#define API_OUT_MAX (1024 * 1024)  /* drop a client whose unsent output exceeds this */
#define API_MAX_EVENTS 256	   /* queued, not yet distributed event lines */
#define API_REQ_MAX_NODES 1024	   /* JSON values in one request */
#define API_ERR_LEN 256

struct api_table {
	const struct api_command *cmds;
	void *opaque;
};

struct api_client {
	int fd; /* -1: free slot */
	bool eof;	 /* peer shut down its sending side */
	bool discarding; /* inside an oversized line, dropping bytes up to its newline */
	bool subscribed; /* receives event lines */
	bool dead;	 /* close at the next opportunity */
	size_t inlen;
	char in[API_MAX_LINE + 1]; /* one full line plus its newline */
	char *out;
	size_t outoff, outlen, outcap; /* unsent bytes are out[outoff, outlen) */
};

struct api_server {
	pthread_mutex_t lock; /* tables, event queue */
	struct api_table tables[API_MAX_TABLES];
	unsigned int ntables;
	char *events[API_MAX_EVENTS];
	unsigned int nevents;

	int listen_fd;
	int wake_fd; /* eventfd: api_stop() and api_event() wake the poll loop */
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	dev_t sock_dev; /* identity of the socket file we created, so we only unlink ours */
	ino_t sock_ino;
	bool sock_bound;
	bool thread_running;
	pthread_t thread;
	atomic_bool stop;      /* api_stop() asked the thread to end */
	bool stop_after_reply; /* a handler returned API_STOP (server thread only) */

	struct jw reply; /* server thread's reply buffer */
	struct api_client clients[API_MAX_CLIENTS];
};

/* The client whose line the server thread is handling (NULL for direct api_handle_line()). */
static __thread struct api_client *cur_client;

/* ------------------------------------------------------------------------------------------ */
/* Built-in commands                                                                            */

static int cmd_help(void *opaque, const struct json_value *req, struct jw *reply, char *err,
		    size_t errlen);
static int cmd_subscribe(void *opaque, const struct json_value *req, struct jw *reply, char *err,
			 size_t errlen);

static const struct api_command builtin_cmds[] = {
	{ "help", cmd_help, "list the commands", NULL },
	{ "subscribe", cmd_subscribe, "receive asynchronous event lines on this connection", NULL },
	{ NULL, NULL, NULL, NULL },
};

static const struct api_command *find_cmd_locked(struct api_server *srv, const char *name,
						 void **opaque)
{
	for (const struct api_command *c = builtin_cmds; c->name; c++)
		if (!strcmp(c->name, name)) {
			*opaque = srv;
			return c;
		}
	for (unsigned int t = 0; t < srv->ntables; t++)
		for (const struct api_command *c = srv->tables[t].cmds; c->name; c++)
			if (!strcmp(c->name, name)) {
				*opaque = srv->tables[t].opaque;
				return c;
			}
	return NULL;
}

static void help_entry(struct jw *w, const struct api_command *c)
{
	jw_obj_begin(w);
	jw_kv_str(w, "name", c->name);
	jw_kv_str(w, "help", c->help ? c->help : "");
	jw_key(w, "args");
	jw_arr_begin(w);
	for (const char *const *a = c->args; a && *a; a++)
		jw_str(w, *a);
	jw_arr_end(w);
	jw_obj_end(w);
}

static int cmd_help(void *opaque, const struct json_value *req, struct jw *reply, char *err,
		    size_t errlen)
{
	struct api_server *srv = opaque;

	(void)req;
	(void)err;
	(void)errlen;
	jw_key(reply, "commands");
	jw_arr_begin(reply);
	for (const struct api_command *c = builtin_cmds; c->name; c++)
		help_entry(reply, c);
	pthread_mutex_lock(&srv->lock);
	for (unsigned int t = 0; t < srv->ntables; t++)
		for (const struct api_command *c = srv->tables[t].cmds; c->name; c++)
			help_entry(reply, c);
	pthread_mutex_unlock(&srv->lock);
	jw_arr_end(reply);
	return 0;
}

static int cmd_subscribe(void *opaque, const struct json_value *req, struct jw *reply, char *err,
			 size_t errlen)
{
	(void)opaque;
	(void)req;
	(void)reply;
	if (!cur_client) {
		snprintf(err, errlen, "events need a socket connection");
		return -ENOTCONN;
	}
	cur_client->subscribed = true;
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Server setup                                                                                 */

/* Check @table against itself, the built-ins and the registered tables. Lock held. */
static int check_table_locked(struct api_server *srv, const struct api_command *table)
{
	for (const struct api_command *c = table; c->name; c++) {
		void *unused;
		if (!c->fn || find_cmd_locked(srv, c->name, &unused)) {
			log_err("api: command '%s' %s", c->name,
				c->fn ? "is already registered" : "has no handler");
			return c->fn ? -EEXIST : -EINVAL;
		}
		for (const struct api_command *d = table; d != c; d++)
			if (!strcmp(d->name, c->name)) {
				log_err("api: command '%s' appears twice in a table", c->name);
				return -EEXIST;
			}
	}
	return 0;
}

int api_add_commands(struct api_server *srv, const struct api_command *table, void *opaque)
{
	int r;

	if (!table)
		return -EINVAL;
	pthread_mutex_lock(&srv->lock);
	r = check_table_locked(srv, table);
	if (!r && srv->ntables >= API_MAX_TABLES)
		r = -ENOSPC;
	if (!r)
		srv->tables[srv->ntables++] = (struct api_table){ table, opaque };
	pthread_mutex_unlock(&srv->lock);
	return r;
}

int api_create(const struct api_command *table, void *opaque, struct api_server **out)
{
	struct api_server *srv = calloc(1, sizeof(*srv));
	int r;

	if (!srv)
		return -ENOMEM;
	pthread_mutex_init(&srv->lock, NULL);
	srv->listen_fd = -1;
	srv->wake_fd = -1;
	atomic_init(&srv->stop, false);
	jw_init(&srv->reply, API_MAX_REPLY);
	for (unsigned int i = 0; i < API_MAX_CLIENTS; i++)
		srv->clients[i].fd = -1;
	if (table) {
		r = api_add_commands(srv, table, opaque);
		if (r) {
			api_stop(srv);
			return r;
		}
	}
	*out = srv;
	return 0;
}

int api_start(const char *path, const struct api_command *table, void *opaque,
	      struct api_server **out)
{
	struct api_server *srv;
	int r = api_create(table, opaque, &srv);

	if (r)
		return r;
	r = api_listen(srv, path);
	if (r) {
		api_stop(srv);
		return r;
	}
	*out = srv;
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Request handling                                                                             */

static void write_error(struct jw *w, const struct json_value *id, const char *msg)
{
	jw_reset(w);
	jw_obj_begin(w);
	jw_kv_u64(w, "v", API_PROTO_VERSION);
	jw_kv_bool(w, "ok", false);
	if (id) {
		jw_key(w, "id");
		jw_value(w, id);
	}
	jw_kv_str(w, "error", msg);
	jw_obj_end(w);
}

int api_handle_line(struct api_server *srv, const char *line, size_t len, struct jw *w)
{
	static const struct json_limits lim = {
		.max_depth = JSON_DEFAULT_MAX_DEPTH,
		.max_nodes = API_REQ_MAX_NODES,
		.max_size = API_MAX_LINE,
	};
	struct json_doc doc = { 0 };
	struct json_error jerr;
	const struct json_value *root, *id = NULL, *v;
	const struct api_command *cmd;
	api_handler_fn fn;
	void *opaque;
	const char *name, *bad;
	char err[API_ERR_LEN] = "";
	int r;

	r = json_parse(&doc, line, len, &lim, &jerr);
	if (r) {
		snprintf(err, sizeof(err), "bad request: %s", jerr.msg);
		goto fail;
	}
	root = doc.root;
	if (root->type != JSON_OBJECT) {
		snprintf(err, sizeof(err), "bad request: not a JSON object");
		goto fail;
	}
	id = json_get(root, "id");
	if (id && id->type != JSON_STRING && id->type != JSON_NUMBER) {
		id = NULL;
		snprintf(err, sizeof(err), "bad request: \"id\" must be a string or a number");
		goto fail;
	}
	v = json_get(root, "v");
	if (v) {
		uint64_t ver;
		if (json_as_u64(v, &ver) || ver != API_PROTO_VERSION) {
			snprintf(err, sizeof(err), "unsupported protocol version (this server speaks %d)",
				 API_PROTO_VERSION);
			goto fail;
		}
	}
	r = json_get_string(root, "cmd", &name);
	if (r) {
		snprintf(err, sizeof(err), "bad request: %s",
			 r == -ENOENT ? "no \"cmd\"" : "\"cmd\" must be a string");
		goto fail;
	}

	pthread_mutex_lock(&srv->lock);
	cmd = find_cmd_locked(srv, name, &opaque);
	fn = cmd ? cmd->fn : NULL;
	pthread_mutex_unlock(&srv->lock);
	if (!cmd) {
		snprintf(err, sizeof(err), "unknown command '%.64s' (try 'help')", name);
		goto fail;
	}
	/* Arguments: anything but cmd/v/id must be listed by the command. */
	bad = NULL;
	for (const struct json_value *m = root->u.list.first; m && !bad; m = m->next) {
		bool ok = m->key_len == strlen(m->key) &&
			  (!strcmp(m->key, "cmd") || !strcmp(m->key, "v") || !strcmp(m->key, "id"));
		for (const char *const *a = cmd->args; !ok && a && *a; a++)
			ok = m->key_len == strlen(*a) && !strcmp(m->key, *a);
		if (!ok)
			bad = m->key;
	}
	if (bad) {
		snprintf(err, sizeof(err), "unknown argument '%.64s' for '%s'", bad, cmd->name);
		goto fail;
	}

	jw_reset(w);
	jw_obj_begin(w);
	jw_kv_u64(w, "v", API_PROTO_VERSION);
	jw_kv_bool(w, "ok", true);
	if (id) {
		jw_key(w, "id");
		jw_value(w, id);
	}
	r = fn(opaque, root, w, err, sizeof(err));
	err[sizeof(err) - 1] = '\0';
	if (r < 0) {
		if (!err[0])
			snprintf(err, sizeof(err), "%s", strerror(-r));
		goto fail;
	}
	jw_obj_end(w);
	if (jw_error(w)) {
		log_err("api: command '%s' wrote %s", cmd->name,
			jw_error(w) == -E2BIG ? "a reply that is too large" : "a malformed reply");
		snprintf(err, sizeof(err), "internal error: %s",
			 jw_error(w) == -E2BIG ? "reply too large" : "malformed reply");
		r = 0;
		goto fail;
	}
	json_doc_free(&doc);
	return r == API_STOP ? API_STOP : 0;

fail:
	write_error(w, id, err);
	json_doc_free(&doc);
	r = jw_error(w);
	return r;
}

/* ------------------------------------------------------------------------------------------ */
/* Connections (server thread only)                                                             */

static size_t out_pending(const struct api_client *c)
{
	return c->outlen - c->outoff;
}

/* Queue bytes for a client; a client that lets API_OUT_MAX pile up is dropped. */
static void client_queue(struct api_client *c, const char *data, size_t n)
{
	if (c->dead)
		return;
	if (out_pending(c) + n > API_OUT_MAX) {
		log_ratelimited(LOG_WARN, "api: dropping a client that does not read its replies");
		c->dead = true;
		return;
	}
	if (c->outoff && c->outoff == c->outlen)
		c->outoff = c->outlen = 0;
	if (c->outlen + n > c->outcap) {
		if (c->outoff) { /* compact before growing */
			memmove(c->out, c->out + c->outoff, out_pending(c));
			c->outlen -= c->outoff;
			c->outoff = 0;
		}
		size_t cap = c->outcap ? c->outcap : 4096;
		while (cap < c->outlen + n)
			cap *= 2;
		if (cap > c->outcap) {
			char *nb = realloc(c->out, cap);
			if (!nb) {
				c->dead = true;
				return;
			}
			c->out = nb;
			c->outcap = cap;
		}
	}
	memcpy(c->out + c->outlen, data, n);
	c->outlen += n;
}

static void client_flush(struct api_client *c)
{
	while (!c->dead && out_pending(c)) {
		ssize_t n = send(c->fd, c->out + c->outoff, out_pending(c),
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				c->dead = true; /* EPIPE, ECONNRESET: the peer is gone */
			return;
		}
		c->outoff += (size_t)n;
	}
	if (c->outoff == c->outlen)
		c->outoff = c->outlen = 0;
}

static void client_close(struct api_client *c)
{
	if (c->fd >= 0)
		close(c->fd);
	free(c->out);
	memset(c, 0, sizeof(*c));
	c->fd = -1;
}

static void client_reply_error(struct api_server *srv, struct api_client *c, const char *msg)
{
	write_error(&srv->reply, NULL, msg);
	if (!jw_error(&srv->reply)) {
		client_queue(c, jw_cstr(&srv->reply), jw_len(&srv->reply));
		client_queue(c, "\n", 1);
	}
}

static void client_line(struct api_server *srv, struct api_client *c, char *line, size_t len)
{
	/* Tolerate CRLF and blank lines (interactive use with socat/nc). */
	if (len && line[len - 1] == '\r')
		len--;
	size_t i = 0;
	while (i < len && (line[i] == ' ' || line[i] == '\t'))
		i++;
	if (i == len)
		return;

	cur_client = c;
	int r = api_handle_line(srv, line, len, &srv->reply);
	cur_client = NULL;
	if (r < 0) {
		client_reply_error(srv, c, "internal error: out of memory");
		return;
	}
	client_queue(c, jw_cstr(&srv->reply), jw_len(&srv->reply));
	client_queue(c, "\n", 1);
	if (r == API_STOP)
		srv->stop_after_reply = true;
}

/* Handle the complete lines buffered for @c, as far as its output backlog allows. */
static void client_process(struct api_server *srv, struct api_client *c)
{
	size_t start = 0;

	while (!c->dead && !srv->stop_after_reply && out_pending(c) < API_OUT_HIGH) {
		char *nl = memchr(c->in + start, '\n', c->inlen - start);
		if (!nl)
			break;
		size_t len = (size_t)(nl - (c->in + start));
		if (c->discarding)
			c->discarding = false; /* end of an oversized line */
		else
			client_line(srv, c, c->in + start, len);
		start += len + 1;
	}
	if (start) {
		memmove(c->in, c->in + start, c->inlen - start);
		c->inlen -= start;
	}
	if (c->inlen == sizeof(c->in) && !memchr(c->in, '\n', c->inlen)) {
		/* A full buffer without a newline: the line is too long. Say so once, then drop
		 * everything up to its newline; the connection stays usable after it. */
		if (!c->discarding) {
			char msg[64];
			snprintf(msg, sizeof(msg), "bad request: line longer than %d bytes",
				 API_MAX_LINE);
			client_reply_error(srv, c, msg);
			c->discarding = true;
		}
		c->inlen = 0;
	}
}

/*
 * Send what can be sent and handle the lines the backlog held back, until neither makes
 * progress; lines waiting in the buffer must never be left without a poll event to resume them.
 */
static void client_pump(struct api_server *srv, struct api_client *c)
{
	for (;;) {
		client_flush(c);
		if (c->dead || srv->stop_after_reply || out_pending(c) >= API_OUT_HIGH ||
		    !memchr(c->in, '\n', c->inlen))
			return;
		client_process(srv, c); /* handles at least one line */
	}
}

static bool client_wants_read(const struct api_client *c)
{
	return !c->eof && !c->dead && c->inlen < sizeof(c->in) && out_pending(c) < API_OUT_HIGH;
}

static void client_read(struct api_server *srv, struct api_client *c)
{
	ssize_t n = recv(c->fd, c->in + c->inlen, sizeof(c->in) - c->inlen, MSG_DONTWAIT);

	if (n < 0) {
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			c->dead = true;
		return;
	}
	if (n == 0) {
		c->eof = true; /* a partial last line is dropped */
		return;
	}
	c->inlen += (size_t)n;
	if (c->discarding) {
		/* Drop the oversized line's bytes up to its newline without scanning twice. */
		char *nl = memchr(c->in, '\n', c->inlen);
		size_t drop = nl ? (size_t)(nl - c->in) + 1 : c->inlen;
		memmove(c->in, c->in + drop, c->inlen - drop);
		c->inlen -= drop;
		if (nl)
			c->discarding = false;
	}
	client_process(srv, c);
}

static void accept_clients(struct api_server *srv)
{
	for (;;) {
		int fd = accept4(srv->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				log_ratelimited(LOG_WARN, "api: accept: %s", strerror(errno));
			return;
		}
		struct api_client *c = NULL;
		for (unsigned int i = 0; i < API_MAX_CLIENTS && !c; i++)
			if (srv->clients[i].fd < 0)
				c = &srv->clients[i];
		if (!c) {
			char line[96];
			int n = snprintf(line, sizeof(line),
					 "{\"v\":%d,\"ok\":false,\"error\":\"too many clients\"}\n",
					 API_PROTO_VERSION);
			ssize_t w = send(fd, line, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
			(void)w;
			close(fd);
			log_ratelimited(LOG_WARN, "api: refused a client: %d connected",
					API_MAX_CLIENTS);
			continue;
		}
		memset(c, 0, sizeof(*c));
		c->fd = fd;
		log_debug("api: client connected");
	}
}

/* Move queued event lines to the subscribed clients. */
static void distribute_events(struct api_server *srv)
{
	char *ev[API_MAX_EVENTS];
	unsigned int n;

	pthread_mutex_lock(&srv->lock);
	n = srv->nevents;
	memcpy(ev, srv->events, n * sizeof(ev[0]));
	srv->nevents = 0;
	pthread_mutex_unlock(&srv->lock);

	for (unsigned int i = 0; i < n; i++) {
		for (unsigned int k = 0; k < API_MAX_CLIENTS; k++) {
			struct api_client *c = &srv->clients[k];
			if (c->fd >= 0 && c->subscribed)
				client_queue(c, ev[i], strlen(ev[i]));
		}
		free(ev[i]);
	}
}

static void unlink_socket(struct api_server *srv);

static void *server_thread(void *arg)
{
	struct api_server *srv = arg;
	struct pollfd pfd[2 + API_MAX_CLIENTS];
	int idx[2 + API_MAX_CLIENTS];

	while (!atomic_load(&srv->stop) && !srv->stop_after_reply) {
		unsigned int n = 0;

		pfd[n++] = (struct pollfd){ .fd = srv->wake_fd, .events = POLLIN };
		pfd[n++] = (struct pollfd){ .fd = srv->listen_fd, .events = POLLIN };
		for (unsigned int i = 0; i < API_MAX_CLIENTS; i++) {
			struct api_client *c = &srv->clients[i];
			if (c->fd < 0)
				continue;
			short events = (short)((client_wants_read(c) ? POLLIN : 0) |
					       (out_pending(c) ? POLLOUT : 0));
			idx[n] = (int)i;
			pfd[n++] = (struct pollfd){ .fd = c->fd, .events = events };
		}
		if (poll(pfd, n, -1) < 0) {
			if (errno == EINTR)
				continue;
			log_errno("api: poll");
			break;
		}
		if (pfd[0].revents & POLLIN) {
			uint64_t v;
			ssize_t r = read(srv->wake_fd, &v, sizeof(v));
			(void)r;
			distribute_events(srv);
		}
		if (pfd[1].revents & POLLIN)
			accept_clients(srv);
		for (unsigned int p = 2; p < n; p++) {
			struct api_client *c = &srv->clients[idx[p]];
			short re = pfd[p].revents;

			if (re & POLLERR)
				c->dead = true;
			if ((re & (POLLIN | POLLHUP)) && client_wants_read(c))
				client_read(srv, c);
			else if ((re & POLLHUP) && !out_pending(c))
				c->dead = true;
			/* POLLOUT: written below, with the lines the backlog held back */
		}
		/* Send what this round produced right away; close finished connections. */
		for (unsigned int i = 0; i < API_MAX_CLIENTS; i++) {
			struct api_client *c = &srv->clients[i];
			if (c->fd < 0)
				continue;
			client_pump(srv, c);
			if (c->eof && !out_pending(c) && !memchr(c->in, '\n', c->inlen))
				c->dead = true;
			if (c->dead) {
				log_debug("api: client disconnected");
				client_close(c);
			}
		}
	}

	/* Last replies (e.g. to `quit`) go out best-effort before the connections close. */
	for (unsigned int i = 0; i < API_MAX_CLIENTS; i++) {
		struct api_client *c = &srv->clients[i];
		if (c->fd < 0)
			continue;
		client_flush(c);
		client_close(c);
	}
	if (srv->stop_after_reply) {
		/* Served our last request: let the next instance have the path right away. */
		unlink_socket(srv);
		close(srv->listen_fd);
		srv->listen_fd = -1;
	}
	return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Socket                                                                                       */

static int fill_addr(struct sockaddr_un *sa, const char *path)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (!path || !path[0])
		return -EINVAL;
	if (strlen(path) >= sizeof(sa->sun_path))
		return -ENAMETOOLONG;
	strcpy(sa->sun_path, path);
	return 0;
}

/* Bind @fd to @path, replacing a stale socket file but never a live socket. */
static int bind_path(int fd, const char *path, const struct sockaddr_un *sa)
{
	struct stat st;

	if (!bind(fd, (const struct sockaddr *)sa, sizeof(*sa)))
		return 0;
	if (errno != EADDRINUSE) {
		int e = -errno;
		log_errno("api: bind %s", path);
		return e;
	}
	if (lstat(path, &st) == 0 && !S_ISSOCK(st.st_mode)) {
		log_err("api: %s exists and is not a socket", path);
		return -EEXIST;
	}
	/* Someone listening there? A non-blocking probe also catches a full backlog (EAGAIN). */
	int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (probe < 0)
		return -errno;
	int r = connect(probe, (const struct sockaddr *)sa, sizeof(*sa));
	int e = errno;
	close(probe);
	if (r == 0 || e == EAGAIN || e == EINPROGRESS) {
		log_err("api: %s is in use by a running process", path);
		return -EADDRINUSE;
	}
	if (e != ECONNREFUSED && e != ENOENT) {
		log_err("api: probing %s: %s", path, strerror(e));
		return -e;
	}
	log_info("api: replacing stale socket %s", path);
	if (unlink(path) && errno != ENOENT) {
		e = -errno;
		log_errno("api: unlink %s", path);
		return e;
	}
	if (bind(fd, (const struct sockaddr *)sa, sizeof(*sa))) {
		e = -errno;
		log_errno("api: bind %s", path);
		return e;
	}
	return 0;
}

static void unlink_socket(struct api_server *srv)
{
	struct stat st;

	if (!srv->sock_bound)
		return;
	/* Only our socket: a later instance may have replaced a path we no longer own. */
	if (stat(srv->path, &st) == 0 && st.st_dev == srv->sock_dev && st.st_ino == srv->sock_ino)
		unlink(srv->path);
	srv->sock_bound = false;
}

int api_listen(struct api_server *srv, const char *path)
{
	struct sockaddr_un sa;
	struct stat st;
	sigset_t all, old;
	int fd, r;

	if (srv->thread_running || srv->listen_fd >= 0)
		return -EBUSY;
	r = fill_addr(&sa, path);
	if (r) {
		log_err("api: bad socket path '%s'", path ? path : "");
		return r;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	r = bind_path(fd, path, &sa);
	if (r) {
		close(fd);
		return r;
	}
	srv->listen_fd = fd;
	snprintf(srv->path, sizeof(srv->path), "%s", path);
	srv->sock_bound = true;
	/* Whoever can connect controls the VM: owner only. */
	if (chmod(path, 0600) || stat(path, &st)) {
		r = -errno;
		log_errno("api: %s", path);
		goto fail;
	}
	srv->sock_dev = st.st_dev;
	srv->sock_ino = st.st_ino;
	if (listen(fd, API_MAX_CLIENTS)) {
		r = -errno;
		log_errno("api: listen %s", path);
		goto fail;
	}
	srv->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (srv->wake_fd < 0) {
		r = -errno;
		log_errno("api: eventfd");
		goto fail;
	}
	/* The VM's signals (vCPU kicks, SIGINT) belong to other threads. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = -pthread_create(&srv->thread, NULL, server_thread, srv);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r) {
		log_err("api: cannot start thread: %s", strerror(-r));
		goto fail;
	}
	srv->thread_running = true;
	log_info("api: listening on %s", path);
	return 0;

fail:
	unlink_socket(srv);
	close(srv->listen_fd);
	srv->listen_fd = -1;
	if (srv->wake_fd >= 0)
		close(srv->wake_fd);
	srv->wake_fd = -1;
	return r;
}

void api_stop(struct api_server *srv)
{
	if (!srv)
		return;
	if (srv->thread_running) {
		uint64_t one = 1;
		atomic_store(&srv->stop, true);
		ssize_t w = write(srv->wake_fd, &one, sizeof(one));
		(void)w;
		pthread_join(srv->thread, NULL);
		srv->thread_running = false;
	}
	if (srv->listen_fd >= 0) {
		unlink_socket(srv);
		close(srv->listen_fd);
	}
	if (srv->wake_fd >= 0)
		close(srv->wake_fd);
	for (unsigned int i = 0; i < API_MAX_CLIENTS; i++)
		if (srv->clients[i].fd >= 0)
			client_close(&srv->clients[i]);
	for (unsigned int i = 0; i < srv->nevents; i++)
		free(srv->events[i]);
	jw_free(&srv->reply);
	pthread_mutex_destroy(&srv->lock);
	free(srv);
}

/* ------------------------------------------------------------------------------------------ */
/* Events                                                                                       */

int api_event(struct api_server *srv, const char *name, const struct jw *fields)
{
	struct jw w;
	char *line;
	int r = 0;

	if (!name || (fields && (jw_error(fields) || jw_cstr(fields)[0] != '{')))
		return -EINVAL;
	if (!srv->thread_running)
		return -ENOTCONN;
	jw_init(&w, API_MAX_REPLY);
	jw_obj_begin(&w);
	jw_kv_u64(&w, "v", API_PROTO_VERSION);
	jw_kv_str(&w, "event", name);
	jw_obj_end(&w);
	r = jw_error(&w);
	if (r)
		goto out;
	/* Splice @fields' members in before our closing brace: {"v":1,"event":"x"} + {"a":1} */
	size_t flen = fields ? jw_len(fields) : 0;
	size_t len = jw_len(&w) - 1 + (flen > 2 ? flen - 1 : 0) + 2;
	line = malloc(len + 1);
	if (!line) {
		r = -ENOMEM;
		goto out;
	}
	size_t n = jw_len(&w) - 1;
	memcpy(line, jw_cstr(&w), n);
	if (flen > 2) {
		line[n++] = ',';
		memcpy(line + n, jw_cstr(fields) + 1, flen - 2);
		n += flen - 2;
	}
	memcpy(line + n, "}\n", 3);

	pthread_mutex_lock(&srv->lock);
	if (srv->nevents < API_MAX_EVENTS) {
		srv->events[srv->nevents++] = line;
		line = NULL;
	} else {
		r = -ENOBUFS;
	}
	pthread_mutex_unlock(&srv->lock);
	if (line) {
		free(line);
		log_ratelimited(LOG_WARN, "api: event queue full, dropped '%s'", name);
		goto out;
	}
	uint64_t one = 1;
	ssize_t wr = write(srv->wake_fd, &one, sizeof(one));
	(void)wr;
out:
	jw_free(&w);
	return r;
}

void api_flush_events(struct api_server *srv)
{
	if (!srv || !srv->thread_running || !pthread_equal(pthread_self(), srv->thread))
		return;
	distribute_events(srv);
	for (unsigned int k = 0; k < API_MAX_CLIENTS; k++) {
		struct api_client *c = &srv->clients[k];
		if (c->fd >= 0 && !c->dead)
			client_flush(c);
	}
}

/* ------------------------------------------------------------------------------------------ */
/* Client                                                                                       */

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Milliseconds left before @deadline (-1: none), 0 when passed. */
static int remaining_ms(int64_t deadline)
{
	if (deadline < 0)
		return -1;
	int64_t left = deadline - now_ms();
	return left <= 0 ? 0 : left > INT32_MAX ? INT32_MAX : (int)left;
}

static int wait_fd(int fd, short events, int64_t deadline)
{
	for (;;) {
		struct pollfd p = { .fd = fd, .events = events };
		int left = remaining_ms(deadline);
		if (left == 0)
			return -ETIMEDOUT;
		int r = poll(&p, 1, left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
		return 0;
	}
}

int api_request(const char *path, const char *request_line, char *reply, size_t replylen,
		int timeout_ms)
{
	struct sockaddr_un sa;
	int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
	size_t reqlen, sent = 0, got = 0;
	int fd, r;

	if (!request_line || !reply || !replylen)
		return -EINVAL;
	reply[0] = '\0';
	reqlen = strlen(request_line);
	if (reqlen && request_line[reqlen - 1] == '\n')
		reqlen--;
	if (memchr(request_line, '\n', reqlen))
		return -EINVAL;
	if (reqlen > API_MAX_LINE)
		return -EMSGSIZE;
	r = fill_addr(&sa, path);
	if (r)
		return r;

	char *req = malloc(reqlen + 1);
	if (!req)
		return -ENOMEM;
	memcpy(req, request_line, reqlen);
	req[reqlen] = '\n';

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		r = -errno;
		goto out;
	}
	/* A Unix-socket connect either completes or fails with EAGAIN (backlog full): retry. */
	while (connect(fd, (const struct sockaddr *)&sa, sizeof(sa))) {
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN) {
			r = -errno;
			goto out;
		}
		if (remaining_ms(deadline) == 0) {
			r = -ETIMEDOUT;
			goto out;
		}
		usleep(10000);
	}
	while (sent < reqlen + 1) {
		ssize_t n = send(fd, req + sent, reqlen + 1 - sent, MSG_NOSIGNAL);
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			r = wait_fd(fd, POLLOUT, deadline);
			if (r)
				goto out;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EPIPE || errno == ECONNRESET))
			break; /* refused (too many clients)? its error line may be waiting */
		if (n < 0) {
			r = -errno;
			goto out;
		}
		sent += (size_t)n;
	}
	for (;;) {
		if (got == replylen - 1) {
			r = -EMSGSIZE;
			goto out;
		}
		ssize_t n = recv(fd, reply + got, replylen - 1 - got, 0);
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			r = wait_fd(fd, POLLIN, deadline);
			if (r)
				goto out;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = -errno;
			goto out;
		}
		if (n == 0) {
			r = -EPROTO;
			goto out;
		}
		char *nl = memchr(reply + got, '\n', (size_t)n);
		got += (size_t)n;
		if (nl) {
			*nl = '\0';
			r = 0;
			goto out;
		}
	}
out:
	if (r)
		reply[got < replylen ? got : replylen - 1] = '\0';
	if (fd >= 0)
		close(fd);
	free(req);
	return r;
}
