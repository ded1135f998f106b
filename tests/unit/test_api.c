/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "util/json.h"
#include "util/log.h"
#include "vmm/api.h"

/* ------------------------------------------------------------------------------------------ */
/* A fake VM core: the command table the real one would register.                              */

struct fake_vm {
	bool paused;
	unsigned int calls;
};

static int fake_status(void *opaque, const struct json_value *req, struct jw *reply, char *err,
		       size_t errlen)
{
	struct fake_vm *vm = opaque;
	(void)req, (void)err, (void)errlen;
	vm->calls++;
	jw_kv_str(reply, "state", vm->paused ? "paused" : "running");
	jw_kv_u64(reply, "vcpus", 2);
	jw_kv_u64(reply, "mem_bytes", 268435456);
	return 0;
}

static int fake_pause(void *opaque, const struct json_value *req, struct jw *reply, char *err,
		      size_t errlen)
{
	struct fake_vm *vm = opaque;
	(void)req, (void)reply;
	if (vm->paused) {
		snprintf(err, errlen, "already paused");
		return -EALREADY;
	}
	vm->paused = true;
	return 0;
}

static int fake_fail(void *opaque, const struct json_value *req, struct jw *reply, char *err,
		     size_t errlen)
{
	(void)opaque, (void)req, (void)err, (void)errlen;
	jw_kv_str(reply, "half", "written"); /* must not leak into the error reply */
	return -EIO;
}

static int fake_echo(void *opaque, const struct json_value *req, struct jw *reply, char *err,
		     size_t errlen)
{
	const char *text;
	uint64_t n = 1;
	(void)opaque;
	if (json_get_string(req, "text", &text)) {
		snprintf(err, errlen, "\"text\" must be a string");
		return -EINVAL;
	}
	int r = json_get_u64(req, "n", &n);
	if (r && r != -ENOENT) {
		snprintf(err, errlen, "\"n\" must be an unsigned integer");
		return -EINVAL;
	}
	jw_kv_str(reply, "text", text);
	jw_kv_u64(reply, "n", n);
	return 0;
}

static int fake_big(void *opaque, const struct json_value *req, struct jw *reply, char *err,
		    size_t errlen)
{
	(void)opaque, (void)req, (void)err, (void)errlen;
	char *s = malloc(API_MAX_REPLY);
	memset(s, 'x', API_MAX_REPLY - 1);
	s[API_MAX_REPLY - 1] = '\0';
	jw_kv_str(reply, "big", s);
	free(s);
	return 0;
}

static int fake_broken(void *opaque, const struct json_value *req, struct jw *reply, char *err,
		       size_t errlen)
{
	(void)opaque, (void)req, (void)err, (void)errlen;
	jw_key(reply, "open");
	jw_arr_begin(reply); /* never closed */
	return 0;
}

static int fake_slow(void *opaque, const struct json_value *req, struct jw *reply, char *err,
		     size_t errlen)
{
	(void)opaque, (void)req, (void)reply, (void)err, (void)errlen;
	usleep(400 * 1000);
	return 0;
}

static int fake_quit(void *opaque, const struct json_value *req, struct jw *reply, char *err,
		     size_t errlen)
{
	(void)opaque, (void)req, (void)reply, (void)err, (void)errlen;
	return API_STOP;
}

static const char *const echo_args[] = { "text", "n", NULL };

static const struct api_command fake_cmds[] = {
	{ "status", fake_status, "VM state", NULL },
	{ "pause", fake_pause, "pause the VM", NULL },
	{ "fail", fake_fail, "always fails", NULL },
	{ "echo", fake_echo, "echo text", echo_args },
	{ "big", fake_big, "reply too large", NULL },
	{ "broken", fake_broken, "malformed reply", NULL },
	{ "slow", fake_slow, "takes 400 ms", NULL },
	{ "quit", fake_quit, "stop serving", NULL },
	{ NULL, NULL, NULL, NULL },
};

/* ------------------------------------------------------------------------------------------ */
/* Helpers                                                                                      */

