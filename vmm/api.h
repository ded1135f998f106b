/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_VMM_API_H
#define VMSNAP_VMM_API_H

/*
 * The control socket: a Unix stream socket speaking one JSON object per line in each
 * direction (protocol in docs/CONTROL.md). The server runs one thread with a poll loop,
 * serves up to API_MAX_CLIENTS clients, and dispatches each request line through tables of
 * commands that the VM core (and later snapshot/ and migrate/) register. Handlers run on the
 * server thread, one at a time; whatever a client sends, the worst it gets is an error reply
 * or a closed connection.
 */

#include <stdbool.h>
#include <stddef.h>

#include "util/json.h"

#define API_PROTO_VERSION 1	  /* "v" of every reply; requests may carry "v":1 */
#define API_MAX_LINE 4096	  /* request bytes, without the newline */
#define API_MAX_REPLY (64 * 1024) /* reply bytes, without the newline */
#define API_MAX_CLIENTS 16
#define API_MAX_TABLES 16	  /* api_create() + api_add_commands() tables */

/** Positive handler return value: reply, then stop serving (see api_command). */
#define API_STOP 1

/**
 * A command handler. @req is the whole request object ("cmd", "v", "id" and the arguments;
 * read them with json_get_*()). On success, write the reply's fields with jw_key()/jw_kv_*()
 * into @reply (the server has opened the reply object and written "v", "ok" and "id"; do not
 * write those keys, and close every container you open) and return 0, or API_STOP to have
 * the server send this reply, close every connection, remove the socket and end its thread
 * (for `quit`; api_stop() must still be called to free the server). On failure return
 * -errno, optionally with a message in @err (@errlen bytes, starts empty; default
 * strerror); anything written into @reply is discarded.
 * Runs on the server thread: it must not block for long and must do its own locking against
 * the VM's threads. It must not call api_stop() (deadlock); api_event() is fine.
 */
typedef int (*api_handler_fn)(void *opaque, const struct json_value *req, struct jw *reply,
			      char *err, size_t errlen);

/**
 * One command of a table. Tables are arrays terminated by an entry with name == NULL; they
 * and their strings must outlive the server (normally static const).
 */
struct api_command {
	const char *name;	  /* "status", "pause", ... */
	api_handler_fn fn;
	const char *help;	  /* one line for the `help` command */
	const char *const *args;  /* NULL-terminated accepted argument names; NULL: none.
				     Any other member besides cmd/v/id is refused. */
};

struct api_server;

/**
 * Create a server with the commands of @table (handlers get @opaque) without a socket or a
 * thread: api_handle_line() works on it (tests, fuzzing); api_listen() starts serving.
 * Returns 0 or -errno (-EEXIST when @table repeats a name or uses a built-in one: "help",
 * "subscribe").
 */
int api_create(const struct api_command *table, void *opaque, struct api_server **out);

/**
 * Add another table of commands (with its own @opaque), e.g. from snapshot/ or migrate/.
 * Thread-safe, also while serving. Returns 0, -EEXIST (a name already exists; nothing is
 * added) or -ENOSPC (more than API_MAX_TABLES tables).
 */
int api_add_commands(struct api_server *srv, const struct api_command *table, void *opaque);

/**
 * Bind @path (refusing to take over a live socket: -EADDRINUSE when a connect() to an
 * existing socket at @path succeeds; a stale socket file is replaced; -EEXIST if @path
 * exists and is not a socket; -ENAMETOOLONG if it does not fit sun_path), make it mode 0600,
 * and start the server thread (all signals blocked in it). Returns 0 or -errno.
 */
int api_listen(struct api_server *srv, const char *path);

/** api_create() + api_listen(); on failure nothing is left behind. */
int api_start(const char *path, const struct api_command *table, void *opaque,
	      struct api_server **out);

/**
 * Stop the thread (replies already produced are flushed best-effort), close every client and
 * the socket, unlink the socket file if it is still ours, and free @srv. NULL is a no-op.
 * Must not be called from a handler.
 */
void api_stop(struct api_server *srv);

/**
 * Handle one request line (@len bytes, without the newline) against @srv's commands and
 * write the complete reply object (one line, without newline) into @reply. This is what the
 * server does for every line; exposed for tests and fuzzing. Returns 0 when a reply (success
 * or error) was written, API_STOP when the handler asked to stop, or -ENOMEM/-E2BIG when not
 * even an error reply could be written. Calls to it must not run concurrently with each other
 * for the same handlers unless those handlers allow it.
 */
int api_handle_line(struct api_server *srv, const char *line, size_t len, struct jw *reply);

/**
 * Send an asynchronous event line {"v":1,"event":@name, ...members of @fields} to every
 * client that sent `subscribe`. @fields is NULL or a finished writer holding one object.
 * Thread-safe, never blocks: the line is queued for the server thread (callers must be done
 * with api_event() before api_stop() frees @srv). Returns 0, -EINVAL
 * (bad @fields), -ENOTCONN (not serving) or -ENOBUFS (queue full; the event is dropped).
 * A subscriber that does not read its events is disconnected rather than slowing the VM.
 */
int api_event(struct api_server *srv, const char *name, const struct jw *fields);

/**
 * From a handler (on the server thread only; elsewhere a no-op): hand the queued event lines
 * to the subscribed clients and write what their sockets take now, without blocking. Lets a
 * long-running handler (snapshot save) stream progress events before its reply.
 */
void api_flush_events(struct api_server *srv);

/**
 * Client side (for `vmsnap ctl`): connect to @path, send @request_line (one JSON object; a
 * trailing newline is optional, any other newline is refused with -EINVAL), and read one
 * reply line into @reply (NUL-terminated, newline removed). @timeout_ms bounds the whole
 * exchange (< 0: no limit). Returns 0, -ETIMEDOUT, -EMSGSIZE (request longer than
 * API_MAX_LINE or reply longer than @replylen - 1), -EPROTO (connection closed before a
 * full reply line), or the -errno of socket()/connect() (-ENOENT: no socket there,
 * -ECONNREFUSED: stale socket, -EACCES). Whether the reply has "ok":true is the caller's to
 * check.
 */
int api_request(const char *path, const char *request_line, char *reply, size_t replylen,
		int timeout_ms);

#endif
