//! kTLS: after rustls has done the handshake, the session's keys go to the
//! kernel, which encrypts what the connection sends and decrypts what it
//! receives, so the core's ring sends and receives plain bytes again (no
//! user-space copy through a ciphertext buffer, no rustls state per idle
//! connection beyond what a key update needs).
//!
//! Only TLS 1.3 with AES-GCM or ChaCha20-Poly1305 is handed over, and only
//! the ciphers a startup [`probe`] found the kernel to take both ways;
//! everything else stays in user space (rustls), counted by reason.
//! What the kernel cannot decrypt as application data (alerts, KeyUpdate)
//! it hands back as a control record: [`read_control`].

use std::io;
use std::mem::size_of;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{CipherSuite, ConnectionTrafficSecrets, ProtocolVersion};

/// TLS record content types (RFC 8446 §5.1).
const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;
/// Handshake message type of a KeyUpdate (RFC 8446 §4.6.3).
const HANDSHAKE_KEY_UPDATE: u8 = 24;

/// The AEADs the kernel can take over, as a set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ciphers(u8);

/// One AEAD the kernel may take over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Cipher {
    const ALL: [Cipher; 3] = [
        Cipher::Aes128Gcm,
        Cipher::Aes256Gcm,
        Cipher::Chacha20Poly1305,
    ];

    /// The cipher of a TLS 1.3 suite.
    fn of_suite(suite: CipherSuite) -> Option<Cipher> {
        match suite {
            CipherSuite::TLS13_AES_128_GCM_SHA256 => Some(Cipher::Aes128Gcm),
            CipherSuite::TLS13_AES_256_GCM_SHA384 => Some(Cipher::Aes256Gcm),
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => Some(Cipher::Chacha20Poly1305),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Cipher::Aes128Gcm => "AES-128-GCM",
            Cipher::Aes256Gcm => "AES-256-GCM",
            Cipher::Chacha20Poly1305 => "ChaCha20-Poly1305",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl Ciphers {
    /// Whether the set holds `c`.
    pub(crate) fn has(self, c: Cipher) -> bool {
        self.0 & c.bit() != 0
    }

    fn with(self, c: Cipher) -> Ciphers {
        Ciphers(self.0 | c.bit())
    }

    /// Whether the set is empty.
    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::fmt::Display for Ciphers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = Cipher::ALL
            .into_iter()
            .filter(|c| self.has(*c))
            .map(Cipher::name)
            .collect();
        write!(f, "{}", names.join(", "))
    }
}

/// What the kernel was found to offload, once per process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Support {
    /// TLS 1.3 both ways for these ciphers (never empty).
    Available(Ciphers),
    /// No offload; why (the kernel's error, e.g. no `tls` module).
    Unavailable(String),
}

impl Support {
    /// The ciphers the kernel takes (empty when unavailable).
    pub(crate) fn ciphers(&self) -> Ciphers {
        match self {
            Support::Available(c) => *c,
            Support::Unavailable(_) => Ciphers::default(),
        }
    }

    /// One line for the startup log.
    pub fn describe(&self) -> String {
        match self {
            Support::Available(c) => format!("kTLS: the kernel offloads TLS 1.3 {c}"),
            Support::Unavailable(why) => format!(
                "kTLS unavailable ({why}): every TLS connection stays in user space (rustls)"
            ),
        }
    }
}

/// Finds what the kernel offloads: for each cipher, a loopback TCP pair
/// gets the `tls` upper-layer protocol and dummy TLS 1.3 keys both ways.
/// Costs a few sockets once at startup instead of a failed `setsockopt`
/// per connection.
pub fn probe() -> Support {
    let mut found = Ciphers::default();
    let mut why = None;
    for cipher in Cipher::ALL {
        match probe_one(cipher) {
            Ok(()) => found = found.with(cipher),
            Err(e) => {
                why.get_or_insert_with(|| format!("{}: {e}", cipher.name()));
                if e.to_string().contains("TCP_ULP") {
                    break; // no cipher will do better
                }
            }
        }
    }
    if found.is_empty() {
        Support::Unavailable(why.unwrap_or_else(|| "no cipher".into()))
    } else {
        Support::Available(found)
    }
}

