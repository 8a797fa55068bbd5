/*
 * melodyd's JACK MIDI client: one JACK client with one MIDI input and one MIDI output port.
 *
 * Written by hand because the libraries we use for everything else lack two things here:
 * python-rtmidi opens a separate JACK client per port (two real-time threads, each woken
 * every period) and writes output at the start of the next cycle (up to one period late);
 * the JACK-Client package runs its process callback in Python, taking the GIL in the
 * real-time thread every period. This client's process callback never touches Python: it
 * moves events between JACK's port buffers and two lock-free single-producer /
 * single-consumer rings, and places each output event at the frame of its deadline.
 *
 * Python loads this library with ctypes (bridge/jack_native.py) after loading libjack with
 * RTLD_GLOBAL, so the jack_* symbols below resolve at load time and the build needs
 * neither JACK's headers nor its development symlink: the declarations are our own.
 *
 * Times cross the boundary as CLOCK_MONOTONIC seconds (Python's time.monotonic()).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- the part of JACK's API we use (declarations match jack/jack.h, jack/midiport.h) */
typedef struct _jack_client jack_client_t;
typedef struct _jack_port jack_port_t;
typedef uint32_t jack_nframes_t;
typedef uint64_t jack_time_t;
typedef unsigned char jack_midi_data_t;
typedef struct {
    jack_nframes_t time;
    size_t size;
    jack_midi_data_t *buffer;
} jack_midi_event_t;

enum { JackNoStartServer = 0x01, JackUseExactName = 0x02 };
enum { JackPortIsInput = 0x1, JackPortIsOutput = 0x2 };
#define JACK_DEFAULT_MIDI_TYPE "8 bit raw midi"

extern jack_client_t *jack_client_open(const char *name, int options, int *status, ...);
extern int jack_client_close(jack_client_t *client);
extern char *jack_get_client_name(jack_client_t *client);
extern jack_port_t *jack_port_register(jack_client_t *client, const char *name,
                                       const char *type, unsigned long flags,
                                       unsigned long buffer_size);
extern const char *jack_port_name(const jack_port_t *port);
extern int jack_set_process_callback(jack_client_t *client,
                                     int (*cb)(jack_nframes_t, void *), void *arg);
extern void jack_on_shutdown(jack_client_t *client, void (*cb)(void *), void *arg);
extern int jack_activate(jack_client_t *client);
extern int jack_deactivate(jack_client_t *client);
extern int jack_connect(jack_client_t *client, const char *src, const char *dst);
extern const char **jack_get_ports(jack_client_t *client, const char *name_pattern,
                                   const char *type_pattern, unsigned long flags);
extern void jack_free(void *ptr);
extern jack_port_t *jack_port_by_name(jack_client_t *client, const char *port_name);
extern const char **jack_port_get_all_connections(const jack_client_t *client,
                                                  const jack_port_t *port);
extern jack_nframes_t jack_get_sample_rate(jack_client_t *client);
extern jack_nframes_t jack_get_buffer_size(jack_client_t *client);
extern jack_time_t jack_get_time(void);
extern int jack_get_cycle_times(const jack_client_t *client, jack_nframes_t *current_frames,
                                jack_time_t *current_usecs, jack_time_t *next_usecs,
                                float *period_usecs);
extern void *jack_port_get_buffer(jack_port_t *port, jack_nframes_t nframes);
extern uint32_t jack_midi_get_event_count(void *port_buffer);
extern int jack_midi_event_get(jack_midi_event_t *event, void *port_buffer, uint32_t index);
extern void jack_midi_clear_buffer(void *port_buffer);
extern int jack_midi_event_write(void *port_buffer, jack_nframes_t time,
                                 const jack_midi_data_t *data, size_t data_size);

/* ---- rings */
/* Longest message carried; longer ones (large SysEx) are dropped and counted: melodyd
 * reads notes, controllers and clock, and sends only 3-byte channel messages. */
#define MM_EVENT_BYTES 64
#define MM_RING_SIZE 4096 /* events; a power of two */
#define MIDI_CLOCK 0xF8

typedef struct {
    jack_time_t usecs; /* JACK time of the event (input: arrival frame; output: deadline) */
    /* Input only: the arrival as CLOCK_MONOTONIC seconds, converted with the client's
     * one offset, so events of one frame (a tick and a note played on it) keep exactly
     * the same time instead of each getting its own microsecond-noisy measurement. */
    double monotonic_s;
    uint32_t size;
    jack_midi_data_t data[MM_EVENT_BYTES];
} mm_event;

