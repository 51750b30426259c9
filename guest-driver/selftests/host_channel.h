/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The host request channel: a guest program asks the launcher
 * (qemu-scripts/run-vm) to do something on the host, such as pausing the
 * VM over QMP, and waits for its answer. The channel is the guest's third
 * serial port (/dev/ttyS2); the protocol is one line each way:
 *   guest: CENALLOC-HOST <id> <verb> [args]
 *   host:  CENALLOC-HOST-REPLY <id> ok|error <text>
 * The verbs are listed in run-vm's header.
 */
#ifndef HOST_CHANNEL_H
#define HOST_CHANNEL_H

#include <stdbool.h>
#include <stddef.h>

#include "tap.h"

/*
 * Send "<verb> [args]" (printf format) and wait up to @timeout_s seconds for
 * the reply; its text goes to @reply (may be NULL). Returns 0 when the host
 * answered ok, 1 when it answered error, -ENODEV without a channel,
 * -ETIMEDOUT without an answer, another -errno on I/O errors.
 */
int ca_host_request(char *reply, size_t reply_len, int timeout_s,
		    const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* True if the launcher answers "hello" (cached after the first call). */
bool ca_host_available(void);

/*
 * Make the device's answers lie as @spec says (the launcher's "fault"
 * verb, src/fault.rs; "none" ends it). A failed CHECK when it cannot.
 */
bool ca_host_fault(const char *spec);

/* TAP_PASS when the launcher can make the device lie, else a skip. */
enum tap_result ca_host_need_faults(void);

#endif /* HOST_CHANNEL_H */
