/* SPDX-License-Identifier: MIT */
/*
 * The destination side of a live migration (`vmsnap receive`): accept one source, check it
 * can run here before any page, build the VM from the stream, confirm once the guest runs.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "formats/image.h"
#include "migrate/conn.h"
#include "migrate/migrate.h"
#include "migrate/stream.h"
#include "util/log.h"
#include "vmm/gmem.h"
#include "vmm/vm.h"

#define POPULATE_CHUNK (4ull << 20)
#define START_TIMEOUT_MS 30000
#define ACK_TIMEOUT_MS 5000

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

struct mig_receive {
	struct vm *vm;
	struct mig_conn *conn;
	struct mig_reader rd;
	uint64_t t_end_ns;
	pthread_t confirm;
	bool confirm_started;
	atomic_bool quit;
	bool acked;
	/* The confirmation: sent on the main thread as the vCPUs start (confirm_now), or an
	 * error sent by the confirmation thread when they do not start in time. */
	pthread_mutex_t clock;
	pthread_cond_t ccond;
	enum { CONFIRM_WAITING, CONFIRM_SENT, CONFIRM_SEND_FAILED, CONFIRM_GAVE_UP } cstate;
	pthread_t populate;
	bool populate_started;
	atomic_bool populate_stop;
	uint64_t populate_us;
	char cpu_template[64];
	char err[1024];
};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void __attribute__((format(printf, 2, 3))) rx_err(struct mig_receive *rx, const char *fmt,
							  ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(rx->err, sizeof(rx->err), fmt, ap);
	va_end(ap);
}

static int send_reply(struct mig_receive *rx, uint32_t type, uint32_t status, uint64_t value,
		      const char *msg)
{
	struct enc e, pe;
	struct mig_reply rep = { .major = MIG_PROTO_MAJOR,
				 .minor = MIG_PROTO_MINOR,
				 .caps = MIG_CAPS_KNOWN,
				 .status = status,
				 .value = value };
	snprintf(rep.msg, sizeof(rep.msg), "%s", msg ? msg : "");
	enc_init(&e);
	enc_init(&pe);
	mig_reply_encode(&pe, type, &rep);
	mig_put_record(&e, IMG_SEC_ID(type, 0), 1, IMG_SEC_REQUIRED, pe.buf, pe.len);
	int r = enc_error(&e) ? enc_error(&e) : mig_conn_write(rx->conn, e.buf, e.len);
	enc_free(&e);
	enc_free(&pe);
	return r;
}

/* Back guest RAM in bulk while pages arrive: first touch is what bounds the receive. */
static void *populate_main(void *arg)
{
	struct mig_receive *rx = arg;
	struct gmem *m = vm_memory(rx->vm);
	uint64_t t0 = now_ns();
	if (m->fd >= 0)
		(void)fallocate(m->fd, 0, 0, (off_t)m->size);
	for (uint64_t off = 0; off < m->size && !atomic_load(&rx->populate_stop);
	     off += POPULATE_CHUNK) {
		uint64_t len = m->size - off < POPULATE_CHUNK ? m->size - off : POPULATE_CHUNK;
		if (madvise(m->host + off, len, MADV_POPULATE_WRITE) < 0)
			break; /* older kernel: pages get backed on first write instead */
	}
	rx->populate_us = (now_ns() - t0) / 1000;
	return NULL;
}