typedef struct {
    mm_event slots[MM_RING_SIZE];
    _Atomic uint32_t head; /* next slot the producer writes */
    _Atomic uint32_t tail; /* next slot the consumer reads */
} mm_ring;

static mm_event *ring_reserve(mm_ring *ring) {
    uint32_t head = atomic_load_explicit(&ring->head, memory_order_relaxed);
    uint32_t tail = atomic_load_explicit(&ring->tail, memory_order_acquire);
    if (head - tail >= MM_RING_SIZE) return NULL;
    return &ring->slots[head & (MM_RING_SIZE - 1)];
}

static void ring_commit(mm_ring *ring) {
    atomic_fetch_add_explicit(&ring->head, 1, memory_order_release);
}

static mm_event *ring_peek(mm_ring *ring) {
    uint32_t tail = atomic_load_explicit(&ring->tail, memory_order_relaxed);
    uint32_t head = atomic_load_explicit(&ring->head, memory_order_acquire);
    if (tail == head) return NULL;
    return &ring->slots[tail & (MM_RING_SIZE - 1)];
}

static void ring_pop(mm_ring *ring) {
    atomic_fetch_add_explicit(&ring->tail, 1, memory_order_release);
}

/* ---- the client */
typedef struct {
    jack_client_t *client;
    jack_port_t *in;
    jack_port_t *out;
    int notify_fd; /* write end of a non-blocking pipe: one byte when input arrives */
    /* MIDI clock ticks (24 per beat) wake the reader only every `clock_batch`-th tick:
     * each keeps its own time, so nothing is lost by taking a few at once, and a DAW's
     * running transport wakes an idle melodyd 8 times a second at 120 BPM, not 48. */
    uint32_t clock_batch;
    uint32_t clocks_waiting; /* touched by the process thread only */
    mm_ring in_ring;
    mm_ring out_ring;
    _Atomic uint64_t in_dropped;   /* input lost: ring full or message too long */
    _Atomic uint64_t out_dropped;  /* output lost: JACK's port buffer was full */
    _Atomic int shut_down;         /* the server went away */
    _Atomic int in_shutdown_cb;    /* a libjack thread is inside on_shutdown: mm_close waits */
    _Atomic uint64_t cycles;       /* process callbacks completed: mm_drain waits on it */
    /* JACK time minus CLOCK_MONOTONIC in nanoseconds, one value for input and output.
     * Written by the sending thread only (mm_send), read by the process thread. */
    _Atomic int64_t offset_ns;
    double offset_checked_s; /* monotonic time of the last check: sending thread only */
} mm_client;

static double monotonic_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* JACK time minus CLOCK_MONOTONIC, in microseconds (JACK2 on Linux uses the same clock,
 * but measuring keeps us right on builds that do not). Best of a few readings: a thread
 * preempted between its two clock reads would otherwise skew the answer. */
static double measure_offset_us(void) {
    double best_offset = 0.0, best_window = 1e9;
    for (int i = 0; i < 5; i++) {
        double before = monotonic_s();
        jack_time_t jack = jack_get_time();
        double after = monotonic_s();
        if (after - before < best_window) {
            best_window = after - before;
            best_offset = (double)jack - (before + after) * 0.5e6;
        }
    }
    return best_offset;
}

/* How far a fresh measurement must move before the client adopts it: real drift between
 * the clocks, not measuring noise. Keeping one offset is what lets two messages sent for
 * the same moment land in the same frame (a per-message offset put them a frame apart). */
#define MM_OFFSET_SLACK_US 20.0
#define MM_OFFSET_CHECK_S 1.0

static double client_offset_us(mm_client *c) {
    return (double)atomic_load_explicit(&c->offset_ns, memory_order_relaxed) * 1e-3;
}

/* Sending thread: re-check the offset once a second, keep it unless it drifted. */
static double refreshed_offset_us(mm_client *c) {
    double now = monotonic_s();
    if (now - c->offset_checked_s >= MM_OFFSET_CHECK_S) {
        c->offset_checked_s = now;
        double fresh = measure_offset_us();
        double drift = fresh - client_offset_us(c);
        if (drift > MM_OFFSET_SLACK_US || drift < -MM_OFFSET_SLACK_US)
            atomic_store_explicit(&c->offset_ns, (int64_t)(fresh * 1e3), memory_order_relaxed);
    }
    return client_offset_us(c);
}

