//! corral's HTTP/1.1 client for upstream servers, run inside the request's
//! own task: no connection task, no channels between the two. A pooled
//! [`Connection`] owns its socket and read buffer; [`send`] writes the
//! request (head and body, see `request`), reads the response head (see
//! `head`), and hands back a response whose [`Http1Body`] reads the rest
//! straight from the socket and gives the connection back for reuse only
//! after a clean, complete exchange (see `body`).
//!
//! hyper still parses everything clients send; this side only ever talks
//! to configured servers, and treats what they say as strictly as a
//! client's bytes: any doubt about where a response ends is a 502 and the
//! connection's end.

mod body;
mod chunked;
mod connection;
mod error;
mod exchange;
mod head;
mod request;

pub use body::Http1Body;
pub use chunked::{ChunkError, Chunked, Decoded, MAX_SIZE_LINE};
pub use connection::Connection;
pub use error::Error;
pub use exchange::{ResponseTimeout, SendError, send};
pub use head::{Framing, Head, HeadError, MAX_HEADERS, parse as parse_head};
pub use request::Outbound;