/* Can this host run the source's guest? Creates the VM when it can. */
static int check_and_create(struct mig_receive *rx, const struct mig_hello *h,
			    const struct mig_receive_opts *o, char *why, size_t whylen)
{
	const struct img_vm_config *vc = &h->hdr.vm;
	struct img_host_cpu here;
	img_host_cpu_probe(&here);
	char msg[256] = "";
	if (!img_host_cpu_compatible(&h->hdr.cpu, &here, msg, sizeof(msg))) {
		snprintf(why, whylen, "this host's CPU lacks features the guest uses: %s", msg);
		return -ENOTSUP;
	}
	if (vc->vcpus < 1 || vc->vcpus > VM_MAX_CPUS) {
		snprintf(why, whylen, "%u vCPUs: this vmsnap runs 1..%d", vc->vcpus, VM_MAX_CPUS);
		return -ENOTSUP;
	}
	struct gmem lay;
	memset(&lay, 0, sizeof(lay));
	bool same = vc->ram_size <= VM_MAX_MEM && gmem_layout(&lay, vc->ram_size) == 0 &&
		    lay.nregions == vc->nregions;
	for (unsigned int i = 0; same && i < lay.nregions; i++)
		same = lay.regions[i].gpa == vc->regions[i].gpa &&
		       lay.regions[i].size == vc->regions[i].size &&
		       lay.regions[i].offset == vc->regions[i].offset;
	if (!same) {
		snprintf(why, whylen, "RAM layout of the source (%llu bytes in %u regions) differs "
				      "from what this vmsnap builds",
			 (unsigned long long)vc->ram_size, vc->nregions);
		return -ENOTSUP;
	}
	snprintf(rx->cpu_template, sizeof(rx->cpu_template), "%s", vc->cpu_template);
	struct vm_config cfg = {
		.mem_size = vc->ram_size,
		.ncpus = vc->vcpus,
		.console = o->console,
		.api_path = o->api_path,
		.mem_backend = o->mem_backend,
		.cpu_template = rx->cpu_template,
		.disks = o->disks,
		.ndisks = o->ndisks,
		.nets = o->nets,
		.nnets = o->nnets,
		.restore = true,
	};
	int r = vm_create(&cfg, &rx->vm);
	if (r) {
		snprintf(why, whylen, "cannot create a %llu MiB, %u-vCPU VM here: %s",
			 (unsigned long long)(vc->ram_size >> 20), vc->vcpus, strerror(-r));
		return r;
	}
	uint64_t tsc = vm_tsc_khz(rx->vm);
	if (tsc && h->hdr.tsc_khz) {
		uint64_t d = tsc > h->hdr.tsc_khz ? tsc - h->hdr.tsc_khz : h->hdr.tsc_khz - tsc;
		if (d * 4000 > tsc) { /* more than 250 ppm */
			snprintf(why, whylen,
				 "TSC frequency differs: source %llu kHz, this host %llu kHz (guest "
				 "time would drift)",
				 (unsigned long long)h->hdr.tsc_khz, (unsigned long long)tsc);
			return -ENOTSUP;
		}
	}
	for (uint32_t i = 0; i < h->ndevices; i++) {
		const struct mig_device_desc *dd = &h->devices[i];
		if (!vm_device_known(rx->vm, dd->id, dd->version)) {
			snprintf(why, whylen,
				 "device '%s' (id %u, state version %u) is unknown here or newer "
				 "than this vmsnap reads",
				 dd->name, dd->id, dd->version);
			return -ENOTSUP;
		}
	}
	if (h->ndevices != vm_device_count(rx->vm))
		log_warn("receive: the source has %u devices, this machine %u: the others start "
			 "from reset",
			 h->ndevices, vm_device_count(rx->vm));
	return 0;
}