static void notify(mm_client *c) {
    if (c->notify_fd >= 0) {
        char byte = 1;
        /* A full pipe already means "wake up": ignore EAGAIN. */
        ssize_t ignored = write(c->notify_fd, &byte, 1);
        (void)ignored;
    }
}

static int process(jack_nframes_t nframes, void *arg) {
    mm_client *c = arg;
    jack_nframes_t cycle_frames;
    jack_time_t cycle_us, next_us;
    float period_us;
    if (jack_get_cycle_times(c->client, &cycle_frames, &cycle_us, &next_us, &period_us) != 0
        || next_us <= cycle_us) {
        cycle_us = jack_get_time();
        next_us = cycle_us + (jack_time_t)(1e6 * nframes / jack_get_sample_rate(c->client));
    }
    double us_per_frame = (double)(next_us - cycle_us) / nframes;
    double offset_us = client_offset_us(c); /* one offset for the whole cycle */

    /* Input: each event keeps the time of its own frame. */
    void *in_buffer = jack_port_get_buffer(c->in, nframes);
    uint32_t count = jack_midi_get_event_count(in_buffer);
    int queued = 0;
    for (uint32_t i = 0; i < count; i++) {
        jack_midi_event_t event;
        if (jack_midi_event_get(&event, in_buffer, i) != 0) continue;
        mm_event *slot = event.size <= MM_EVENT_BYTES ? ring_reserve(&c->in_ring) : NULL;
        if (slot == NULL) {
            atomic_fetch_add_explicit(&c->in_dropped, 1, memory_order_relaxed);
            continue;
        }
        slot->usecs = cycle_us + (jack_time_t)(event.time * us_per_frame);
        slot->monotonic_s = ((double)slot->usecs - offset_us) * 1e-6;
        slot->size = (uint32_t)event.size;
        memcpy(slot->data, event.buffer, event.size);
        ring_commit(&c->in_ring);
        if (event.size == 1 && event.buffer[0] == MIDI_CLOCK) {
            if (++c->clocks_waiting < c->clock_batch) continue;
        }
        c->clocks_waiting = 0;
        queued = 1;
    }
    if (queued) notify(c);

    /* Output: every event due before the next cycle, at the frame of its deadline; late
     * ones at frame 0. Frames never go backwards (JACK requires ordered events). */
    void *out_buffer = jack_port_get_buffer(c->out, nframes);
    jack_midi_clear_buffer(out_buffer);
    jack_nframes_t last_frame = 0;
    mm_event *event;
    while ((event = ring_peek(&c->out_ring)) != NULL) {
        if (event->usecs >= next_us) break; /* a later cycle's: the ring is in time order */
        jack_nframes_t frame = 0;
        if (event->usecs > cycle_us) {
            frame = (jack_nframes_t)((event->usecs - cycle_us) / us_per_frame);
            if (frame >= nframes) frame = nframes - 1;
        }
        if (frame < last_frame) frame = last_frame;
        if (jack_midi_event_write(out_buffer, frame, event->data, event->size) != 0) {
            if (last_frame == 0 && frame == 0) {
                /* Cannot fit even into an empty buffer: drop it rather than block all. */
                atomic_fetch_add_explicit(&c->out_dropped, 1, memory_order_relaxed);
                ring_pop(&c->out_ring);
                continue;
            }
            break; /* the buffer is full: the rest go out next cycle */
        }
        last_frame = frame;
        ring_pop(&c->out_ring);
    }
    atomic_fetch_add_explicit(&c->cycles, 1, memory_order_release);
    return 0;
}

/* Runs on a libjack thread (the process thread on its way out, or the notification
 * thread). Once Python sees `shut_down` it may close the client while this still runs;
 * libjack does not join a process thread that ended itself, so mm_close waits on
 * `in_shutdown_cb` before freeing `c` (and before Python closes the pipe `notify` writes
 * to). Nothing here touches `c` after the decrement. */
static void on_shutdown(void *arg) {
    mm_client *c = arg;
    atomic_fetch_add(&c->in_shutdown_cb, 1);
    atomic_store(&c->shut_down, 1);
    notify(c);
    atomic_fetch_sub(&c->in_shutdown_cb, 1);
}

static void set_error(char *error, size_t error_size, const char *what) {
    if (error != NULL && error_size > 0) snprintf(error, error_size, "%s", what);
}