fn probe_one(cipher: Cipher) -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (_server, _) = listener.accept()?;
    let fd = client.as_raw_fd();
    set_ulp(fd)
        .map_err(|e| io::Error::new(e.kind(), format!("setsockopt TCP_ULP \"tls\": {e}")))?;
    let info = CryptoInfo::dummy(cipher);
    set_crypto(fd, libc::TLS_TX, &info)
        .map_err(|e| io::Error::new(e.kind(), format!("setsockopt TLS_TX: {e}")))?;
    set_crypto(fd, libc::TLS_RX, &info)
        .map_err(|e| io::Error::new(e.kind(), format!("setsockopt TLS_RX: {e}")))?;
    Ok(())
}

fn set_ulp(fd: RawFd) -> io::Result<()> {
    let name = b"tls";
    // SAFETY: `name` outlives the call, which reads `name.len()` bytes.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_TCP,
            libc::TCP_ULP,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_crypto(fd: RawFd, direction: libc::c_int, info: &CryptoInfo) -> io::Result<()> {
    let (ptr, len) = info.raw();
    // SAFETY: `ptr` points at `len` initialised bytes of a `#[repr(C)]`
    // kernel struct that outlives the call.
    let r = unsafe { libc::setsockopt(fd, libc::SOL_TLS, direction, ptr, len) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One direction's keys in the kernel's layout.
pub(crate) enum CryptoInfo {
    Aes128Gcm(libc::tls12_crypto_info_aes_gcm_128),
    Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256),
    Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305),
}

impl CryptoInfo {
    /// TLS 1.3 keys at record sequence number `seq`. AES-GCM's 12-byte
    /// nonce base is split as the kernel wants it: the first 4 bytes are
    /// its "salt", the other 8 its "iv"; ChaCha20's stays whole.
    pub(crate) fn tls13(seq: u64, secrets: &ConnectionTrafficSecrets) -> Option<CryptoInfo> {
        let rec_seq = seq.to_be_bytes();
        let info = |cipher_type| libc::tls_crypto_info {
            version: libc::TLS_1_3_VERSION,
            cipher_type,
        };
        Some(match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                let (salt, iv) = iv.as_ref().split_at(4);
                CryptoInfo::Aes128Gcm(libc::tls12_crypto_info_aes_gcm_128 {
                    info: info(libc::TLS_CIPHER_AES_GCM_128),
                    iv: iv.try_into().ok()?,
                    key: key.as_ref().try_into().ok()?,
                    salt: salt.try_into().ok()?,
                    rec_seq,
                })
            }
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                let (salt, iv) = iv.as_ref().split_at(4);
                CryptoInfo::Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256 {
                    info: info(libc::TLS_CIPHER_AES_GCM_256),
                    iv: iv.try_into().ok()?,
                    key: key.as_ref().try_into().ok()?,
                    salt: salt.try_into().ok()?,
                    rec_seq,
                })
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                CryptoInfo::Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305 {
                    info: info(libc::TLS_CIPHER_CHACHA20_POLY1305),
                    iv: iv.as_ref().try_into().ok()?,
                    key: key.as_ref().try_into().ok()?,
                    salt: [],
                    rec_seq,
                })
            }
            _ => return None,
        })
    }

    /// Keys nobody uses, for [`probe`].
    fn dummy(cipher: Cipher) -> CryptoInfo {
        let info = |cipher_type| libc::tls_crypto_info {
            version: libc::TLS_1_3_VERSION,
            cipher_type,
        };
        match cipher {
            Cipher::Aes128Gcm => CryptoInfo::Aes128Gcm(libc::tls12_crypto_info_aes_gcm_128 {
                info: info(libc::TLS_CIPHER_AES_GCM_128),
                iv: [1; 8],
                key: [2; 16],
                salt: [3; 4],
                rec_seq: [0; 8],
            }),
            Cipher::Aes256Gcm => CryptoInfo::Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256 {
                info: info(libc::TLS_CIPHER_AES_GCM_256),
                iv: [1; 8],
                key: [2; 32],
                salt: [3; 4],
                rec_seq: [0; 8],
            }),
            Cipher::Chacha20Poly1305 => {
                CryptoInfo::Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305 {
                    info: info(libc::TLS_CIPHER_CHACHA20_POLY1305),
                    iv: [1; 12],
                    key: [2; 32],
                    salt: [],
                    rec_seq: [0; 8],
                })
            }
        }
    }

    fn raw(&self) -> (*const libc::c_void, libc::socklen_t) {
        fn raw<T>(t: &T) -> (*const libc::c_void, libc::socklen_t) {
            ((t as *const T).cast(), size_of::<T>() as libc::socklen_t)
        }
        match self {
            CryptoInfo::Aes128Gcm(i) => raw(i),
            CryptoInfo::Aes256Gcm(i) => raw(i),
            CryptoInfo::Chacha20Poly1305(i) => raw(i),
        }
    }
}