static int receive_stream(struct mig_receive *rx, const struct mig_hello *h,
			  struct mig_receive_stats *st)
{
	struct gmem *m = vm_memory(rx->vm);
	uint64_t ram_pages = m->size / IMG_PAGE_SIZE;
	unsigned int ncpus = h->hdr.vm.vcpus;
	bool vcpu_loaded[VM_MAX_CPUS] = { false };
	unsigned int nvcpus = 0, ndevs = 0;
	bool arch = false;
	char e[512], name[40];
	mig_reader_set_ram(&rx->rd, m->host, ram_pages, m->fd);
	for (;;) {
		struct mig_record rec;
		int r = mig_read_record(&rx->rd, &rec, e, sizeof(e));
		if (r) {
			rx_err(rx, "%s%s%s", e, r == -EPIPE || r == -EPROTO ? ": " : "",
			       r == -EPIPE || r == -EPROTO ? mig_conn_error(rx->conn) : "");
			return r;
		}
		uint32_t type = IMG_SEC_TYPE(rec.f.id), inst = IMG_SEC_INST(rec.f.id);
		struct dec d;
		dec_init(&d, rec.payload, rec.len);
		switch (type) {
		case MIG_REC_RUN: {
			struct img_run run;
			r = mig_run_apply(&rec, m->host, ram_pages, inst == 0, &run, e, sizeof(e));
			if (r) {
				rx_err(rx, "record %llu: %s", (unsigned long long)rx->rd.records, e);
				return r;
			}
			st->pages += run.npages;
			break;
		}
		case MIG_REC_ROUND:
			st->rounds++;
			break;
		case MIG_REC_DRAIN: {
			/* Everything before this record is in RAM: say so, with the token. */
			uint64_t token = dec_u64_val(&d);
			if (dec_error(&d)) {
				rx_err(rx, "record %llu: malformed drain record",
				       (unsigned long long)rx->rd.records);
				return -EBADMSG;
			}
			struct enc te, re;
			enc_init(&te);
			enc_init(&re);
			enc_u64(&te, token);
			mig_put_record(&re, IMG_SEC_ID(MIG_REC_DRAINED, 0), 1, 0, te.buf, te.len);
			r = enc_error(&re) ? enc_error(&re) : mig_conn_write(rx->conn, re.buf, re.len);
			enc_free(&te);
			enc_free(&re);
			if (r) {
				rx_err(rx, "answering the source: %s", mig_conn_error(rx->conn));
				return r;
			}
			break;
		}
		case IMG_SEC_VCPU:
			if (inst >= ncpus || vcpu_loaded[inst]) {
				rx_err(rx, "unexpected state for vCPU %u", inst);
				return -EPROTO;
			}
			r = vm_vcpu_load(rx->vm, inst, &d, rec.f.version);
			if (r) {
				rx_err(rx, "cannot load vCPU %u's state (version %u): %s", inst,
				       rec.f.version, strerror(-r));
				return r;
			}
			vcpu_loaded[inst] = true;
			nvcpus++;
			break;
		case IMG_SEC_VM:
			if (arch) {
				rx_err(rx, "VM state sent twice");
				return -EPROTO;
			}
			r = vm_arch_load(rx->vm, &d, rec.f.version);
			if (r) {
				rx_err(rx, "cannot load the VM's state (version %u): %s",
				       rec.f.version, strerror(-r));
				return r;
			}
			arch = true;
			break;
		case IMG_SEC_DEVICE:
			r = vm_device_load(rx->vm, (uint16_t)inst, &d, rec.f.version);
			if (r) {
				rx_err(rx, "cannot load device %u's state (version %u): %s", inst,
				       rec.f.version, strerror(-r));
				return r;
			}
			ndevs++;
			break;
		case MIG_REC_END: {
			struct mig_end end;
			r = mig_end_decode(rec.payload, rec.len, &end, e, sizeof(e));
			if (r) {
				rx_err(rx, "%s", e);
				return r;
			}
			if (end.nvcpus != ncpus || nvcpus != ncpus || !arch ||
			    end.ndevices != ndevs || ndevs != h->ndevices) {
				rx_err(rx,
				       "incomplete state at the end of the stream: %u/%u vCPUs, VM "
				       "state %s, %u/%u devices",
				       nvcpus, ncpus, arch ? "yes" : "no", ndevs, end.ndevices);
				return -EPROTO;
			}
			return 0;
		}
		case MIG_REC_ERROR: {
			struct mig_reply rep;
			if (mig_reply_decode(type, rec.payload, rec.len, &rep, e, sizeof(e)))
				snprintf(rep.msg, sizeof(rep.msg), "(unreadable reason)");
			rx_err(rx, "the source gave up: %s", rep.msg);
			return -ECANCELED;
		}
		case MIG_REC_HELLO:
		case MIG_REC_WELCOME:
		case MIG_REC_CONFIRM:
		case MIG_REC_ACK:
		case MIG_REC_DRAINED:
			rx_err(rx, "record %llu: unexpected %s record",
			       (unsigned long long)rx->rd.records,
			       mig_record_name(rec.f.id, name, sizeof(name)));
			return -EPROTO;
		default:
			break; /* an optional record of a newer source: skipped */
		}
	}
}