/* Open the client with its two ports and activate it; NULL (and `error`) on failure.
 * Input wakes the reader through `notify_fd`; clock ticks only every `clock_batch`-th. */
mm_client *mm_open(const char *client_name, const char *in_name, const char *out_name,
                   int notify_fd, uint32_t clock_batch, char *error, size_t error_size) {
    mm_client *c = calloc(1, sizeof(mm_client));
    if (c == NULL) {
        set_error(error, error_size, "out of memory");
        return NULL;
    }
    c->notify_fd = notify_fd;
    c->clock_batch = clock_batch > 0 ? clock_batch : 1;
    int status = 0;
    c->client = jack_client_open(client_name, JackNoStartServer, &status);
    if (c->client == NULL) {
        char what[96];
        snprintf(what, sizeof(what), "no JACK server answered (status 0x%x)", status);
        set_error(error, error_size, what);
        free(c);
        return NULL;
    }
    c->in = jack_port_register(c->client, in_name, JACK_DEFAULT_MIDI_TYPE, JackPortIsInput, 0);
    c->out = jack_port_register(c->client, out_name, JACK_DEFAULT_MIDI_TYPE,
                                JackPortIsOutput, 0);
    if (c->in == NULL || c->out == NULL) {
        set_error(error, error_size, "JACK refused to register the ports (name taken?)");
        jack_client_close(c->client);
        free(c);
        return NULL;
    }
    atomic_store(&c->offset_ns, (int64_t)(measure_offset_us() * 1e3));
    c->offset_checked_s = monotonic_s();
    jack_set_process_callback(c->client, process, c);
    jack_on_shutdown(c->client, on_shutdown, c);
    if (jack_activate(c->client) != 0) {
        set_error(error, error_size, "JACK refused to activate the client");
        jack_client_close(c->client);
        free(c);
        return NULL;
    }
    return c;
}