impl Drop for CryptoInfo {
    fn drop(&mut self) {
        // Key material does not linger in freed stack or heap memory.
        let (ptr, len) = self.raw();
        // SAFETY: `ptr` is this value's own `len` bytes, writable through
        // `&mut self`; plain integers and arrays, so zero is a valid value.
        unsafe { std::ptr::write_bytes(ptr as *mut u8, 0, len as usize) };
    }
}

/// Why a session stays in user space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decline {
    /// TLS 1.2: the kernel could take it, but a renegotiation attempt
    /// would then reach it as a control record; rustls refuses those.
    Version,
    /// A cipher the probe did not find in the kernel.
    Cipher,
    /// `TCP_ULP` failed on this connection (the probe succeeded).
    Ulp,
}

/// Whether a session of `version` and `suite` can be handed over.
pub(crate) fn check(
    version: Option<ProtocolVersion>,
    suite: Option<CipherSuite>,
    ciphers: Ciphers,
) -> Result<(), Decline> {
    if version != Some(ProtocolVersion::TLSv1_3) {
        return Err(Decline::Version);
    }
    match suite.and_then(Cipher::of_suite) {
        Some(c) if ciphers.has(c) => Ok(()),
        _ => Err(Decline::Cipher),
    }
}

/// Attaches the kernel's TLS layer; nothing is consumed yet, so a failure
/// leaves the session in user space.
pub(crate) fn attach(fd: BorrowedFd<'_>) -> Result<(), Decline> {
    set_ulp(fd.as_raw_fd()).map_err(|_| Decline::Ulp)
}

/// Hands both directions' keys to the kernel (after [`attach`]).
pub(crate) fn install(
    fd: BorrowedFd<'_>,
    tx: (u64, &ConnectionTrafficSecrets),
    rx: (u64, &ConnectionTrafficSecrets),
) -> io::Result<()> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, "secrets of an unknown cipher");
    let tx = CryptoInfo::tls13(tx.0, tx.1).ok_or_else(bad)?;
    let rx = CryptoInfo::tls13(rx.0, rx.1).ok_or_else(bad)?;
    set_crypto(fd.as_raw_fd(), libc::TLS_TX, &tx)?;
    set_crypto(fd.as_raw_fd(), libc::TLS_RX, &rx)
}

/// A connection whose records the kernel encrypts and decrypts. rustls
/// keeps only what a key update needs.
pub(crate) struct KernelTls {
    kernel: KernelConnection<ServerConnectionData>,
}

/// A record the kernel handed back instead of application data.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Control {
    /// close_notify: the peer's clean end of the stream.
    CloseNotify,
    /// Any other alert (level, description): the connection ends.
    Alert(u8, u8),
    /// KeyUpdate; `requested`: the peer asks for ours too.
    KeyUpdate { requested: bool },
    /// Something a TLS 1.3 client must not send after the handshake.
    Unexpected(u8),
    /// Nothing there after all (the record was consumed, or it was data).
    None,
}

/// Parses a control record's type and plaintext.
pub(crate) fn parse_control(record_type: u8, body: &[u8]) -> Control {
    match (record_type, body) {
        (CONTENT_ALERT, [_, 0]) => Control::CloseNotify,
        (CONTENT_ALERT, [level, desc]) => Control::Alert(*level, *desc),
        // One KeyUpdate: type, 3-byte length 1, request_update 0 or 1.
        (CONTENT_HANDSHAKE, [HANDSHAKE_KEY_UPDATE, 0, 0, 1, r @ (0 | 1)]) => {
            Control::KeyUpdate { requested: *r == 1 }
        }
        (CONTENT_APPLICATION_DATA, _) => Control::None,
        (t, _) => Control::Unexpected(t),
    }
}