struct fixture {
	char dir[64];
	char path[128];
	struct fake_vm vm;
	struct api_server *srv;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "/tmp/vmsnap-test-api-XXXXXX");
	if (!mkdtemp(f->dir))
		return -1;
	snprintf(f->path, sizeof(f->path), "%s/ctl.sock", f->dir);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	api_stop(f->srv);
	unlink(f->path);
	rmdir(f->dir);
	free(f);
	return 0;
}

static struct fixture *start(void **state)
{
	struct fixture *f = *state;
	assert_int_equal(api_start(f->path, fake_cmds, &f->vm, &f->srv), 0);
	return f;
}

static struct sockaddr_un unix_addr(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	assert_true(strlen(path) < sizeof(sa.sun_path));
	memcpy(sa.sun_path, path, strlen(path) + 1);
	return sa;
}

static int conn(const char *path)
{
	struct sockaddr_un sa = unix_addr(path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return fd;
}

static void send_buf(int fd, const char *s, size_t n)
{
	size_t off = 0;
	while (off < n) {
		ssize_t w = send(fd, s + off, n - off, MSG_NOSIGNAL);
		assert_true(w > 0);
		off += (size_t)w;
	}
}

static void send_str(int fd, const char *s)
{
	send_buf(fd, s, strlen(s));
}

/* One line (newline removed) within @ms; returns its length, -1 on EOF, -2 on timeout. */
static int read_line_ms(int fd, char *buf, size_t len, int ms)
{
	size_t n = 0;
	while (n + 1 < len) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, ms) <= 0)
			return -2;
		ssize_t r = recv(fd, buf + n, 1, 0);
		if (r <= 0)
			return -1;
		if (buf[n] == '\n') {
			buf[n] = '\0';
			return (int)n;
		}
		n++;
	}
	buf[n] = '\0';
	return (int)n;
}

static void expect_reply(int fd, const char *want)
{
	char buf[8192];
	int n = read_line_ms(fd, buf, sizeof(buf), 5000);
	if (n < 0)
		fail_msg("no reply (%d), wanted %s", n, want);
	assert_string_equal(buf, want);
}

static void expect_eof(int fd)
{
	char buf[256];
	assert_int_equal(read_line_ms(fd, buf, sizeof(buf), 5000), -1);
}

#define STATUS_RUNNING                                                                             \
	"{\"v\":1,\"ok\":true,\"state\":\"running\",\"vcpus\":2,\"mem_bytes\":268435456}"

/* ------------------------------------------------------------------------------------------ */
/* Dispatch without sockets                                                                     */

static void expect_line(struct api_server *srv, const char *line, const char *want)
{
	struct jw w;
	jw_init(&w, API_MAX_REPLY);
	assert_int_equal(api_handle_line(srv, line, strlen(line), &w), 0);
	assert_string_equal(jw_cstr(&w), want);
	/* every reply is one line of valid JSON */
	struct json_doc doc;
	assert_null(strchr(jw_cstr(&w), '\n'));
	assert_int_equal(json_parse(&doc, jw_cstr(&w), jw_len(&w), NULL, NULL), 0);
	json_doc_free(&doc);
	jw_free(&w);
}