static void sleep_us(long usecs) {
    struct timespec ts = {usecs / 1000000, (usecs % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* Wait until every queued output event has been written into JACK's port buffer and the
 * cycle that wrote it has completed (so the ports it is connected to have read it), for
 * at most `timeout_s`. Call before mm_close: deactivating with events still in the ring
 * loses them, and with them a stop's note-offs and all-notes-off. Returns 0 once drained,
 * -1 on timeout, -3 if the server has gone (nothing can leave any more). */
int mm_drain(mm_client *c, double timeout_s) {
    double end = monotonic_s() + timeout_s;
    for (;;) {
        if (atomic_load(&c->shut_down)) return -3;
        if (ring_peek(&c->out_ring) == NULL) break;
        if (monotonic_s() >= end) return -1;
        sleep_us(500);
    }
    /* The last event left in a cycle that may still be running: wait for two more ends
     * of cycle, so that cycle and the one after it (its readers, in async mode) finish. */
    uint64_t seen = atomic_load_explicit(&c->cycles, memory_order_acquire);
    while (atomic_load_explicit(&c->cycles, memory_order_acquire) < seen + 2) {
        if (atomic_load(&c->shut_down)) return -3;
        if (monotonic_s() >= end) return -1;
        sleep_us(500);
    }
    return 0;
}

/* How long mm_close waits for a shutdown callback in flight before it leaks the client
 * rather than free memory a libjack thread is still using. */
#define MM_SHUTDOWN_CB_WAIT_S 1.0

/* Deactivate and close: after this returns no callback of ours runs again.
 *
 * Also after the server shut the client down: JACK requires jack_client_close then too
 * (jack.h, jack_on_shutdown). Skipping it leaked the client's socket and left libjack
 * holding the client, counted as open, with `c` (freed here) as its callbacks' argument;
 * jack2's next jack_client_open in this process, ours or python-rtmidi's, then finds
 * "server closed but clients still allocated" and closes and deletes every client it
 * knows, live ones of other owners included, whose later jack_client_close is a double
 * delete. On a dead server jack_client_close's requests fail harmlessly, and it still
 * deactivates: it stops a process thread that a shutdown seen first by the notification
 * thread left running.
 * Returns 0 once `c` is freed, -1 if a shutdown callback still runs and `c` was left
 * allocated (then its notify pipe must stay open too: the callback may still write). */
int mm_close(mm_client *c) {
    if (c == NULL) return 0;
    if (!atomic_load(&c->shut_down)) jack_deactivate(c->client);
    jack_client_close(c->client);
    double end = monotonic_s() + MM_SHUTDOWN_CB_WAIT_S;
    while (atomic_load(&c->in_shutdown_cb) != 0) {
        if (monotonic_s() >= end) return -1; /* still inside on_shutdown: leak it */
        sleep_us(100);
    }
    free(c);
    return 0;
}

/* Full names of our ports ("client:port"); `which` 0 = input, 1 = output. */
const char *mm_port_name(mm_client *c, int which) {
    return jack_port_name(which == 0 ? c->in : c->out);
}

/* Connect two ports by full name; 0 on success or when already connected. */
int mm_connect(mm_client *c, const char *source, const char *destination) {
    int result = jack_connect(c->client, source, destination);
    return result == EEXIST ? 0 : result;
}

/* Write `names` (NULL-terminated, may be NULL) one per line into `buffer` and free them
 * with jack_free; returns the length needed (call again with more room). */
static size_t join_names(const char **names, char *buffer, size_t buffer_size) {
    size_t needed = 0;
    if (buffer_size > 0) buffer[0] = '\0';
    for (size_t i = 0; names != NULL && names[i] != NULL; i++) {
        size_t length = strlen(names[i]);
        if (needed + length + 2 <= buffer_size) {
            memcpy(buffer + needed, names[i], length);
            buffer[needed + length] = '\n';
            buffer[needed + length + 1] = '\0';
        }
        needed += length + 1;
    }
    if (names != NULL) jack_free(names);
    return needed + 1;
}

/* Names of the MIDI ports that can be read from (`outputs` 1) or written to (0), one
 * per line, into `buffer`; returns the length needed (call again with more room). */
size_t mm_list_ports(mm_client *c, int outputs, char *buffer, size_t buffer_size) {
    return join_names(jack_get_ports(c->client, NULL, JACK_DEFAULT_MIDI_TYPE,
                                     outputs ? JackPortIsOutput : JackPortIsInput),
                      buffer, buffer_size);
}

/* Names of the ports connected to the port called `port_name` (any client's), one per
 * line, into `buffer`; returns the length needed, 0 if no such port exists. */
size_t mm_connections(mm_client *c, const char *port_name, char *buffer, size_t buffer_size) {
    jack_port_t *port = jack_port_by_name(c->client, port_name);
    if (port == NULL) {
        if (buffer_size > 0) buffer[0] = '\0';
        return 0;
    }
    return join_names(jack_port_get_all_connections(c->client, port), buffer, buffer_size);
}

/* Queue `data` for output at CLOCK_MONOTONIC time `when_s` (<= 0: as soon as possible).
 * Events must be queued in time order. 0 on success, -1 if the ring is full, -2 if the
 * message is too long, -3 if the server has gone. */
int mm_send(mm_client *c, const uint8_t *data, uint32_t size, double when_s) {
    if (atomic_load(&c->shut_down)) return -3;
    if (size > MM_EVENT_BYTES) return -2;
    mm_event *slot = ring_reserve(&c->out_ring);
    if (slot == NULL) return -1;
    slot->usecs = when_s <= 0 ? 0 : (jack_time_t)(when_s * 1e6 + refreshed_offset_us(c));
    slot->size = size;
    memcpy(slot->data, data, size);
    ring_commit(&c->out_ring);
    return 0;
}

/* Take the oldest input event: its bytes into `data` (room for MM_EVENT_BYTES), its
 * arrival as CLOCK_MONOTONIC seconds into `when_s`. Returns its size, 0 if none waits. */
uint32_t mm_receive(mm_client *c, uint8_t *data, double *when_s) {
    mm_event *event = ring_peek(&c->in_ring);
    if (event == NULL) return 0;
    uint32_t size = event->size;
    memcpy(data, event->data, size);
    *when_s = event->monotonic_s;
    ring_pop(&c->in_ring);
    return size;
}

/* 1 once the JACK server has shut the client down. */
int mm_shut_down(mm_client *c) { return atomic_load(&c->shut_down); }

/* Messages lost so far: `which` 0 = input, 1 = output. */
uint64_t mm_dropped(mm_client *c, int which) {
    return atomic_load(which == 0 ? &c->in_dropped : &c->out_dropped);
}

uint32_t mm_sample_rate(mm_client *c) { return jack_get_sample_rate(c->client); }
uint32_t mm_period_frames(mm_client *c) { return jack_get_buffer_size(c->client); }
int mm_event_bytes(void) { return MM_EVENT_BYTES; }
