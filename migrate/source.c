/* SPDX-License-Identifier: MIT */
/*
 * The source side of a live migration: control-socket commands and the migration thread
 * (handshake, full pass, dirty rounds with auto-converge, pause + final round + state,
 * confirmation). Policy lives here; the bytes are migrate/stream.h's, the machine vmm/'s.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "formats/crc32c.h"
#include "formats/image.h"
#include "migrate/conn.h"
#include "migrate/migrate.h"
#include "migrate/stream.h"
#include "util/json.h"
#include "util/log.h"
#include "vmm/api.h"
#include "vmm/dirty.h"
#include "vmm/kvmstate.h"
#include "vmm/vm.h"

#define RUN_PAGES 256u		   /* pages copied and packed at a time (1 MiB) */
#define FLUSH_BYTES (1u << 20)	   /* stream bytes buffered before a write */
#define MAX_ROUNDS 64		   /* after that, stop and copy whatever is left */
#define POLISH_ROUNDS 8		   /* extra rounds, within the target, that shrink the pause */
#define POLISH_FLOOR_US 1000	   /* ... while more than this much is left to copy paused */
#define MAX_ROUND_LOG 256	   /* pages-per-round entries kept for the report */
#define THROTTLE_PERIOD_US 20000   /* auto-converge: vCPUs paused for pct% of each period */
#define THROTTLE_FIRST 30
#define THROTTLE_STEP 15
#define THROTTLE_MAX 95
#define FIXED_DOWNTIME_US 2000	   /* estimate of pause + state + confirm beyond the pages */
#define CONFIRM_TIMEOUT_MS 30000
#define DEFAULT_DOWNTIME_MS 100
#define DEFAULT_MAX_TIME_S 600

enum mig_state {
	MIG_NONE = 0,
	MIG_SETUP,	/* connecting, handshake */
	MIG_ACTIVE,	/* pre-copy rounds */
	MIG_COMPLETING, /* guest paused: final round, state, waiting for the confirmation */
	MIG_COMPLETED,
	MIG_FAILED,
	MIG_CANCELLED,
};

static const char *const state_names[] = { "none",	"setup",  "active",   "completing",
					   "completed", "failed", "cancelled" };

struct mig_params {
	char to[256];
	uint64_t downtime_ms;
	uint64_t bandwidth_mbps; /* 10^6 bytes per second; 0: no cap */
	uint64_t max_time_s;
	int compress; /* 0 off, 1 on, 2 auto */
	enum vm_dirty_mode dirty_mode;
	char tls_cert[PATH_MAX], tls_key[PATH_MAX], tls_ca[PATH_MAX];
};

/* Figures shared with migrate-status (under src.lock). */
struct mig_figures {
	enum mig_state state;
	char transport[96];
	uint32_t round;
	uint64_t start_ns, end_ns;
	uint64_t bytes_sent, pages_sent, pages_zero, pages_lz4, pages_data;
	uint64_t remaining_pages; /* dirty at the last sync */
	double dirty_rate_Bps, bandwidth_Bps;
	int throttle_pct;
	uint64_t expected_downtime_us;
	uint64_t setup_us, first_pass_us, first_pass_bytes, first_pass_pages;
	uint64_t downtime_us, final_pages, state_bytes, dest_load_us, pause_us;
	uint64_t drain_us; /* waiting for the destination to catch up (guest running) */
	uint64_t last_sync_us;
	uint64_t cut_pause_us, cut_sync_us, cut_pages_us, cut_state_us, cut_flush_us;
	uint32_t nrounds_logged;
	uint64_t round_pages[MAX_ROUND_LOG];
	char note[256];	 /* why the downtime target was not met, if so */
	char error[512];
};

static struct mig_source {
	struct vm *vm;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_t thread;
	bool joinable;
	atomic_bool cancel;
	bool committed;	 /* END sent: cancel no longer possible */
	bool final_read; /* a client has seen the final state */
	struct mig_params p;
	struct mig_figures fig;
} src = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };

