//! kTLS on a core: when a session is handed to the kernel, and what the
//! kernel hands back (alerts, KeyUpdate) once it has been.
//!
//! The hand-over happens where a receive would be re-armed: the session
//! must be established, hold no partial record and have no ciphertext of
//! ours waiting or in flight. Until then its receives are single-shot, so
//! no ciphertext leaves the socket for user space after the keys moved.

use std::os::fd::AsFd;

use tracing::{debug, warn};

use super::Shard;
use crate::conn::ConnKey;
use crate::tls::ktls::{self, Ciphers, Control, Decline, Support};
use crate::tls::{KernelTls, Tls};

/// TLS alert descriptions sent before dropping a kTLS connection.
const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
const ALERT_BAD_RECORD_MAC: u8 = 20;
const ALERT_INTERNAL_ERROR: u8 = 80;

/// Room for one control record's plaintext (2^14) and some slack.
const CONTROL_MAX: usize = 16 * 1024 + 256;

impl Shard {
    /// `--ktls` was given (whatever the kernel can do).
    pub(super) fn ktls_asked(&self) -> bool {
        self.cfg.tls.as_ref().is_some_and(|t| t.ktls.is_some())
    }

    /// The ciphers the kernel takes over (empty: no kTLS here).
    pub(super) fn ktls_ciphers(&self) -> Ciphers {
        self.cfg
            .tls
            .as_ref()
            .and_then(|t| t.ktls.as_ref())
            .map(Support::ciphers)
            .unwrap_or_default()
    }

    /// Counts a completed handshake that `--ktls` cannot offload because
    /// the kernel offloads nothing.
    pub(super) fn count_ktls_unavailable(&mut self) {
        if self.ktls_asked() && self.ktls_ciphers().is_empty() {
            self.stats.tls.ktls_unavailable += 1;
        }
    }

    /// At a re-arm point: hands a quiet session's keys to the kernel.
    /// Returns whether the receive may be armed now (`false`: our
    /// ciphertext goes out first, and the send's completion re-arms; or
    /// the connection was dropped).
    pub(super) fn offload_or_wait(&mut self, key: ConnKey) -> bool {
        let ciphers = self.ktls_ciphers();
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        let Some(tls) = crate::tls::user_mut(&mut conn.tls) else {
            return true;
        };
        if !tls.offload_pending() || !tls.established() || tls.has_carry() {
            // Nothing to do, or the rest of a record is still to come.
            return true;
        }
        if !tls.quiet() {
            return false;
        }
        let stats = &mut self.stats.tls;
        let declined = ktls::check(tls.version(), tls.suite(), ciphers)
            .and_then(|()| ktls::attach(conn.fd.as_fd()));
        if let Err(why) = declined {
            match why {
                Decline::Version => stats.ktls_tls12 += 1,
                Decline::Cipher => stats.ktls_cipher += 1,
                Decline::Ulp => stats.ktls_ulp += 1,
            }
            tls.decline_offload();
            return true;
        }
        // From here the session is consumed: success, or the connection
        // goes (rustls no longer has the keys to go on in user space).
        let Some(Tls::User(session)) = conn.tls.take().map(|b| *b) else {
            return true;
        };
        let installed =
            session
                .into_kernel()
                .map_err(|e| e.to_string())
                .and_then(|(secrets, kernel)| {
                    let (tx, rx) = (&secrets.tx, &secrets.rx);
                    ktls::install(conn.fd.as_fd(), (tx.0, &tx.1), (rx.0, &rx.1))
                        .map_err(|e| e.to_string())
                        .map(|()| kernel)
                });
        match installed {
            Ok(kernel) => {
                conn.tls = Some(Box::new(Tls::Kernel(Box::new(KernelTls::new(kernel)))));
                stats.ktls_offloaded += 1;
                true
            }
            Err(e) => {
                warn!(
                    core = self.id,
                    "kTLS: handing the keys over failed: {e}; closing"
                );
                stats.ktls_failed += 1;
                self.abort(key);
                false
            }
        }
    }

    /// A receive on a kTLS connection failed with `EIO`: the kernel holds
    /// a record that is not application data. Reads and acts on it.
    pub(super) fn on_kernel_record(&mut self, key: ConnKey, lingering: bool, answering: bool) {
        let mut buf = std::mem::take(&mut self.tls_plain);
        buf.clear();
        buf.resize(CONTROL_MAX, 0);
        let Some(conn) = self.conns.get_mut(key) else {
            self.tls_plain = buf;
            return;
        };
        let fd = conn.fd.as_fd();
        let read = ktls::read_control(fd, &mut buf);
        self.tls_plain = buf;
        let stats = &mut self.stats.tls;
        let Some(Tls::Kernel(kernel)) = conn.tls.as_deref_mut() else {
            return;
        };
        match read {
            Ok(Control::CloseNotify) => {
                stats.ktls_close_notify += 1;
                stats.peer_close_notify += 1;
                self.on_peer_eof(key, lingering, answering);
            }
            Ok(Control::KeyUpdate { requested }) => {
                stats.ktls_key_updates += 1;
                match kernel.key_update(fd, requested) {
                    Ok(()) => {
                        stats.ktls_rekeys += 1;
                        self.rearm.push(key);
                    }
                    Err(e) => {
                        stats.ktls_rekeys_refused += 1;
                        debug!(core = self.id, "kTLS: the kernel refused a KeyUpdate: {e}");
                        kernel.fatal_alert(fd, ALERT_INTERNAL_ERROR);
                        self.abort(key);
                    }
                }
            }
            Ok(Control::Alert(level, desc)) => {
                stats.ktls_alerts += 1;
                debug!(core = self.id, level, desc, "kTLS: alert from the peer");
                self.abort(key);
            }
            Ok(Control::Unexpected(t)) => {
                stats.ktls_unexpected += 1;
                debug!(core = self.id, record_type = t, "kTLS: unexpected record");
                kernel.fatal_alert(fd, ALERT_UNEXPECTED_MESSAGE);
                self.abort(key);
            }
            Ok(Control::None) => self.rearm.push(key),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.rearm.push(key),
            Err(e) => {
                stats.record_errors += 1;
                debug!(core = self.id, "kTLS: reading a control record: {e}");
                self.abort(key);
            }
        }
    }

    /// A receive on a kTLS connection failed otherwise: a record that does
    /// not decrypt (`EBADMSG`) or is malformed. Counted, alerted, dropped.
    pub(super) fn on_kernel_record_error(&mut self, key: ConnKey, errno: i32) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if let Some(Tls::Kernel(kernel)) = conn.tls.as_deref() {
            if errno == libc::EBADMSG || errno == libc::EMSGSIZE || errno == libc::EINVAL {
                self.stats.tls.record_errors += 1;
                kernel.fatal_alert(conn.fd.as_fd(), ALERT_BAD_RECORD_MAC);
            }
        }
        self.abort(key);
    }
}