/// Reads the control record the kernel is holding (a receive failed with
/// `EIO`): `recvmsg` with room for its record-type control message.
/// Never blocks.
pub(crate) fn read_control(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Control> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Aligned room for one cmsghdr carrying one byte.
    let mut cmsg = [0u64; 8];
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 8]>();
    // SAFETY: `msg` points at `iov` (into `buf`) and `cmsg`, all live and
    // writable for the call's duration.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: `msg` was filled in by the kernel; CMSG_FIRSTHDR/CMSG_DATA
    // stay within `msg_control`/`msg_controllen`.
    let record_type = unsafe {
        let hdr = libc::CMSG_FIRSTHDR(&msg);
        if hdr.is_null()
            || (*hdr).cmsg_level != libc::SOL_TLS
            || (*hdr).cmsg_type != libc::TLS_GET_RECORD_TYPE
        {
            return Ok(Control::None);
        }
        *libc::CMSG_DATA(hdr)
    };
    Ok(parse_control(record_type, &buf[..n.min(buf.len())]))
}

/// Sends one record of `record_type` through the kernel (an alert, our
/// KeyUpdate); never blocks, so a full send buffer drops it.
fn send_control(fd: BorrowedFd<'_>, record_type: u8, body: &[u8]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: body.as_ptr() as *mut libc::c_void,
        iov_len: body.len(),
    };
    let mut cmsg = [0u64; 8];
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure size computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(1) } as usize;
    // SAFETY: `msg_control` has room for CMSG_SPACE(1) bytes (64 here),
    // so the first header and its one data byte are inside it.
    unsafe {
        let hdr = libc::CMSG_FIRSTHDR(&msg);
        (*hdr).cmsg_level = libc::SOL_TLS;
        (*hdr).cmsg_type = libc::TLS_SET_RECORD_TYPE;
        (*hdr).cmsg_len = libc::CMSG_LEN(1) as usize;
        *libc::CMSG_DATA(hdr) = record_type;
    }
    // SAFETY: `msg` points at `iov` (into `body`, only read) and `cmsg`,
    // all live for the call.
    let n = unsafe {
        libc::sendmsg(
            fd.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl KernelTls {
    /// The part of rustls that stays, once the keys are in the kernel.
    pub(crate) fn new(kernel: KernelConnection<ServerConnectionData>) -> KernelTls {
        KernelTls { kernel }
    }

    /// Sends close_notify, the clean end of the stream, before our FIN.
    pub(crate) fn close_notify(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        send_control(fd, CONTENT_ALERT, &[1, 0])
    }

    /// Sends a fatal alert before the connection is dropped (best effort).
    pub(crate) fn fatal_alert(&self, fd: BorrowedFd<'_>, description: u8) {
        let _ = send_control(fd, CONTENT_ALERT, &[2, description]);
    }

    /// The peer's KeyUpdate: its new key goes to the kernel, and, when it
    /// asked for it, ours too after our own KeyUpdate. Kernels before
    /// Linux 6.14 refuse a second key (`EBUSY`): the error ends the
    /// connection, since nothing more it sends could be read.
    pub(crate) fn key_update(&mut self, fd: BorrowedFd<'_>, requested: bool) -> io::Result<()> {
        let other = |e: rustls::Error| io::Error::other(e.to_string());
        let (seq, secrets) = self.kernel.update_rx_secret().map_err(other)?;
        let info = CryptoInfo::tls13(seq, &secrets)
            .ok_or_else(|| io::Error::other("secrets of an unknown cipher"))?;
        set_crypto(fd.as_raw_fd(), libc::TLS_RX, &info)?;
        if requested {
            // Ours, under the old key: KeyUpdate(update_not_requested).
            send_control(fd, CONTENT_HANDSHAKE, &[HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0])?;
            let (seq, secrets) = self.kernel.update_tx_secret().map_err(other)?;
            let info = CryptoInfo::tls13(seq, &secrets)
                .ok_or_else(|| io::Error::other("secrets of an unknown cipher"))?;
            set_crypto(fd.as_raw_fd(), libc::TLS_TX, &info)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    fn bytes<T>(t: &T) -> &[u8] {
        // SAFETY: reading a plain #[repr(C)] struct's bytes.
        unsafe { std::slice::from_raw_parts((t as *const T).cast(), size_of::<T>()) }
    }

    #[test]
    fn aes_gcm_nonce_base_is_split_into_salt_and_iv() {
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let iv: [u8; 12] = std::array::from_fn(|i| 100 + i as u8);
        let secrets = ConnectionTrafficSecrets::Aes256Gcm {
            key: AeadKey::from(key),
            iv: Iv::new(iv),
        };
        let Some(CryptoInfo::Aes256Gcm(info)) = CryptoInfo::tls13(0x0102, &secrets) else {
            panic!("AES-256-GCM");
        };
        assert_eq!(info.info.version, 0x0304);
        assert_eq!(info.info.cipher_type, 52);
        assert_eq!(info.salt, [100, 101, 102, 103]);
        assert_eq!(info.iv, [104, 105, 106, 107, 108, 109, 110, 111]);
        assert_eq!(info.key, key);
        assert_eq!(info.rec_seq, [0, 0, 0, 0, 0, 0, 1, 2]);
        // The kernel's uapi layout: 4 + 8 + 32 + 4 + 8 bytes, no padding.
        assert_eq!(bytes(&info).len(), 56);
        // A 16-byte key can't come from a 32-byte AeadKey: refused, not
        // truncated.
        let wrong = ConnectionTrafficSecrets::Aes128Gcm {
            key: AeadKey::from(key),
            iv: Iv::new(iv),
        };
        assert!(CryptoInfo::tls13(0, &wrong).is_none());
    }

    #[test]
    fn chacha_keeps_its_whole_nonce_base() {
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let iv: [u8; 12] = std::array::from_fn(|i| 50 + i as u8);
        let secrets = ConnectionTrafficSecrets::Chacha20Poly1305 {
            key: AeadKey::from(key),
            iv: Iv::new(iv),
        };
        let Some(CryptoInfo::Chacha20Poly1305(info)) = CryptoInfo::tls13(7, &secrets) else {
            panic!("ChaCha20");
        };
        assert_eq!(info.info.cipher_type, 54);
        assert_eq!(info.iv, iv);
        assert_eq!(info.key, key);
        assert_eq!(info.rec_seq, 7u64.to_be_bytes());
        assert_eq!(bytes(&info).len(), 4 + 12 + 32 + 8);
    }

    #[test]
    fn control_records_are_told_apart() {
        assert_eq!(parse_control(21, &[1, 0]), Control::CloseNotify);
        assert_eq!(parse_control(21, &[2, 20]), Control::Alert(2, 20));
        assert_eq!(
            parse_control(22, &[24, 0, 0, 1, 1]),
            Control::KeyUpdate { requested: true }
        );
        assert_eq!(
            parse_control(22, &[24, 0, 0, 1, 0]),
            Control::KeyUpdate { requested: false }
        );
        // A bad request_update value, two messages in one record, another
        // handshake message: not a KeyUpdate we act on.
        assert_eq!(
            parse_control(22, &[24, 0, 0, 1, 2]),
            Control::Unexpected(22)
        );
        assert_eq!(
            parse_control(22, &[24, 0, 0, 1, 0, 24, 0, 0, 1, 0]),
            Control::Unexpected(22)
        );
        assert_eq!(parse_control(22, &[1, 0, 0, 0]), Control::Unexpected(22));
        assert_eq!(parse_control(21, &[1]), Control::Unexpected(21));
        assert_eq!(parse_control(23, b"data"), Control::None);
    }

    #[test]
    fn only_tls13_with_a_probed_cipher_is_handed_over() {
        let aes = Ciphers::default().with(Cipher::Aes128Gcm);
        let v13 = Some(ProtocolVersion::TLSv1_3);
        assert_eq!(
            check(v13, Some(CipherSuite::TLS13_AES_128_GCM_SHA256), aes),
            Ok(())
        );
        assert_eq!(
            check(v13, Some(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256), aes),
            Err(Decline::Cipher)
        );
        assert_eq!(
            check(
                Some(ProtocolVersion::TLSv1_2),
                Some(CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
                aes
            ),
            Err(Decline::Version)
        );
        assert_eq!(aes.to_string(), "AES-128-GCM");
    }

    #[test]
    fn the_probe_answers_either_way() {
        // This machine's kernel may or may not have the tls module; the
        // probe must say which without failing.
        match probe() {
            Support::Available(c) => assert!(!c.is_empty()),
            Support::Unavailable(why) => assert!(!why.is_empty()),
        }
    }
}