static void test_dispatch(void **state)
{
	struct fixture *f = *state;
	struct api_server *srv;

	assert_int_equal(api_create(fake_cmds, &f->vm, &srv), 0);
	expect_line(srv, "{\"cmd\":\"status\"}", STATUS_RUNNING);
	expect_line(srv, " {\"v\":1, \"cmd\":\"status\"} ", STATUS_RUNNING);
	expect_line(srv, "{\"cmd\":\"status\",\"id\":7}",
		    "{\"v\":1,\"ok\":true,\"id\":7,\"state\":\"running\",\"vcpus\":2,"
		    "\"mem_bytes\":268435456}");
	expect_line(srv, "{\"cmd\":\"nope\",\"id\":\"a\"}",
		    "{\"v\":1,\"ok\":false,\"id\":\"a\",\"error\":\"unknown command 'nope' (try "
		    "'help')\"}");
	expect_line(srv, "{\"cmd\":\"status\",\"v\":2}",
		    "{\"v\":1,\"ok\":false,\"error\":\"unsupported protocol version (this server "
		    "speaks 1)\"}");
	expect_line(srv, "{\"cmd\":\"status\",\"v\":1.0}",
		    "{\"v\":1,\"ok\":false,\"error\":\"unsupported protocol version (this server "
		    "speaks 1)\"}");
	expect_line(srv, "garbage",
		    "{\"v\":1,\"ok\":false,\"error\":\"bad request: json: unexpected 'g' at offset "
		    "0\"}");
	expect_line(srv, "",
		    "{\"v\":1,\"ok\":false,\"error\":\"bad request: json: unexpected end of input "
		    "at offset 0\"}");
	expect_line(srv, "[\"status\"]",
		    "{\"v\":1,\"ok\":false,\"error\":\"bad request: not a JSON object\"}");
	expect_line(srv, "{}", "{\"v\":1,\"ok\":false,\"error\":\"bad request: no \\\"cmd\\\"\"}");
	expect_line(srv, "{\"cmd\":1}",
		    "{\"v\":1,\"ok\":false,\"error\":\"bad request: \\\"cmd\\\" must be a "
		    "string\"}");
	expect_line(srv, "{\"cmd\":\"stat\\u0000us\"}",
		    "{\"v\":1,\"ok\":false,\"error\":\"bad request: \\\"cmd\\\" must be a "
		    "string\"}");
	expect_line(srv, "{\"cmd\":\"status\",\"id\":{}}",
		    "{\"v\":1,\"ok\":false,\"error\":\"bad request: \\\"id\\\" must be a string or "
		    "a number\"}");
	expect_line(srv, "{\"cmd\":\"status\",\"cmd\":\"pause\"}",
		    "{\"v\":1,\"ok\":false,\"error\":\"bad request: json: duplicate key "
		    "\\\"cmd\\\" at offset 16\"}");
	expect_line(srv, "{\"cmd\":\"status\",\"x\":1}",
		    "{\"v\":1,\"ok\":false,\"error\":\"unknown argument 'x' for 'status'\"}");
	expect_line(srv, "{\"cmd\":\"echo\",\"text\":\"a\\\"b\",\"n\":3,\"id\":1.5}",
		    "{\"v\":1,\"ok\":true,\"id\":1.5,\"text\":\"a\\\"b\",\"n\":3}");
	expect_line(srv, "{\"cmd\":\"echo\",\"text\":\"a\",\"m\":3}",
		    "{\"v\":1,\"ok\":false,\"error\":\"unknown argument 'm' for 'echo'\"}");
	expect_line(srv, "{\"cmd\":\"echo\",\"text\":true}",
		    "{\"v\":1,\"ok\":false,\"error\":\"\\\"text\\\" must be a string\"}");
	expect_line(srv, "{\"cmd\":\"fail\"}",
		    "{\"v\":1,\"ok\":false,\"error\":\"Input/output error\"}");
	expect_line(srv, "{\"cmd\":\"pause\"}", "{\"v\":1,\"ok\":true}");
	assert_true(f->vm.paused);
	expect_line(srv, "{\"cmd\":\"pause\"}",
		    "{\"v\":1,\"ok\":false,\"error\":\"already paused\"}");
	expect_line(srv, "{\"cmd\":\"big\"}",
		    "{\"v\":1,\"ok\":false,\"error\":\"internal error: reply too large\"}");
	expect_line(srv, "{\"cmd\":\"broken\"}",
		    "{\"v\":1,\"ok\":false,\"error\":\"internal error: malformed reply\"}");
	expect_line(srv, "{\"cmd\":\"subscribe\"}",
		    "{\"v\":1,\"ok\":false,\"error\":\"events need a socket connection\"}");

	/* a long unknown name is cut in the message */
	char line[256];
	snprintf(line, sizeof(line), "{\"cmd\":\"%0100d\"}", 0);
	struct jw w;
	jw_init(&w, 0);
	assert_int_equal(api_handle_line(srv, line, strlen(line), &w), 0);
	assert_true(jw_len(&w) < 150);

	/* quit asks the caller to stop after the reply */
	assert_int_equal(api_handle_line(srv, "{\"cmd\":\"quit\"}", 14, &w), API_STOP);
	assert_string_equal(jw_cstr(&w), "{\"v\":1,\"ok\":true}");

	/* help lists built-ins and registered commands with their arguments */
	const char *h = "{\"cmd\":\"help\"}";
	assert_int_equal(api_handle_line(srv, h, strlen(h), &w), 0);
	struct json_doc doc;
	assert_int_equal(json_parse(&doc, jw_cstr(&w), jw_len(&w), NULL, NULL), 0);
	const struct json_value *cmds = json_get(doc.root, "commands");
	assert_non_null(cmds);
	assert_int_equal(cmds->u.list.count, 2 + 8);
	const char *name;
	assert_int_equal(json_get_string(json_array_at(cmds, 0), "name", &name), 0);
	assert_string_equal(name, "help");
	const struct json_value *echo = json_array_at(cmds, 5);
	assert_int_equal(json_get_string(echo, "name", &name), 0);
	assert_string_equal(name, "echo");
	assert_int_equal(json_get(echo, "args")->u.list.count, 2);
	json_doc_free(&doc);
	jw_free(&w);
	api_stop(srv);
}

