//! Session tickets every worker can open: the master makes the keys and
//! sends them in the plan, so a client resumes its session whichever
//! worker its next connection lands on (with `SO_REUSEPORT`, usually
//! another one). The first key seals new tickets; the ones after it (the
//! keys it replaced at the last rotation) still open tickets sealed
//! before, so a rotation costs no resumption.
//!
//! A ticket is the key's id, a random nonce, and the session state sealed
//! with ChaCha20-Poly1305 (ring's AEAD; the id is authenticated too, and
//! so is the listener's [`Binding`]).

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

use crate::plan::{ClientAuth, TicketKey, TicketKeys};

/// What a listener's tickets are bound to besides the keys: nothing, or
/// the CA bundle its clients' certificates are checked against. rustls
/// resumes a session with the client certificate it was made with,
/// unchecked, and the keys outlive reloads and are every listener's: a
/// ticket from a listener that asked for no certificate, or from before
/// `client_ca` changed, would skip the check `client_ca` promises. With
/// the bundle's digest authenticated in the ticket such a ticket does not
/// open, and the client makes a full handshake (nginx binds its sessions
/// to the client CA the same way).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binding(Vec<u8>);

impl Binding {
    pub fn of(auth: Option<&ClientAuth>) -> Self {
        let Some(auth) = auth else {
            // Nothing added: tickets sealed before bindings existed open.
            return Self::default();
        };
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        for der in &auth.roots.0 {
            digest.update(&u64::try_from(der.len()).unwrap_or(u64::MAX).to_be_bytes());
            digest.update(der);
        }
        Self(digest.finish().as_ref().to_vec())
    }
}

/// Seals and opens tickets with a cluster's keys.
pub struct Ticketer {
    /// Each key, its opened form, and the data its tickets authenticate
    /// (its id, then the binding).
    keys: Vec<(TicketKey, LessSafeKey, Vec<u8>)>,
    lifetime: u32,
    random: SystemRandom,
}

impl std::fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticketer")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Ticketer {
    pub fn new(keys: &TicketKeys, binding: Binding) -> Option<Self> {
        let keys = keys
            .keys
            .iter()
            .map(|k| {
                let sealing = UnboundKey::new(&CHACHA20_POLY1305, k.secret()).ok()?;
                let aad = [k.id(), &binding.0].concat();
                Some((k.clone(), LessSafeKey::new(sealing), aad))
            })
            .collect::<Option<Vec<_>>>()?;
        (!keys.is_empty()).then(|| Self {
            keys,
            lifetime: keys_lifetime(),
            random: SystemRandom::new(),
        })
    }
}

/// What clients are told a ticket is good for: a rotation's length, after
/// which it is sealed under the previous key and still opens until the next.
fn keys_lifetime() -> u32 {
    u32::try_from(crate::plan::TICKET_ROTATION.as_secs()).unwrap_or(u32::MAX)
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let (key, sealing, aad) = self.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(key.id().len() + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(key.id());
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        sealing
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut sealed,
            )
            .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let (key, opening, aad) = self
            .keys
            .iter()
            .find(|(k, _, _)| cipher.starts_with(k.id()))?;
        let rest = &cipher[key.id().len()..];
        let nonce = Nonce::try_assume_unique_for_key(rest.get(..NONCE_LEN)?).ok()?;
        let mut sealed = rest.get(NONCE_LEN..)?.to_vec();
        let plain = opening
            .open_in_place(nonce, Aad::from(aad), &mut sealed)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_opens_under_its_key_until_that_key_is_gone() {
        let first = TicketKeys::generate().expect("keys");
        let sealed = Ticketer::new(&first, Binding::default())
            .expect("ticketer")
            .encrypt(b"session")
            .expect("sealed");
        // Another worker with the same keys opens it.
        assert_eq!(
            Ticketer::new(&first, Binding::default())
                .expect("t")
                .decrypt(&sealed)
                .as_deref(),
            Some(&b"session"[..])
        );
        // One rotation later it still opens; two later it does not.
        let rotated = first.rotated().expect("rotated");
        let t = Ticketer::new(&rotated, Binding::default()).expect("t");
        assert_eq!(t.decrypt(&sealed).as_deref(), Some(&b"session"[..]));
        let new = t.encrypt(b"later").expect("sealed");
        assert!(!new.starts_with(&sealed[..8]), "sealed under the new key");
        let twice = rotated.rotated().expect("rotated");
        assert_eq!(
            Ticketer::new(&twice, Binding::default())
                .expect("t")
                .decrypt(&sealed),
            None
        );
        // Tampering, truncation and strangers' keys open nothing.
        let mut bent = sealed.clone();
        *bent.last_mut().expect("byte") ^= 1;
        assert_eq!(
            Ticketer::new(&first, Binding::default())
                .expect("t")
                .decrypt(&bent),
            None
        );
        assert_eq!(
            Ticketer::new(&first, Binding::default())
                .expect("t")
                .decrypt(&sealed[..10]),
            None
        );
        let stranger = TicketKeys::generate().expect("keys");
        assert_eq!(
            Ticketer::new(&stranger, Binding::default())
                .expect("t")
                .decrypt(&sealed),
            None
        );
    }

    #[test]
    fn a_ticket_opens_only_where_it_was_bound() {
        use crate::plan::Certificates;
        let keys = TicketKeys::generate().expect("keys");
        let auth = |roots: &[&[u8]]| ClientAuth {
            ca: "ca.pem".into(),
            roots: Certificates(roots.iter().map(|r| r.to_vec()).collect()),
            subject_header: None,
        };
        let (one, other) = (auth(&[b"ca one"]), auth(&[b"ca two"]));
        let ticketer =
            |auth: Option<&ClientAuth>| Ticketer::new(&keys, Binding::of(auth)).expect("ticketer");
        let plain = ticketer(None)
            .encrypt(b"no client certificate")
            .expect("sealed");
        let bound = ticketer(Some(&one)).encrypt(b"alice").expect("sealed");
        assert_eq!(
            ticketer(Some(&one)).decrypt(&bound).as_deref(),
            Some(&b"alice"[..])
        );
        assert_eq!(ticketer(Some(&one)).decrypt(&plain), None);
        assert_eq!(ticketer(Some(&other)).decrypt(&bound), None);
        assert_eq!(ticketer(None).decrypt(&bound), None);
        // Where the bundle is the whole of it, not its bytes run together.
        let split = auth(&[b"ca ", b"one"]);
        assert_ne!(Binding::of(Some(&split)), Binding::of(Some(&one)));
    }
}