/* The migration thread's working state. */
struct mig_ctx {
	struct vm *vm;
	struct mig_params p;
	struct mig_conn *conn;
	struct vm_dirty *dirty;
	uint64_t *bitmap;
	uint64_t words, ram_pages;
	uint8_t *ram;
	uint8_t *scratch;
	struct enc out;
	bool lz4;		/* negotiated */
	bool drain;		/* the destination answers DRAIN */
	unsigned int lz4_skip;	/* runs to send raw before trying LZ4 again */
	unsigned int lz4_backoff;
	uint64_t t0_ns;
	uint64_t bytes_cap_start_ns, bytes_at_cap_start;
	bool paused;
	/* throttle */
	pthread_t throttle;
	bool throttle_running;
	atomic_int throttle_pct;
	atomic_bool throttle_stop;
	char err[512];
};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_us(uint64_t us)
{
	struct timespec ts = { (time_t)(us / 1000000), (long)(us % 1000000) * 1000 };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static void __attribute__((format(printf, 2, 3))) set_err(struct mig_ctx *x, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(x->err, sizeof(x->err), fmt, ap);
	va_end(ap);
}

/* ---- status ---------------------------------------------------------------------------- */

static void figures_json(const struct mig_figures *f, const struct mig_params *p, struct jw *w)
{
	uint64_t end = f->end_ns ? f->end_ns : now_ns();
	jw_kv_str(w, "state", state_names[f->state]);
	jw_kv_str(w, "to", p->to);
	if (f->state == MIG_NONE)
		return;
	jw_kv_str(w, "transport", f->transport);
	jw_kv_u64(w, "round", f->round);
	jw_kv_u64(w, "elapsed_ms", f->start_ns ? (end - f->start_ns) / 1000000 : 0);
	jw_kv_u64(w, "bytes_sent", f->bytes_sent);
	jw_kv_u64(w, "pages_sent", f->pages_sent);
	jw_kv_u64(w, "pages_zero", f->pages_zero);
	jw_kv_u64(w, "pages_lz4", f->pages_lz4);
	jw_kv_u64(w, "pages_data", f->pages_data);
	jw_kv_u64(w, "remaining_pages", f->remaining_pages);
	jw_kv_double(w, "dirty_rate_mbps", f->dirty_rate_Bps / 1e6);
	jw_kv_double(w, "bandwidth_mbps", f->bandwidth_Bps / 1e6);
	jw_kv_u64(w, "throttle_pct", (uint64_t)f->throttle_pct);
	jw_kv_double(w, "expected_downtime_ms", (double)f->expected_downtime_us / 1e3);
	jw_kv_u64(w, "downtime_target_ms", p->downtime_ms);
	jw_kv_double(w, "setup_ms", (double)f->setup_us / 1e3);
	jw_kv_double(w, "first_pass_ms", (double)f->first_pass_us / 1e3);
	jw_kv_u64(w, "first_pass_bytes", f->first_pass_bytes);
	jw_kv_double(w, "first_pass_mbps",
		     f->first_pass_us ? (double)f->first_pass_pages * IMG_PAGE_SIZE /
						(double)f->first_pass_us :
					0);
	jw_kv_double(w, "last_dirty_sync_ms", (double)f->last_sync_us / 1e3);
	jw_key(w, "pages_per_round");
	jw_arr_begin(w);
	for (uint32_t i = 0; i < f->nrounds_logged; i++)
		jw_u64(w, f->round_pages[i]);
	jw_arr_end(w);
	if (f->state == MIG_COMPLETED) {
		jw_kv_double(w, "total_ms", (double)(end - f->start_ns) / 1e6);
		jw_kv_double(w, "downtime_ms", (double)f->downtime_us / 1e3);
		jw_kv_double(w, "pause_to_state_sent_ms", (double)f->pause_us / 1e3);
		jw_kv_double(w, "dest_load_ms", (double)f->dest_load_us / 1e3);
		jw_kv_double(w, "drain_ms", (double)f->drain_us / 1e3);
		jw_kv_u64(w, "final_pages", f->final_pages);
		jw_kv_u64(w, "state_bytes", f->state_bytes);
		jw_kv_bool(w, "downtime_met", f->downtime_us <= p->downtime_ms * 1000);
		jw_key(w, "cutover_us");
		jw_obj_begin(w);
		jw_kv_u64(w, "pause", f->cut_pause_us);
		jw_kv_u64(w, "dirty_sync", f->cut_sync_us);
		jw_kv_u64(w, "pages", f->cut_pages_us);
		jw_kv_u64(w, "state", f->cut_state_us);
		jw_kv_u64(w, "flush", f->cut_flush_us);
		jw_kv_u64(w, "confirm_wait", (f->downtime_us > f->pause_us ? f->downtime_us - f->pause_us : 0));
		jw_obj_end(w);
	}
	if (f->note[0])
		jw_kv_str(w, "downtime_note", f->note);
	if (f->error[0])
		jw_kv_str(w, "error", f->error);
}

static void publish(struct mig_ctx *x, const char *event)
{
	struct api_server *srv = vm_api_server(x->vm);
	if (!srv)
		return;
	struct jw w;
	jw_init(&w, 16384);
	jw_obj_begin(&w);
	pthread_mutex_lock(&src.lock);
	figures_json(&src.fig, &src.p, &w);
	pthread_mutex_unlock(&src.lock);
	jw_obj_end(&w);
	if (!jw_error(&w))
		api_event(srv, event, &w);
	jw_free(&w);
}

#define FIG_SET(stmt)                                                                              \
	do {                                                                                       \
		pthread_mutex_lock(&src.lock);                                                     \
		stmt;                                                                              \
		pthread_mutex_unlock(&src.lock);                                                   \
	} while (0)

/* ---- sending --------------------------------------------------------------------------- */

static int flush_out(struct mig_ctx *x)
{
	if (enc_error(&x->out))
		return enc_error(&x->out);
	if (!x->out.len)
		return 0;
	int r = mig_conn_write(x->conn, x->out.buf, x->out.len);
	enc_reset(&x->out);
	if (r) {
		set_err(x, "sending to %s: %s", x->p.to,
			 mig_conn_error(x->conn));
		return r;
	}
	uint64_t sent = mig_conn_bytes_out(x->conn);
	FIG_SET(src.fig.bytes_sent = sent);
	if (x->p.bandwidth_mbps && !x->paused) {
		/* Bandwidth cap (pre-copy only: the final round goes as fast as it can). */
		uint64_t due_ns = (sent - x->bytes_at_cap_start) * 1000ull / x->p.bandwidth_mbps;
		uint64_t el = now_ns() - x->bytes_cap_start_ns;
		if (due_ns > el)
			sleep_us((due_ns - el) / 1000);
	}
	return 0;
}

/*
 * Queue @n pages from @page as zero and non-zero runs. Zero pages are found in guest RAM in
 * place, and non-zero ones are copied once, straight into the stream buffer (or compressed
 * from RAM into the scratch buffer), and checksummed there. The guest may write a page while
 * we read it: the page is then dirty again and goes in a later round (the last one with the
 * guest paused); what matters now is that each run's CRC is of the bytes that are sent.
 */
static void queue_pages(struct mig_ctx *x, uint32_t round, uint64_t page, uint32_t n,
			struct mig_figures *acc)
{
	const uint8_t *from = x->ram + page * IMG_PAGE_SIZE;
	uint32_t off = 0;
	while (off < n) {
		bool zero;
		const uint8_t *p = from + (size_t)off * IMG_PAGE_SIZE;
		uint32_t k = (uint32_t)img_scan_pages(p, n - off, &zero);
		if (zero) {
			struct img_run r = { .page = page + off, .npages = k, .kind = IMG_RUN_ZERO };
			mig_put_run(&x->out, round, &r, NULL);
			acc->pages_zero += k;
		} else {
			bool try = x->lz4 && x->lz4_skip == 0;
			if (x->lz4_skip)
				x->lz4_skip--;
			uint32_t clen = try ? img_lz4_try(p, k, x->scratch) : 0;
			if (clen) {
				struct img_run r = {
					.page = page + off,
					.npages = k,
					.kind = IMG_RUN_LZ4,
					.stored_len = clen,
					.crc = crc32c(0, x->scratch, clen),
				};
				mig_put_run(&x->out, round, &r, x->scratch);
				acc->pages_lz4 += k;
				x->lz4_backoff = 0;
			} else {
				mig_put_data_run(&x->out, round, page + off, k, p);
				acc->pages_data += k;
				if (try && x->p.compress == 2) {
					/* Incompressible: back off exponentially (max 64 runs). */
					x->lz4_backoff = x->lz4_backoff ? x->lz4_backoff * 2 : 1;
					if (x->lz4_backoff > 64)
						x->lz4_backoff = 64;
					x->lz4_skip = x->lz4_backoff;
				}
			}
		}
		acc->pages_sent += k;
		off += k;
	}
}

/* Send every page set in the bitmap (clearing it). */
static int send_dirty(struct mig_ctx *x, uint32_t round, uint64_t *npages)
{
	struct mig_figures acc = { 0 };
	for (uint64_t w = 0; w < x->words; w++) {
		while (x->bitmap[w]) {
			uint64_t page = w * 64 + (uint64_t)__builtin_ctzll(x->bitmap[w]);
			uint32_t n = 0;
			while (n < RUN_PAGES && page + n < x->ram_pages &&
			       (x->bitmap[(page + n) / 64] >> ((page + n) % 64)) & 1) {
				x->bitmap[(page + n) / 64] &= ~(1ull << ((page + n) % 64));
				n++;
			}
			if (page >= x->ram_pages) { /* bits past RAM in the last word */
				x->bitmap[w] = 0;
				break;
			}
			queue_pages(x, round, page, n, &acc);
			if (x->out.len >= FLUSH_BYTES) {
				int r = flush_out(x);
				if (r)
					return r;
				FIG_SET({
					src.fig.pages_sent += acc.pages_sent;
					src.fig.pages_zero += acc.pages_zero;
					src.fig.pages_lz4 += acc.pages_lz4;
					src.fig.pages_data += acc.pages_data;
				});
				*npages += acc.pages_sent;
				memset(&acc, 0, sizeof(acc));
			}
			if (atomic_load(&src.cancel))
				return -ECANCELED;
		}
	}
	int r = flush_out(x);
	FIG_SET({
		src.fig.pages_sent += acc.pages_sent;
		src.fig.pages_zero += acc.pages_zero;
		src.fig.pages_lz4 += acc.pages_lz4;
		src.fig.pages_data += acc.pages_data;
	});
	*npages += acc.pages_sent;
	return r;
}

/*
 * Round 0: RAM the guest never touched is a hole in the memfd (gmem_nonzero_bitmap). Send
 * those ranges as ZERO runs without reading them (reading would allocate host memory for
 * nothing) and clear their bits. Runs after the dirty sync, so a page written from now on is
 * reported by the next one.
 */
static int send_holes(struct mig_ctx *x, uint64_t *npages)
{
	uint64_t words = (x->ram_pages + 63) / 64;
	uint64_t *data = calloc(words, sizeof(*data));
	if (!data)
		return -ENOMEM;
	if (gmem_nonzero_bitmap(vm_memory(x->vm), data)) {
		free(data); /* cannot tell: round 0 reads every page instead */
		return 0;
	}
	for (uint64_t pg = 0; pg < x->ram_pages;) {
		if (data[pg / 64] >> (pg % 64) & 1) {
			pg++;
			continue;
		}
		uint64_t n = 1;
		while (pg + n < x->ram_pages && n < (1u << 20) &&
		       !(data[(pg + n) / 64] >> ((pg + n) % 64) & 1))
			n++;
		struct img_run r = { .page = pg, .npages = (uint32_t)n, .kind = IMG_RUN_ZERO };
		for (uint64_t i = pg; i < pg + n; i++)
			x->bitmap[i / 64] &= ~(1ull << (i % 64));
		mig_put_run(&x->out, 0, &r, NULL);
		*npages += n;
		FIG_SET({
			src.fig.pages_sent += n;
			src.fig.pages_zero += n;
		});
		pg += n;
	}
	free(data);
	return flush_out(x);
}

static uint64_t popcount_bitmap(const uint64_t *b, uint64_t words)
{
	uint64_t n = 0;
	for (uint64_t i = 0; i < words; i++)
		n += (uint64_t)__builtin_popcountll(b[i]);
	return n;
}

/* ---- auto-converge ---------------------------------------------------------------------- */

static void *throttle_main(void *arg)
{
	struct mig_ctx *x = arg;
	while (!atomic_load(&x->throttle_stop)) {
		int pct = atomic_load(&x->throttle_pct);
		if (pct <= 0) {
			sleep_us(5000);
			continue;
		}
		if (vm_pause(x->vm))
			break;
		sleep_us(THROTTLE_PERIOD_US * (uint64_t)pct / 100);
		vm_resume(x->vm);
		sleep_us(THROTTLE_PERIOD_US * (uint64_t)(100 - pct) / 100);
	}
	return NULL;
}

static void throttle_set(struct mig_ctx *x, int pct)
{
	atomic_store(&x->throttle_pct, pct);
	FIG_SET(src.fig.throttle_pct = pct);
	if (pct > 0 && !x->throttle_running) {
		atomic_store(&x->throttle_stop, false);
		if (pthread_create(&x->throttle, NULL, throttle_main, x) == 0)
			x->throttle_running = true;
		else
			log_warn("migration: cannot start the auto-converge thread");
	}
}

static void throttle_stop(struct mig_ctx *x)
{
	if (!x->throttle_running)
		return;
	atomic_store(&x->throttle_stop, true);
	pthread_join(x->throttle, NULL);
	x->throttle_running = false;
	/* The thread may have stopped between its pause and resume. */
	if (!x->paused)
		vm_resume(x->vm);
}

/* ---- handshake and state ------------------------------------------------------------------ */

static int handshake(struct mig_ctx *x, struct mig_reader *rd)
{
	const struct vm_config *cfg = vm_get_config(x->vm);
	const struct gmem *m = vm_memory(x->vm);
	struct mig_hello *h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->major = MIG_PROTO_MAJOR;
	h->minor = MIG_PROTO_MINOR;
	h->caps = x->p.compress ? MIG_CAP_LZ4 : 0;
	snprintf(h->hdr.creator, sizeof(h->hdr.creator), "vmsnap %s", VMSNAP_VERSION);
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	h->hdr.created_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	img_host_cpu_probe(&h->hdr.cpu);
	h->hdr.tsc_khz = vm_tsc_khz(x->vm);
	h->hdr.vm.ram_size = m->size;
	h->hdr.vm.vcpus = cfg->ncpus;
	h->hdr.vm.nregions = m->nregions;
	for (unsigned int i = 0; i < m->nregions; i++)
		h->hdr.vm.regions[i] = (struct img_region){ m->regions[i].gpa, m->regions[i].size,
							     m->regions[i].offset };
	snprintf(h->hdr.vm.cpu_template, sizeof(h->hdr.vm.cpu_template), "%s",
		 cfg->cpu_template ? cfg->cpu_template : "host");
	snprintf(h->hdr.vm.kernel, sizeof(h->hdr.vm.kernel), "%s", cfg->kernel ? cfg->kernel : "");
	snprintf(h->hdr.vm.cmdline, sizeof(h->hdr.vm.cmdline), "%s",
		 cfg->cmdline ? cfg->cmdline : "");
	h->ndevices = vm_device_count(x->vm);
	for (unsigned int i = 0; i < h->ndevices && i < MIG_MAX_DEVICES; i++) {
		const struct vm_device_info *di = vm_device_get_info(x->vm, i);
		h->devices[i].id = di->id;
		h->devices[i].version = di->version;
		snprintf(h->devices[i].name, sizeof(h->devices[i].name), "%s", di->name);
	}
	struct enc pe;
	enc_init(&pe);
	int r = mig_hello_encode(&pe, h);
	free(h);
	if (r) {
		enc_free(&pe);
		set_err(x, "cannot encode the handshake: %s", strerror(-r));
		return r;
	}
	enc_bytes(&x->out, MIG_MAGIC, MIG_MAGIC_LEN);
	mig_put_record(&x->out, IMG_SEC_ID(MIG_REC_HELLO, 0), 1, IMG_SEC_REQUIRED, pe.buf,
		       pe.len);
	enc_free(&pe);
	if ((r = flush_out(x)))
		return r;

	struct mig_record rec;
	char e[400];
	r = mig_read_record(rd, &rec, e, sizeof(e));
	if (r) {
		set_err(x, "handshake with %s: %s%s", x->p.to,
			 r == -EPIPE || r == -EPROTO ? mig_conn_error(x->conn) : e,
			 r == -EPIPE ? " (the destination hung up: does it expect TLS?)" : "");
		return r;
	}
	uint32_t type = IMG_SEC_TYPE(rec.f.id);
	struct mig_reply rep;
	if (type != MIG_REC_WELCOME && type != MIG_REC_ERROR) {
		set_err(x, "handshake with %s: unexpected record type 0x%x",
			 x->p.to, type);
		return -EPROTO;
	}
	r = mig_reply_decode(type, rec.payload, rec.len, &rep, e, sizeof(e));
	if (r) {
		set_err(x, "handshake with %s: %s", x->p.to, e);
		return r;
	}
	if (type == MIG_REC_ERROR || rep.status) {
		set_err(x, "destination %s refused the migration: %s",
			 x->p.to, rep.msg);
		return -(int)(rep.status ? rep.status : EPROTO);
	}
	x->lz4 = (rep.caps & MIG_CAP_LZ4) && x->p.compress;
	x->drain = rep.caps & MIG_CAP_DRAIN;
	return 0;
}

/*
 * Before the pause: wait until the destination has put in RAM everything sent so far. The
 * socket buffers hold MiBs, and what is still in them when the guest pauses is copied inside
 * the downtime (10-20 ms here). The guest runs meanwhile; what it dirties goes in the final
 * round. Returns 0 or -errno with the error set.
 */
static int drain(struct mig_ctx *x, struct mig_reader *rd, uint64_t token)
{
	struct enc te;
	enc_init(&te);
	enc_u64(&te, token);
	mig_put_record(&x->out, IMG_SEC_ID(MIG_REC_DRAIN, 0), 1, 0, te.buf, te.len);
	enc_free(&te);
	int r = flush_out(x);
	if (r)
		return r;
	char e[512];
	struct mig_record rec;
	r = mig_read_record(rd, &rec, e, sizeof(e));
	if (r) {
		set_err(x, "waiting for the destination to catch up: %s",
			 r == -EPIPE || r == -EPROTO || r == -ETIMEDOUT ? mig_conn_error(x->conn) : e);
		return r;
	}
	uint32_t type = IMG_SEC_TYPE(rec.f.id);
	if (type == MIG_REC_ERROR) {
		struct mig_reply rep;
		if (mig_reply_decode(type, rec.payload, rec.len, &rep, e, sizeof(e)))
			snprintf(rep.msg, sizeof(rep.msg), "(unreadable reason)");
		set_err(x, "the destination gave up: %s", rep.msg);
		return -ECANCELED;
	}
	struct dec d;
	dec_init(&d, rec.payload, rec.len);
	uint64_t got = dec_u64_val(&d);
	if (type != MIG_REC_DRAINED || dec_error(&d) || got != token) {
		set_err(x, "the destination answered a drain with a bad record");
		return -EPROTO;
	}
	return 0;
}

static int queue_state(struct mig_ctx *x, uint64_t *bytes)
{
	struct enc st;
	int r = 0;
	size_t before = x->out.len;
	unsigned int nvcpus = vm_get_config(x->vm)->ncpus;
	enc_init(&st);
	for (unsigned int i = 0; i < nvcpus && !r; i++) {
		enc_reset(&st);
		r = vm_vcpu_save(x->vm, i, &st);
		if (!r)
			mig_put_record(&x->out, IMG_SEC_ID(IMG_SEC_VCPU, i), KVMSTATE_VCPU_VERSION,
				       IMG_SEC_REQUIRED, st.buf, st.len);
	}
	if (!r) {
		enc_reset(&st);
		r = vm_arch_save(x->vm, &st);
		if (!r)
			mig_put_record(&x->out, IMG_SEC_ID(IMG_SEC_VM, 0), KVMSTATE_VM_VERSION,
				       IMG_SEC_REQUIRED, st.buf, st.len);
	}
	unsigned int ndev = vm_device_count(x->vm);
	for (unsigned int i = 0; i < ndev && !r; i++) {
		const struct vm_device_info *di = vm_device_get_info(x->vm, i);
		enc_reset(&st);
		r = vm_device_save(x->vm, i, &st);
		if (!r)
			mig_put_record(&x->out, IMG_SEC_ID(IMG_SEC_DEVICE, di->id), di->version,
				       IMG_SEC_REQUIRED, st.buf, st.len);
	}
	enc_free(&st);
	if (r)
		set_err(x, "cannot save the VM's state: %s", strerror(-r));
	*bytes = x->out.len - before;
	return r;
}

/* Tell the destination we give up (best effort, the link may be what failed). */
static void send_error(struct mig_ctx *x, int err, const char *msg)
{
	if (!x->conn)
		return;
	struct enc pe;
	struct mig_reply rep = { .status = (uint32_t)(err < 0 ? -err : err) };
	snprintf(rep.msg, sizeof(rep.msg), "%s", msg);
	enc_init(&pe);
	mig_reply_encode(&pe, MIG_REC_ERROR, &rep);
	enc_reset(&x->out);
	mig_put_record(&x->out, IMG_SEC_ID(MIG_REC_ERROR, 0), 1, IMG_SEC_REQUIRED, pe.buf, pe.len);
	enc_free(&pe);
	mig_conn_set_cancel(x->conn, NULL, 1000);
	(void)mig_conn_write(x->conn, x->out.buf, x->out.len);
	enc_reset(&x->out);
}

/* ---- the migration --------------------------------------------------------------------- */

static int run_migration(struct mig_ctx *x)
{
	int r;
	char e[400];
	struct mig_tls_opts tls = {
		.cert = x->p.tls_cert[0] ? x->p.tls_cert : NULL,
		.key = x->p.tls_key[0] ? x->p.tls_key : NULL,
		.ca = x->p.tls_ca[0] ? x->p.tls_ca : NULL,
	};
	r = mig_conn_connect(x->p.to, &tls, &src.cancel, 10000, &x->conn, e, sizeof(e));
	if (r) {
		set_err(x, "%s", e);
		return r;
	}
	mig_conn_set_cancel(x->conn, &src.cancel, 30000);
	FIG_SET(snprintf(src.fig.transport, sizeof(src.fig.transport), "%s",
			 mig_conn_describe(x->conn)));

	struct mig_reader rd;
	mig_reader_init(&rd, mig_conn_read_cb, x->conn);
	r = handshake(x, &rd);
	if (r)
		goto out;

	struct gmem *m = vm_memory(x->vm);
	x->ram = m->host;
	x->ram_pages = m->size / IMG_PAGE_SIZE;
	r = vm_dirty_start(x->vm, x->p.dirty_mode, &x->dirty);
	if (r) {
		set_err(x, "cannot start dirty-page tracking: %s",
			 strerror(-r));
		goto out;
	}
	x->words = vm_dirty_words(x->dirty);
	x->bitmap = calloc(x->words, sizeof(uint64_t));
	x->scratch = malloc(img_lz4_bound(RUN_PAGES));
	if (!x->bitmap || !x->scratch) {
		r = -ENOMEM;
		set_err(x, "out of memory");
		goto out;
	}
	uint64_t setup_us = (now_ns() - x->t0_ns) / 1000;
	FIG_SET({
		src.fig.state = MIG_ACTIVE;
		src.fig.setup_us = setup_us;
	});
	x->bytes_cap_start_ns = now_ns();
	x->bytes_at_cap_start = mig_conn_bytes_out(x->conn);

	uint64_t target_us = x->p.downtime_ms * 1000;
	uint64_t deadline_ns = x->p.max_time_s ? x->t0_ns + x->p.max_time_s * 1000000000ull : 0;
	double bw = 0; /* bytes/s the link has shown */
	uint64_t prev_remaining = UINT64_MAX, last_sync_ns = now_ns();
	int not_shrinking = 0, throttle = 0, polish = 0;
	uint32_t round = 0;
	char note[256] = "";

	for (;;) {
		int64_t added = vm_dirty_sync(x->dirty, x->bitmap);
		uint64_t t_sync = now_ns();
		if (added < 0) {
			r = (int)added;
			set_err(x, "reading the dirty log failed: %s",
				 strerror(-r));
			goto out;
		}
		uint64_t remaining = popcount_bitmap(x->bitmap, x->words);
		double rate = round ? (double)added * IMG_PAGE_SIZE * 1e9 /
					      (double)(t_sync - last_sync_ns) :
				      0;
		last_sync_ns = t_sync;
		double est_bw = bw > 0 ? bw : 100e6; /* conservative until measured */
		uint64_t expected_us =
			FIXED_DOWNTIME_US + (uint64_t)((double)remaining * IMG_PAGE_SIZE * 1e6 / est_bw);
		FIG_SET({
			src.fig.round = round;
			src.fig.remaining_pages = remaining;
			src.fig.dirty_rate_Bps = rate;
			src.fig.expected_downtime_us = expected_us;
			src.fig.last_sync_us = vm_dirty_last_sync_us(x->dirty);
		});
		if (round > 0 && expected_us <= target_us) {
			/*
			 * Within the target. A round that still shrank the remainder by a quarter
			 * says the link outruns the guest: a few more short rounds make the pause
			 * smaller than the target allows. Stop when they no longer pay.
			 */
			bool shrinking = remaining * 4 < prev_remaining * 3;
			if (!shrinking || polish >= POLISH_ROUNDS ||
			    expected_us <= FIXED_DOWNTIME_US + POLISH_FLOOR_US || round >= MAX_ROUNDS ||
			    (deadline_ns && t_sync >= deadline_ns))
				break;
			polish++;
		} else if (round > 0) {
			if (deadline_ns && t_sync >= deadline_ns) {
				snprintf(note, sizeof(note),
					 "max-time %llu s reached with %llu dirty pages (dirty rate "
					 "%.0f MB/s, link %.0f MB/s, throttle %d%%)",
					 (unsigned long long)x->p.max_time_s,
					 (unsigned long long)remaining, rate / 1e6, est_bw / 1e6,
					 throttle);
				break;
			}
			if (round >= MAX_ROUNDS) {
				snprintf(note, sizeof(note),
					 "no convergence after %u rounds: %llu dirty pages (dirty rate "
					 "%.0f MB/s, link %.0f MB/s, throttle %d%%)",
					 round, (unsigned long long)remaining, rate / 1e6,
					 est_bw / 1e6, throttle);
				break;
			}
			/* Auto-converge: the dirty set does not shrink, the guest outruns the link. */
			if (remaining * 10 > prev_remaining * 9)
				not_shrinking++;
			else
				not_shrinking = 0;
			if (not_shrinking >= 2 && throttle < THROTTLE_MAX) {
				throttle = throttle ? throttle + THROTTLE_STEP : THROTTLE_FIRST;
				if (throttle > THROTTLE_MAX)
					throttle = THROTTLE_MAX;
				log_info("migration: dirty rate %.0f MB/s outruns the link (%.0f MB/s): "
					 "throttling vCPUs to %d%%",
					 rate / 1e6, est_bw / 1e6, 100 - throttle);
				throttle_set(x, throttle);
				not_shrinking = 0;
			}
		}
		prev_remaining = remaining;

		uint64_t t_round = now_ns(), b0 = mig_conn_bytes_out(x->conn), pages = 0;
		r = 0;
		if (round == 0 && vm_memory(x->vm)->fd >= 0)
			r = send_holes(x, &pages);
		if (!r)
			r = send_dirty(x, round, &pages);
		if (r)
			goto out;
		struct enc re;
		enc_init(&re);
		enc_u32(&re, round);
		enc_u64(&re, pages);
		mig_put_record(&x->out, IMG_SEC_ID(MIG_REC_ROUND, 0), 1, 0, re.buf, re.len);
		enc_free(&re);
		if ((r = flush_out(x)))
			goto out;
		uint64_t dt = now_ns() - t_round, wire = mig_conn_bytes_out(x->conn) - b0;
		if (wire >= (1u << 20) && dt > 0) {
			double meas = (double)wire * 1e9 / (double)dt;
			bw = bw > 0 ? 0.5 * bw + 0.5 * meas : meas;
		}
		FIG_SET({
			src.fig.bandwidth_Bps = bw;
			if (src.fig.nrounds_logged < MAX_ROUND_LOG)
				src.fig.round_pages[src.fig.nrounds_logged++] = pages;
			if (round == 0) {
				src.fig.first_pass_us = dt / 1000;
				src.fig.first_pass_bytes = wire;
				src.fig.first_pass_pages = pages;
			}
		});
		publish(x, "migrate-progress");
		round++;
		/*
		 * A polishing round ends when the destination has it: otherwise the next sync
		 * is taken while MiBs of this one are still in the socket buffers, and the rounds
		 * shrink what was sent rather than what is left to copy.
		 */
		if (polish && x->drain) {
			uint64_t t_drain = now_ns();
			if ((r = drain(x, &rd, round)))
				goto out;
			FIG_SET(src.fig.drain_us += (now_ns() - t_drain) / 1000);
		}
	}

	if (x->drain) {
		uint64_t t_drain = now_ns();
		if ((r = drain(x, &rd, round)))
			goto out;
		FIG_SET(src.fig.drain_us += (now_ns() - t_drain) / 1000);
	}

	/* Stop and copy. */
	FIG_SET({
		src.fig.state = MIG_COMPLETING;
		snprintf(src.fig.note, sizeof(src.fig.note), "%s", note);
	});
	throttle_stop(x);
	uint64_t t_pause = now_ns();
	r = vm_pause(x->vm);
	if (r) {
		set_err(x, "cannot pause the VM (it is shutting down)");
		goto out;
	}
	x->paused = true;
	uint64_t t_c1 = now_ns();
	int64_t added = vm_dirty_sync(x->dirty, x->bitmap);
	uint64_t t_c2 = now_ns();
	if (added < 0) {
		r = (int)added;
		set_err(x, "reading the dirty log failed: %s", strerror(-r));
		goto out;
	}
	uint64_t final_pages = 0, state_bytes = 0;
	r = send_dirty(x, round, &final_pages);
	uint64_t t_c3 = now_ns();
	if (!r)
		r = queue_state(x, &state_bytes);
	if (r)
		goto out;
	uint64_t t_c4 = now_ns();
	struct mig_end end = { .nvcpus = vm_get_config(x->vm)->ncpus,
			       .ndevices = vm_device_count(x->vm),
			       .rounds = round + 1 };
	FIG_SET(end.pages = src.fig.pages_sent);
	struct enc ee;
	enc_init(&ee);
	mig_end_encode(&ee, &end);
	mig_put_record(&x->out, IMG_SEC_ID(MIG_REC_END, 0), 1, IMG_SEC_REQUIRED, ee.buf, ee.len);
	enc_free(&ee);
	/* From here a cancel could leave two running guests: refuse it. */
	pthread_mutex_lock(&src.lock);
	if (atomic_load(&src.cancel)) {
		pthread_mutex_unlock(&src.lock);
		r = -ECANCELED;
		set_err(x, "cancelled");
		goto out;
	}
	src.committed = true;
	pthread_mutex_unlock(&src.lock);
	if ((r = flush_out(x)))
		goto out;
	uint64_t t_sent = now_ns();

	mig_conn_set_cancel(x->conn, NULL, CONFIRM_TIMEOUT_MS);
	struct mig_record rec;
	r = mig_read_record(&rd, &rec, e, sizeof(e));
	if (r) {
		set_err(x, "waiting for the destination's confirmation: %s",
			 r == -EPIPE || r == -EPROTO || r == -ETIMEDOUT ? mig_conn_error(x->conn) :
									   e);
		goto out;
	}
	uint32_t type = IMG_SEC_TYPE(rec.f.id);
	struct mig_reply rep;
	if ((type != MIG_REC_CONFIRM && type != MIG_REC_ERROR) ||
	    mig_reply_decode(type, rec.payload, rec.len, &rep, e, sizeof(e))) {
		r = -EPROTO;
		set_err(x, "destination sent a bad confirmation");
		goto out;
	}
	if (type == MIG_REC_ERROR || rep.status) {
		r = -(int)(rep.status ? rep.status : EPROTO);
		set_err(x, "destination failed to start the guest: %s",
			 rep.msg);
		goto out;
	}
	uint64_t t_confirm = now_ns();
	/* Acknowledge (best effort): the destination then knows this side is ending. */
	enc_reset(&x->out);
	mig_put_record(&x->out, IMG_SEC_ID(MIG_REC_ACK, 0), 1, 0, NULL, 0);
	mig_conn_set_cancel(x->conn, NULL, 1000);
	(void)mig_conn_write(x->conn, x->out.buf, x->out.len);
	enc_reset(&x->out);

	uint64_t downtime_us = (t_confirm - t_pause) / 1000;
	FIG_SET({
		src.fig.state = MIG_COMPLETED;
		src.fig.end_ns = t_confirm;
		src.fig.downtime_us = downtime_us;
		src.fig.pause_us = (t_sent - t_pause) / 1000;
		src.fig.cut_pause_us = (t_c1 - t_pause) / 1000;
		src.fig.cut_sync_us = (t_c2 - t_c1) / 1000;
		src.fig.cut_pages_us = (t_c3 - t_c2) / 1000;
		src.fig.cut_state_us = (t_c4 - t_c3) / 1000;
		src.fig.cut_flush_us = (t_sent - t_c4) / 1000;
		src.fig.dest_load_us = rep.value;
		src.fig.final_pages = final_pages;
		src.fig.state_bytes = state_bytes;
		src.fig.round = round;
		src.fig.remaining_pages = 0;
		src.fig.bytes_sent = mig_conn_bytes_out(x->conn);
		if (downtime_us > target_us && !src.fig.note[0])
			snprintf(src.fig.note, sizeof(src.fig.note),
				 "downtime %.1f ms over the %llu ms target: %llu final pages, state "
				 "%llu bytes, destination load %.1f ms",
				 (double)downtime_us / 1e3, (unsigned long long)x->p.downtime_ms,
				 (unsigned long long)final_pages, (unsigned long long)state_bytes,
				 (double)rep.value / 1e3);
	});
	r = 0;
out:
	mig_reader_free(&rd);
	return r;
}

static void *mig_thread(void *arg)
{
	struct mig_ctx *x = arg;
	enc_init(&x->out);
	int r = run_migration(x);
	throttle_stop(x);
	if (r) {
		bool cancelled = r == -ECANCELED;
		if (!x->err[0])
			set_err(x, "%s", strerror(-r));
		send_error(x, r, cancelled ? "migration cancelled by the source" : x->err);
		if (x->paused)
			vm_resume(x->vm);
		x->paused = false;
		log_err("migration to %s %s: %s; the guest keeps running here", x->p.to,
			cancelled ? "cancelled" : "failed", x->err);
		FIG_SET({
			src.fig.state = cancelled ? MIG_CANCELLED : MIG_FAILED;
			src.fig.end_ns = now_ns();
			memcpy(src.fig.error, x->err, sizeof(src.fig.error));
			src.fig.error[sizeof(src.fig.error) - 1] = 0;
		});
	}
	vm_dirty_stop(x->dirty);
	mig_conn_close(x->conn);
	publish(x, r ? "migrate-failed" : "migrate-done");
	if (!r) {
		pthread_mutex_lock(&src.lock);
		log_info("migration to %s completed: downtime %.1f ms, %llu bytes", x->p.to,
			 (double)src.fig.downtime_us / 1e3,
			 (unsigned long long)src.fig.bytes_sent);
		/* Give the migrate client (polling status) a moment to read the final figures. */
		struct timespec dl;
		clock_gettime(CLOCK_REALTIME, &dl);
		dl.tv_sec += 3;
		while (!src.final_read && !atomic_load(&src.cancel))
			if (pthread_cond_timedwait(&src.cond, &src.lock, &dl))
				break;
		pthread_mutex_unlock(&src.lock);
		static char reason[300];
		snprintf(reason, sizeof(reason), "migrated to %s", x->p.to);
		vm_request_stop(x->vm, VM_EXIT_QUIT, reason);
	}
	enc_free(&x->out);
	free(x->bitmap);
	free(x->scratch);
	free(x);
	return NULL;
}

/* ---- control-socket commands ------------------------------------------------------------ */

static int arg_path(const struct json_value *req, const char *key, char *out, size_t size,
		    char *err, size_t errlen)
{
	const char *s;
	out[0] = 0;
	if (!json_get(req, key))
		return 0;
	if (json_get_string(req, key, &s) || !*s || strlen(s) >= size) {
		snprintf(err, errlen, "'%s' must be a file path", key);
		return -EINVAL;
	}
	snprintf(out, size, "%s", s);
	return 0;
}

static int arg_u64(const struct json_value *req, const char *key, uint64_t min, uint64_t max,
		   uint64_t *out, char *err, size_t errlen)
{
	if (!json_get(req, key))
		return 0;
	uint64_t v;
	if (json_get_u64(req, key, &v) || v < min || v > max) {
		snprintf(err, errlen, "'%s' must be an integer from %llu to %llu", key,
			 (unsigned long long)min, (unsigned long long)max);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

static int cmd_migrate(void *opaque, const struct json_value *req, struct jw *reply, char *err,
		       size_t errlen)
{
	struct vm *vm = opaque;
	struct mig_params p = { .downtime_ms = DEFAULT_DOWNTIME_MS,
				.max_time_s = DEFAULT_MAX_TIME_S,
				.compress = 2,
				.dirty_mode = VM_DIRTY_MANUAL };
	const char *s;
	if (json_get_string(req, "to", &s) || !*s || strlen(s) >= sizeof(p.to)) {
		snprintf(err, errlen, "'to' (HOST:PORT) is required");
		return -EINVAL;
	}
	snprintf(p.to, sizeof(p.to), "%s", s);
	int r;
	if ((r = arg_u64(req, "downtime_ms", 1, 600000, &p.downtime_ms, err, errlen)) ||
	    (r = arg_u64(req, "bandwidth_mbps", 0, 1000000, &p.bandwidth_mbps, err, errlen)) ||
	    (r = arg_u64(req, "max_time_s", 0, 86400, &p.max_time_s, err, errlen)) ||
	    (r = arg_path(req, "tls_cert", p.tls_cert, sizeof(p.tls_cert), err, errlen)) ||
	    (r = arg_path(req, "tls_key", p.tls_key, sizeof(p.tls_key), err, errlen)) ||
	    (r = arg_path(req, "tls_ca", p.tls_ca, sizeof(p.tls_ca), err, errlen)))
		return r;
	if (json_get(req, "compress")) {
		if (json_get_string(req, "compress", &s) ||
		    (strcmp(s, "off") && strcmp(s, "on") && strcmp(s, "auto"))) {
			snprintf(err, errlen, "'compress' must be on, off or auto");
			return -EINVAL;
		}
		p.compress = !strcmp(s, "off") ? 0 : !strcmp(s, "on") ? 1 : 2;
	}
	if (json_get(req, "dirty_log") &&
	    (json_get_string(req, "dirty_log", &s) || vm_dirty_mode_parse(s, &p.dirty_mode))) {
		snprintf(err, errlen, "'dirty_log' must be manual or legacy");
		return -EINVAL;
	}
	if ((p.tls_cert[0] || p.tls_key[0] || p.tls_ca[0]) &&
	    !(p.tls_cert[0] && p.tls_key[0] && p.tls_ca[0])) {
		snprintf(err, errlen, "TLS needs tls_cert, tls_key and tls_ca together");
		return -EINVAL;
	}

	pthread_mutex_lock(&src.lock);
	enum mig_state st = src.fig.state;
	pthread_mutex_unlock(&src.lock);
	if (st == MIG_SETUP || st == MIG_ACTIVE || st == MIG_COMPLETING || st == MIG_COMPLETED) {
		snprintf(err, errlen, "a migration is already %s", state_names[st]);
		return -EBUSY;
	}
	if (src.joinable) {
		pthread_join(src.thread, NULL);
		src.joinable = false;
	}
	struct vm_status vs;
	vm_get_status(vm, &vs);
	if (vs.paused)
		log_info("migration: the VM is paused; it will run on the destination");

	struct mig_ctx *x = calloc(1, sizeof(*x));
	if (!x)
		return -ENOMEM;
	x->vm = vm;
	x->p = p;
	x->t0_ns = now_ns();
	pthread_mutex_lock(&src.lock);
	memset(&src.fig, 0, sizeof(src.fig));
	src.fig.state = MIG_SETUP;
	src.fig.start_ns = x->t0_ns;
	src.p = p;
	src.committed = false;
	src.final_read = false;
	atomic_store(&src.cancel, false);
	pthread_mutex_unlock(&src.lock);
	int e = pthread_create(&src.thread, NULL, mig_thread, x);
	if (e) {
		free(x);
		FIG_SET(src.fig.state = MIG_FAILED);
		snprintf(err, errlen, "cannot start the migration thread");
		return -e;
	}
	src.joinable = true;
	jw_kv_str(reply, "state", "setup");
	jw_kv_str(reply, "to", p.to);
	return 0;
}

static int cmd_migrate_status(void *opaque, const struct json_value *req, struct jw *reply,
			      char *err, size_t errlen)
{
	pthread_mutex_lock(&src.lock);
	figures_json(&src.fig, &src.p, reply);
	if (src.fig.state == MIG_COMPLETED) {
		src.final_read = true;
		pthread_cond_broadcast(&src.cond);
	}
	pthread_mutex_unlock(&src.lock);
	return 0;
}

static int cmd_migrate_cancel(void *opaque, const struct json_value *req, struct jw *reply,
			      char *err, size_t errlen)
{
	pthread_mutex_lock(&src.lock);
	enum mig_state st = src.fig.state;
	int r = 0;
	if (st != MIG_SETUP && st != MIG_ACTIVE && st != MIG_COMPLETING) {
		snprintf(err, errlen, "no migration is running (state %s)", state_names[st]);
		r = -ENOENT;
	} else if (src.committed) {
		snprintf(err, errlen, "too late to cancel: the destination is starting the guest");
		r = -EBUSY;
	} else {
		atomic_store(&src.cancel, true);
		jw_kv_str(reply, "state", "cancelling");
	}
	pthread_mutex_unlock(&src.lock);
	return r;
}

static const char *const migrate_args[] = { "to",	"downtime_ms", "bandwidth_mbps",
					    "max_time_s", "compress",	   "dirty_log",
					    "tls_cert",	  "tls_key",	   "tls_ca",
					    NULL };

static const struct api_command mig_commands[] = {
	{ "migrate", cmd_migrate, "live-migrate the VM to a 'vmsnap receive' at HOST:PORT",
	  migrate_args },
	{ "migrate-status", cmd_migrate_status, "state and figures of the current migration",
	  NULL },
	{ "migrate-cancel", cmd_migrate_cancel, "stop a running migration (the guest stays here)",
	  NULL },
	{ NULL, NULL, NULL, NULL },
};

int mig_api_register(struct vm *vm)
{
	src.vm = vm;
	return vm_api_add_commands(vm, mig_commands, vm);
}

void mig_api_shutdown(struct vm *vm)
{
	if (src.vm != vm)
		return;
	pthread_mutex_lock(&src.lock);
	atomic_store(&src.cancel, true);
	pthread_cond_broadcast(&src.cond);
	pthread_mutex_unlock(&src.lock);
	if (src.joinable) {
		pthread_join(src.thread, NULL);
		src.joinable = false;
	}
	src.vm = NULL;
}
