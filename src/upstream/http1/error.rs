//! What can go wrong with a server's side of an HTTP/1.1 exchange.

use std::io;

use super::chunked::ChunkError;
use super::head::HeadError;

/// What went wrong with a server's side of an exchange.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error("the server closed the connection before the response was complete")]
    Closed,
    #[error("the response body ended {0} bytes short of its Content-Length")]
    Short(u64),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Error {
    /// Whether the server broke HTTP's framing (as opposed to the
    /// connection breaking under it).
    pub fn is_protocol(&self) -> bool {
        matches!(self, Self::Head(_) | Self::Chunk(_))
    }
}
