//! `[admin]`: the endpoint's address and the bearer token that guards it
//! off loopback.

use std::path::Path;

use crate::config::raw::*;
use crate::plan::*;

use super::validator::Validator;

/// Where the token comes from when `admin.token_file` is not set.
pub const ADMIN_TOKEN_ENV: &str = "CORRAL_ADMIN_TOKEN";

impl Validator<'_> {
    pub fn admin(&mut self, raw: &RawAdmin) -> Option<AdminConfig> {
        let listen = self.socket_addr(&raw.listen, "admin.listen");
        let token = match &raw.token_file {
            Some(file) => self.token_file(file),
            None => std::env::var(ADMIN_TOKEN_ENV).ok().and_then(|text| {
                let token = AdminToken::new(text.trim());
                if token.is_none() {
                    self.problem(
                        raw.listen.span(),
                        format!("{ADMIN_TOKEN_ENV}: the token must be one run of visible ASCII characters, with no spaces"),
                    );
                }
                token
            }),
        };
        let listen = listen?;
        // Anyone who can reach the endpoint can reload or read the config;
        // off loopback, only a token holder may.
        if token.is_none() && !listen.ip().to_canonical().is_loopback() && raw.token_file.is_none()
        {
            self.problem(
                raw.listen.span(),
                format!("admin.listen: {listen} is not a loopback address, and an admin endpoint off loopback needs a bearer token: set admin.token_file or {ADMIN_TOKEN_ENV}"),
            );
        }
        Some(AdminConfig { listen, token })
    }

    /// The token in `file` (relative to the config's folder), whitespace
    /// around it trimmed.
    fn token_file(&mut self, file: &Text) -> Option<AdminToken> {
        let path = self.base.join(Path::new(file.get_ref()));
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                self.problem(
                    file.span(),
                    format!("admin.token_file: cannot read {}: {e}", path.display()),
                );
                return None;
            }
        };
        let token = AdminToken::new(text.trim());
        if token.is_none() {
            self.problem(
                file.span(),
                format!("admin.token_file: {} must hold one run of visible ASCII characters, with no spaces", path.display()),
            );
        }
        token
    }
}