int mig_receive(const struct mig_receive_opts *o, struct mig_receive **out,
		struct mig_receive_stats *st)
{
	struct mig_receive *rx = calloc(1, sizeof(*rx));
	struct mig_hello *h = calloc(1, sizeof(*h));
	int lfd = -1, r;
	char e[1024];
	if (!rx || !h) {
		free(rx);
		free(h);
		return -ENOMEM;
	}
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&rx->ccond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_init(&rx->clock, NULL);
	memset(st, 0, sizeof(*st));
	r = mig_listen(o->listen, &lfd, e, sizeof(e));
	if (r) {
		log_err("receive: %s", e);
		goto out;
	}
	if (o->listening)
		o->listening(o->listening_arg, mig_listen_port(lfd));
	r = mig_conn_accept(lfd, &o->tls, o->accept_timeout_s ? o->accept_timeout_s * 1000 : -1,
			    &rx->conn, e, sizeof(e));
	close(lfd);
	if (r) {
		log_err("receive: %s", e);
		goto out;
	}
	uint64_t t0 = now_ns();
	snprintf(st->transport, sizeof(st->transport), "%s", mig_conn_describe(rx->conn));
	mig_conn_set_cancel(rx->conn, NULL,
			    (o->stall_timeout_s ? o->stall_timeout_s : 30) * 1000);
	mig_reader_init(&rx->rd, mig_conn_read_cb, rx->conn);

	uint8_t magic[MIG_MAGIC_LEN];
	r = mig_conn_read(rx->conn, magic, sizeof(magic));
	if (r || memcmp(magic, MIG_MAGIC, MIG_MAGIC_LEN)) {
		rx_err(rx, "%s: %s", mig_conn_peer(rx->conn),
		       r ? mig_conn_error(rx->conn) :
			   "not a vmsnap migration stream (bad magic); connection refused");
		r = r ? r : -EPROTO;
		goto fail;
	}
	struct mig_record rec;
	r = mig_read_record(&rx->rd, &rec, e, sizeof(e));
	if (!r && IMG_SEC_TYPE(rec.f.id) != MIG_REC_HELLO) {
		snprintf(e, sizeof(e), "the stream does not start with a hello record");
		r = -EPROTO;
	}
	if (!r)
		r = mig_hello_decode(rec.payload, rec.len, h, e, sizeof(e));
	if (r) {
		rx_err(rx, "%s: handshake: %s", mig_conn_peer(rx->conn), e);
		send_reply(rx, MIG_REC_WELCOME, (uint32_t)-r, 0, rx->err);
		goto fail;
	}
	r = check_and_create(rx, h, o, e, sizeof(e));
	if (r) {
		rx_err(rx, "refusing the migration from %s: %s", mig_conn_peer(rx->conn), e);
		send_reply(rx, MIG_REC_WELCOME, (uint32_t)-r, 0, e);
		goto fail;
	}
	const char *pop = getenv("VMSNAP_MIG_POPULATE");
	if (pop && !strcmp(pop, "1")) {
		if (pthread_create(&rx->populate, NULL, populate_main, rx) == 0)
			rx->populate_started = true;
	}
	r = send_reply(rx, MIG_REC_WELCOME, 0, 0, "ok");
	if (r) {
		rx_err(rx, "handshake: %s", mig_conn_error(rx->conn));
		goto fail;
	}
	r = receive_stream(rx, h, st);
	if (r)
		goto fail;
	rx->t_end_ns = now_ns();
	/* Stop backing RAM ahead (it may go on harmlessly while the guest starts). */
	atomic_store(&rx->populate_stop, true);
	st->populate_us = rx->populate_us;
	st->bytes = rx->rd.bytes + MIG_MAGIC_LEN;
	st->total_us = (rx->t_end_ns - t0) / 1000;
	free(h);
	*out = rx;
	return 0;
fail:
	log_err("receive: %s", rx->err);
	/* Tell the source (it resumes its guest); the link may be what failed. */
	if (r != -ECANCELED && rx->conn) {
		mig_conn_set_cancel(rx->conn, NULL, 1000);
		send_reply(rx, MIG_REC_ERROR, (uint32_t)(r < 0 ? -r : EPROTO), 0, rx->err);
	}
out:
	free(h);
	mig_receive_free(rx);
	return r;
}

struct vm *mig_receive_vm(struct mig_receive *rx)
{
	return rx->vm;
}