static int extra_hello(void *opaque, const struct json_value *req, struct jw *reply, char *err,
		       size_t errlen)
{
	(void)req, (void)err, (void)errlen;
	jw_kv_str(reply, "hello", opaque);
	return 0;
}

static void test_tables(void **state)
{
	struct api_server *srv;
	static const struct api_command dup[] = {
		{ "a", fake_quit, "", NULL }, { "a", fake_quit, "", NULL }, { NULL, NULL, NULL, NULL },
	};
	static const struct api_command builtin[] = {
		{ "help", fake_quit, "", NULL }, { NULL, NULL, NULL, NULL },
	};
	static const struct api_command nofn[] = {
		{ "x", NULL, "", NULL }, { NULL, NULL, NULL, NULL },
	};
	static const struct api_command extra[] = {
		{ "hello", extra_hello, "from another module", NULL }, { NULL, NULL, NULL, NULL },
	};
	(void)state;

	assert_int_equal(api_create(dup, NULL, &srv), -EEXIST);
	assert_int_equal(api_create(builtin, NULL, &srv), -EEXIST);
	assert_int_equal(api_create(nofn, NULL, &srv), -EINVAL);

	assert_int_equal(api_create(fake_cmds, NULL, &srv), 0);
	assert_int_equal(api_add_commands(srv, fake_cmds, NULL), -EEXIST);
	assert_int_equal(api_add_commands(srv, extra, "world"), 0);
	expect_line(srv, "{\"cmd\":\"hello\"}", "{\"v\":1,\"ok\":true,\"hello\":\"world\"}");
	api_stop(srv);

	assert_int_equal(api_create(NULL, NULL, &srv), 0);
	for (unsigned int i = 1; i < API_MAX_TABLES; i++)
		assert_int_equal(api_add_commands(srv, nofn + 1, NULL), 0); /* empty table */
	assert_int_equal(api_add_commands(srv, extra, NULL), 0);
	assert_int_equal(api_add_commands(srv, nofn + 1, NULL), -ENOSPC);
	api_stop(srv);
	api_stop(NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* Over the socket                                                                              */

static void test_socket_basic(void **state)
{
	struct fixture *f = start(state);
	struct stat st;
	int fd = conn(f->path);

	assert_int_equal(stat(f->path, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0600);

	send_str(fd, "{\"cmd\":\"status\"}\n");
	expect_reply(fd, STATUS_RUNNING);
	send_str(fd, "{\"cmd\":\"frobnicate\"}\n");
	expect_reply(fd, "{\"v\":1,\"ok\":false,\"error\":\"unknown command 'frobnicate' (try "
			 "'help')\"}");
	send_str(fd, "}{ garbage\n");
	expect_reply(fd, "{\"v\":1,\"ok\":false,\"error\":\"bad request: json: unexpected '}' at "
			 "offset 0\"}");
	send_buf(fd, "\xff\xfe\x00\x01\n", 5); /* binary, with a NUL */
	expect_reply(fd, "{\"v\":1,\"ok\":false,\"error\":\"bad request: json: unexpected byte "
			 "0xff at offset 0\"}");

	/* blank lines are ignored, CRLF is accepted, pipelined lines are answered in order */
	send_str(fd, "\n  \r\n{\"cmd\":\"status\",\"id\":1}\r\n{\"cmd\":\"pause\",\"id\":2}\n"
		     "{\"cmd\":\"status\",\"id\":3}\n");
	expect_reply(fd, "{\"v\":1,\"ok\":true,\"id\":1,\"state\":\"running\",\"vcpus\":2,"
			 "\"mem_bytes\":268435456}");
	expect_reply(fd, "{\"v\":1,\"ok\":true,\"id\":2}");
	expect_reply(fd, "{\"v\":1,\"ok\":true,\"id\":3,\"state\":\"paused\",\"vcpus\":2,"
			 "\"mem_bytes\":268435456}");

	/* a line arriving in pieces */
	send_str(fd, "{\"cmd\":");
	usleep(20000);
	send_str(fd, "\"sta");
	usleep(20000);
	send_str(fd, "tus\", \"id\":\"p\"}");
	usleep(20000);
	send_str(fd, "\n");
	expect_reply(fd, "{\"v\":1,\"ok\":true,\"id\":\"p\",\"state\":\"paused\",\"vcpus\":2,"
			 "\"mem_bytes\":268435456}");

	/* a half-closed client still gets its replies, then the server closes */
	send_str(fd, "{\"cmd\":\"help\"}\n{\"cmd\":\"status\"}\n{\"cmd\":\"stat");
	shutdown(fd, SHUT_WR);
	char buf[8192];
	assert_true(read_line_ms(fd, buf, sizeof(buf), 5000) > 0);
	assert_non_null(strstr(buf, "\"commands\":["));
	expect_reply(fd, "{\"v\":1,\"ok\":true,\"state\":\"paused\",\"vcpus\":2,"
			 "\"mem_bytes\":268435456}");
	expect_eof(fd); /* the unfinished last line is dropped */
	close(fd);
}

#define TOO_LONG "{\"v\":1,\"ok\":false,\"error\":\"bad request: line longer than 4096 bytes\"}"

static void test_oversized_lines(void **state)
{
	struct fixture *f = start(state);
	int fd = conn(f->path);
	size_t big = 100 * 1024;
	char *junk = malloc(big + 1);

	/* 100 KB without a newline: one error reply, the rest is discarded up to the newline */
	memset(junk, 'x', big);
	junk[big] = '\0';
	send_str(fd, junk);
	expect_reply(fd, TOO_LONG);
	send_str(fd, junk);
	send_str(fd, "\n{\"cmd\":\"status\"}\n");
	expect_reply(fd, STATUS_RUNNING);

	/* exactly API_MAX_LINE bytes is fine; one more is not */
	char *line = malloc(API_MAX_LINE + 3);
	memset(line, ' ', API_MAX_LINE + 1);
	memcpy(line, "{\"cmd\":\"status\"}", 16);
	line[API_MAX_LINE] = '\n';
	line[API_MAX_LINE + 1] = '\0';
	send_str(fd, line);
	expect_reply(fd, STATUS_RUNNING);
	line[API_MAX_LINE] = ' ';
	line[API_MAX_LINE + 1] = '\n';
	line[API_MAX_LINE + 2] = '\0';
	send_str(fd, line);
	expect_reply(fd, TOO_LONG);
	/* the oversized line and the next one in a single write */
	memset(junk, 'y', 5000);
	memcpy(junk + 5000, "\n{\"cmd\":\"status\"}\n", 19);
	send_str(fd, junk);
	expect_reply(fd, TOO_LONG);
	expect_reply(fd, STATUS_RUNNING);
	close(fd);
	free(line);
	free(junk);
}

static void test_many_clients(void **state)
{
	struct fixture *f = start(state);
	int fds[API_MAX_CLIENTS];
	char buf[256];

	for (int i = 0; i < API_MAX_CLIENTS; i++)
		fds[i] = conn(f->path);
	for (int i = 0; i < API_MAX_CLIENTS; i++)
		send_str(fds[i], "{\"cmd\":\"status\"}\n");
	for (int i = API_MAX_CLIENTS - 1; i >= 0; i--)
		expect_reply(fds[i], STATUS_RUNNING);

	/* one too many: told so and closed */
	int extra = conn(f->path);
	expect_reply(extra, "{\"v\":1,\"ok\":false,\"error\":\"too many clients\"}");
	expect_eof(extra);
	close(extra);

	/* a freed slot is reused */
	close(fds[0]);
	bool ok = false;
	for (int tries = 0; tries < 100 && !ok; tries++) {
		usleep(10000);
		extra = conn(f->path);
		send_str(extra, "{\"cmd\":\"status\"}\n");
		ok = read_line_ms(extra, buf, sizeof(buf), 5000) > 0 &&
		     !strcmp(buf, STATUS_RUNNING);
		close(extra);
	}
	assert_true(ok);
	for (int i = 1; i < API_MAX_CLIENTS; i++)
		close(fds[i]);
}

static void test_hostile_clients(void **state)
{
	struct fixture *f = start(state);

	/* disconnect in the middle of a line */
	int a = conn(f->path);
	send_str(a, "{\"cmd\":\"sta");
	close(a);

	/* reset with unread replies pending */
	a = conn(f->path);
	send_str(a, "{\"cmd\":\"help\"}\n{\"cmd\":\"help\"}\n");
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	setsockopt(a, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(a);

	/* a flood of requests from a client that never reads its replies */
	int flood = conn(f->path);
	fcntl(flood, F_SETFL, O_NONBLOCK);
	const char *req = "{\"cmd\":\"help\"}\n{\"cmd\":\"status\"}\n";
	size_t sent = 0;
	for (int i = 0; i < 200000; i++) {
		ssize_t w = send(flood, req, strlen(req), MSG_NOSIGNAL);
		if (w < 0)
			break; /* the server stopped reading: backpressure */
		sent += (size_t)w;
	}
	assert_true(sent > 0);

	/* ... does not stop others from being served */
	int b = conn(f->path);
	send_str(b, "{\"cmd\":\"status\"}\n");
	expect_reply(b, STATUS_RUNNING);

	/* the flooding client gets every reply, in order, once it reads (the server resumes
	 * reading its requests as the replies drain) */
	size_t nreq = sent / strlen(req) * 2 + (sent % strlen(req) > 15);
	shutdown(flood, SHUT_WR);
	fcntl(flood, F_SETFL, 0);
	char *buf = malloc(8192);
	size_t got = 0;
	int n;
	while ((n = read_line_ms(flood, buf, 8192, 5000)) > 0) {
		if (got % 2 == 0)
			assert_non_null(strstr(buf, "\"commands\""));
		else
			assert_string_equal(buf, STATUS_RUNNING);
		got++;
	}
	assert_int_equal(n, -1);
	assert_int_equal(got, nreq);
	free(buf);
	close(flood);

	send_str(b, "{\"cmd\":\"status\"}\n");
	expect_reply(b, STATUS_RUNNING);
	close(b);
}

static void test_socket_ownership(void **state)
{
	struct fixture *f = start(state);
	struct api_server *other;
	struct stat st;

	/* a live socket is not stolen, and the first server keeps working */
	assert_int_equal(api_start(f->path, fake_cmds, &f->vm, &other), -EADDRINUSE);
	int fd = conn(f->path);
	send_str(fd, "{\"cmd\":\"status\"}\n");
	expect_reply(fd, STATUS_RUNNING);
	close(fd);

	/* api_stop() removes the socket */
	api_stop(f->srv);
	f->srv = NULL;
	assert_int_equal(stat(f->path, &st), -1);
	assert_int_equal(errno, ENOENT);

	/* a stale socket (its owner died without unlinking) is replaced */
	struct sockaddr_un sa = unix_addr(f->path);
	int s = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(s);
	assert_int_equal(stat(f->path, &st), 0);
	assert_int_equal(api_start(f->path, fake_cmds, &f->vm, &f->srv), 0);
	fd = conn(f->path);
	send_str(fd, "{\"cmd\":\"status\"}\n");
	expect_reply(fd, STATUS_RUNNING);
	close(fd);
	api_stop(f->srv);
	f->srv = NULL;

	/* something that is not a socket is left alone */
	int file = open(f->path, O_CREAT | O_WRONLY, 0600);
	close(file);
	assert_int_equal(api_start(f->path, fake_cmds, &f->vm, &other), -EEXIST);
	assert_int_equal(stat(f->path, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	unlink(f->path);

	char longpath[200];
	memset(longpath, 'a', sizeof(longpath) - 1);
	longpath[sizeof(longpath) - 1] = '\0';
	assert_int_equal(api_start(longpath, fake_cmds, NULL, &other), -ENAMETOOLONG);
	assert_int_equal(api_start("", fake_cmds, NULL, &other), -EINVAL);
	assert_int_equal(api_start("/nonexistent-dir/x.sock", fake_cmds, NULL, &other), -ENOENT);
}

static void test_client_request(void **state)
{
	struct fixture *f = start(state);
	char reply[4096];

	assert_int_equal(api_request(f->path, "{\"cmd\":\"status\"}", reply, sizeof(reply), 2000),
			 0);
	assert_string_equal(reply, STATUS_RUNNING);
	assert_int_equal(api_request(f->path, "{\"cmd\":\"nope\"}\n", reply, sizeof(reply), -1), 0);
	assert_string_equal(reply, "{\"v\":1,\"ok\":false,\"error\":\"unknown command 'nope' (try "
				   "'help')\"}");

	/* a slow handler against a short timeout */
	int64_t t0 = (int64_t)time(NULL);
	assert_int_equal(api_request(f->path, "{\"cmd\":\"slow\"}", reply, sizeof(reply), 100),
			 -ETIMEDOUT);
	assert_true((int64_t)time(NULL) - t0 < 2);

	/* reply buffer too small, request malformed for the line framing, too long */
	assert_int_equal(api_request(f->path, "{\"cmd\":\"status\"}", reply, 10, 2000), -EMSGSIZE);
	assert_int_equal(api_request(f->path, "{\"cmd\":\n\"status\"}", reply, sizeof(reply), 2000),
			 -EINVAL);
	char *longreq = malloc(API_MAX_LINE + 2);
	memset(longreq, ' ', API_MAX_LINE + 1);
	longreq[API_MAX_LINE + 1] = '\0';
	assert_int_equal(api_request(f->path, longreq, reply, sizeof(reply), 2000), -EMSGSIZE);
	free(longreq);

	/* nobody there */
	char missing[160];
	snprintf(missing, sizeof(missing), "%s/missing.sock", f->dir);
	assert_int_equal(api_request(missing, "{}", reply, sizeof(reply), 2000), -ENOENT);

	/* a socket that accepts connections but never answers */
	char mute[160];
	snprintf(mute, sizeof(mute), "%s/mute.sock", f->dir);
	struct sockaddr_un sa = unix_addr(mute);
	int s = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(s, 4), 0);
	assert_int_equal(api_request(mute, "{\"cmd\":\"status\"}", reply, sizeof(reply), 100),
			 -ETIMEDOUT);
	/* ... or closes without a reply */
	int c = accept(s, NULL, NULL);
	close(c);
	close(s);
	unlink(mute);

	/* the server is still fine after the abandoned slow request */
	assert_int_equal(api_request(f->path, "{\"cmd\":\"status\"}", reply, sizeof(reply), 2000),
			 0);
	assert_string_equal(reply, STATUS_RUNNING);
}

static void test_quit(void **state)
{
	struct fixture *f = start(state);
	struct stat st;
	int other = conn(f->path);
	int fd = conn(f->path);

	send_str(fd, "{\"cmd\":\"quit\",\"id\":9}\n{\"cmd\":\"status\"}\n");
	expect_reply(fd, "{\"v\":1,\"ok\":true,\"id\":9}");
	expect_eof(fd); /* nothing after the quit reply */
	expect_eof(other);
	close(fd);
	close(other);
	/* the socket is gone before api_stop() */
	for (int i = 0; i < 100 && stat(f->path, &st) == 0; i++)
		usleep(10000);
	assert_int_equal(stat(f->path, &st), -1);
	char reply[256];
	assert_true(api_request(f->path, "{\"cmd\":\"status\"}", reply, sizeof(reply), 500) < 0);
}

static void test_events(void **state)
{
	struct fixture *f = start(state);
	struct api_server *idle;
	struct jw fields;

	int sub = conn(f->path);
	int plain = conn(f->path);
	send_str(sub, "{\"cmd\":\"subscribe\"}\n");
	expect_reply(sub, "{\"v\":1,\"ok\":true}");

	jw_init(&fields, 0);
	jw_obj_begin(&fields);
	jw_kv_str(&fields, "reason", "user");
	jw_kv_u64(&fields, "at_ms", 42);
	jw_obj_end(&fields);
	assert_int_equal(api_event(f->srv, "paused", &fields), 0);
	assert_int_equal(api_event(f->srv, "resumed", NULL), 0);
	expect_reply(sub, "{\"v\":1,\"event\":\"paused\",\"reason\":\"user\",\"at_ms\":42}");
	expect_reply(sub, "{\"v\":1,\"event\":\"resumed\"}");

	/* no events for a client that did not subscribe */
	send_str(plain, "{\"cmd\":\"status\"}\n");
	expect_reply(plain, STATUS_RUNNING);

	/* empty object and invalid fields */
	jw_reset(&fields);
	jw_obj_begin(&fields);
	jw_obj_end(&fields);
	assert_int_equal(api_event(f->srv, "x", &fields), 0);
	expect_reply(sub, "{\"v\":1,\"event\":\"x\"}");
	jw_reset(&fields);
	jw_arr_begin(&fields);
	jw_arr_end(&fields);
	assert_int_equal(api_event(f->srv, "x", &fields), -EINVAL);
	jw_reset(&fields);
	jw_obj_begin(&fields);
	assert_int_equal(api_event(f->srv, "x", &fields), -EINVAL);
	jw_free(&fields);

	/* a subscriber that never reads is dropped; the server and other clients carry on */
	char *pad = malloc(2048);
	memset(pad, 'p', 2047);
	pad[2047] = '\0';
	jw_init(&fields, 0);
	jw_obj_begin(&fields);
	jw_kv_str(&fields, "pad", pad);
	jw_obj_end(&fields);
	free(pad);
	for (int i = 0; i < 2000; i++) {
		int r;
		while ((r = api_event(f->srv, "big", &fields)) == -ENOBUFS)
			usleep(1000);
		assert_int_equal(r, 0);
	}
	jw_free(&fields);
	char *buf = malloc(4096);
	int lines = 0, n;
	while ((n = read_line_ms(sub, buf, 4096, 5000)) > 0)
		lines++;
	assert_int_equal(n, -1); /* EOF: disconnected */
	assert_true(lines > 0 && lines < 2000);
	free(buf);
	send_str(plain, "{\"cmd\":\"status\"}\n");
	expect_reply(plain, STATUS_RUNNING);

	assert_int_equal(api_create(NULL, NULL, &idle), 0);
	assert_int_equal(api_event(idle, "x", NULL), -ENOTCONN);
	api_stop(idle);
	close(sub);
	close(plain);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_dispatch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tables, setup, teardown),
		cmocka_unit_test_setup_teardown(test_socket_basic, setup, teardown),
		cmocka_unit_test_setup_teardown(test_oversized_lines, setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_clients, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hostile_clients, setup, teardown),
		cmocka_unit_test_setup_teardown(test_socket_ownership, setup, teardown),
		cmocka_unit_test_setup_teardown(test_client_request, setup, teardown),
		cmocka_unit_test_setup_teardown(test_quit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_events, setup, teardown),
	};
	log_set_level(LOG_ERR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