/*
 * vm_run()'s hook, on the main thread once every vCPU thread exists, just before they run:
 * tell the source at once (a thread of its own, or the main thread after the release, waits
 * for a core behind the guest's vCPUs: 8-20 ms of downtime here with 4 busy vCPUs on 2 cores).
 */
static void confirm_now(void *arg)
{
	struct mig_receive *rx = arg;
	pthread_mutex_lock(&rx->clock);
	if (rx->cstate == CONFIRM_WAITING) {
		uint64_t load_us = (now_ns() - rx->t_end_ns) / 1000;
		rx->cstate = send_reply(rx, MIG_REC_CONFIRM, 0, load_us, "running") ?
				     CONFIRM_SEND_FAILED :
				     CONFIRM_SENT;
	} else {
		/* Too late: the source was told to resume its copy. This one must not run. */
		vm_request_stop(rx->vm, VM_EXIT_ERROR,
				"the guest started too late here; the source resumed it");
	}
	pthread_cond_broadcast(&rx->ccond);
	pthread_mutex_unlock(&rx->clock);
}

/* Waits for the confirmation (or gives up on the start), then for the source's ACK. */
static void *confirm_main(void *arg)
{
	struct mig_receive *rx = arg;
	struct timespec dl;
	clock_gettime(CLOCK_MONOTONIC, &dl);
	dl.tv_sec += START_TIMEOUT_MS / 1000;
	pthread_mutex_lock(&rx->clock);
	while (rx->cstate == CONFIRM_WAITING && !atomic_load(&rx->quit)) {
		/* Short waits: quit is set without the lock (mig_receive_finish). */
		struct timespec now, w;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec > dl.tv_sec || (now.tv_sec == dl.tv_sec && now.tv_nsec >= dl.tv_nsec))
			break;
		w = now;
		w.tv_nsec += 50 * 1000000;
		if (w.tv_nsec >= 1000000000) {
			w.tv_sec++;
			w.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&rx->ccond, &rx->clock, &w);
	}
	if (rx->cstate == CONFIRM_WAITING) {
		rx->cstate = CONFIRM_GAVE_UP;
		pthread_mutex_unlock(&rx->clock);
		log_err("receive: the guest did not start here; telling the source to resume it");
		mig_conn_set_cancel(rx->conn, NULL, 1000);
		send_reply(rx, MIG_REC_ERROR, EIO, 0, "the destination could not start the guest");
		return NULL;
	}
	bool sent = rx->cstate == CONFIRM_SENT;
	pthread_mutex_unlock(&rx->clock);
	if (!sent) {
		log_warn("receive: cannot confirm to the source (%s): it may resume its copy of "
			 "the guest",
			 mig_conn_error(rx->conn));
		return NULL;
	}
	mig_conn_set_cancel(rx->conn, NULL, ACK_TIMEOUT_MS);
	struct mig_record rec;
	char e[256];
	if (mig_read_record(&rx->rd, &rec, e, sizeof(e)) == 0 &&
	    IMG_SEC_TYPE(rec.f.id) == MIG_REC_ACK)
		rx->acked = true;
	else
		log_warn("receive: the source did not acknowledge the confirmation (%s)",
			 mig_conn_error(rx->conn));
	return NULL;
}

int mig_receive_confirm(struct mig_receive *rx)
{
	int r = vm_on_running(rx->vm, confirm_now, rx, true);
	if (r)
		return r;
	int e = pthread_create(&rx->confirm, NULL, confirm_main, rx);
	if (e)
		return -e;
	rx->confirm_started = true;
	return 0;
}

bool mig_receive_finish(struct mig_receive *rx)
{
	atomic_store(&rx->quit, true);
	if (rx->confirm_started) {
		pthread_join(rx->confirm, NULL);
		rx->confirm_started = false;
	}
	return rx->acked;
}

void mig_receive_free(struct mig_receive *rx)
{
	if (!rx)
		return;
	mig_receive_finish(rx);
	if (rx->populate_started) {
		atomic_store(&rx->populate_stop, true);
		pthread_join(rx->populate, NULL);
	}
	mig_reader_free(&rx->rd);
	mig_conn_close(rx->conn);
	vm_destroy(rx->vm);
	pthread_cond_destroy(&rx->ccond);
	pthread_mutex_destroy(&rx->clock);
	free(rx);
}
